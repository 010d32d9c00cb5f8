/* int8 fully connected layer with per-output-feature TFLite requantization. */
#include "fwedge_rt.h"

void fw_fully_connected_s8(const fw_fully_connected_params *p, const int8_t *x, const int8_t *w,
                           const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int32_t zero_point = p->input_zero_point;
    for (int o = 0; o < p->out_features; ++o) {
        const int8_t *wr = w + (size_t)o * p->in_features;
        int32_t acc = 0;
        for (int i = 0; i < p->in_features; ++i) {
            acc += (int32_t)((int16_t)(x[i] - zero_point) * (int16_t)wr[i]);
        }
        if (bias) {
            acc += bias[o];
        }
        int32_t v = fw_multiply_by_quantized_multiplier(acc, multiplier[o], shift[o]) + p->output_zero_point;
        y[o] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
    }
}
