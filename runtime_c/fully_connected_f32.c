/* float32 fully connected layer. */
#include "fwedge_rt.h"

void fw_fully_connected_f32(const fw_fully_connected_params *p, const float *x, const float *w,
                            const float *bias, float *y)
{
    for (int o = 0; o < p->out_features; ++o) {
        const float *wr = w + (size_t)o * p->in_features;
        float acc = 0.0f;
        for (int i = 0; i < p->in_features; ++i) {
            acc += x[i] * wr[i];
        }
        if (bias) {
            acc += bias[o];
        }
        y[o] = fw_clamp_f32(acc, p->float_min, p->float_max);
    }
}
