/* int8 element-wise ADD and MUL with TFLite reference requantization and modular broadcasting. */
#include "fwedge_rt.h"

static inline int broadcast_index(const fw_broadcast *b, int i)
{
    return (i / b->divisor) % b->modulus;
}

static inline int8_t add_one(const fw_elementwise_params *p, int8_t a, int8_t b)
{
    const int32_t shifted1 = (int32_t)((uint32_t)(a - p->input1_zero_point) << p->left_shift);
    const int32_t shifted2 = (int32_t)((uint32_t)(b - p->input2_zero_point) << p->left_shift);
    const int32_t scaled1 = fw_multiply_by_quantized_multiplier(shifted1, p->input1_multiplier, p->input1_shift);
    const int32_t scaled2 = fw_multiply_by_quantized_multiplier(shifted2, p->input2_multiplier, p->input2_shift);
    int32_t v = fw_multiply_by_quantized_multiplier(scaled1 + scaled2, p->output_multiplier, p->output_shift);
    v += p->output_zero_point;
    return (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
}

static inline int8_t mul_one(const fw_elementwise_params *p, int8_t a, int8_t b)
{
    const int32_t product = (a - p->input1_zero_point) * (b - p->input2_zero_point);
    int32_t v = fw_multiply_by_quantized_multiplier(product, p->output_multiplier, p->output_shift);
    v += p->output_zero_point;
    return (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
}

void fw_add_s8(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    if (p->input1.modulus == p->size && p->input2.modulus == p->size) {
        for (int i = 0; i < p->size; ++i) {
            y[i] = add_one(p, x1[i], x2[i]);
        }
        return;
    }
    for (int i = 0; i < p->size; ++i) {
        y[i] = add_one(p, x1[broadcast_index(&p->input1, i)], x2[broadcast_index(&p->input2, i)]);
    }
}

void fw_mul_s8(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    if (p->input1.modulus == p->size && p->input2.modulus == p->size) {
        for (int i = 0; i < p->size; ++i) {
            y[i] = mul_one(p, x1[i], x2[i]);
        }
        return;
    }
    for (int i = 0; i < p->size; ++i) {
        y[i] = mul_one(p, x1[broadcast_index(&p->input1, i)], x2[broadcast_index(&p->input2, i)]);
    }
}
