/* float32 element-wise ADD, MUL and DIV with modular broadcasting and a fused clamp. */
#include "fwedge_rt.h"

static inline int broadcast_index(const fw_broadcast *b, int i)
{
    return (i / b->divisor) % b->modulus;
}

void fw_add_f32(const fw_elementwise_params *p, const float *x1, const float *x2, float *y)
{
    for (int i = 0; i < p->size; ++i) {
        const float v = x1[broadcast_index(&p->input1, i)] + x2[broadcast_index(&p->input2, i)];
        y[i] = fw_clamp_f32(v, p->float_min, p->float_max);
    }
}

void fw_mul_f32(const fw_elementwise_params *p, const float *x1, const float *x2, float *y)
{
    for (int i = 0; i < p->size; ++i) {
        const float v = x1[broadcast_index(&p->input1, i)] * x2[broadcast_index(&p->input2, i)];
        y[i] = fw_clamp_f32(v, p->float_min, p->float_max);
    }
}

void fw_div_f32(const fw_elementwise_params *p, const float *x1, const float *x2, float *y)
{
    for (int i = 0; i < p->size; ++i) {
        const float v = x1[broadcast_index(&p->input1, i)] / x2[broadcast_index(&p->input2, i)];
        y[i] = fw_clamp_f32(v, p->float_min, p->float_max);
    }
}
