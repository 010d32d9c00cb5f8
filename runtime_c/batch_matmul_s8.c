/* int8 matrix product of two activations over a batch (batch_matmul: attention's Q.K^T and P.V).
 *
 * Each operand is read through its own strides, so 4-D operands stored NHWC ([1, heads, M, K]
 * kept as [1, M, K, heads]) are read in place, with no transpose. Portable loop: the int32 sum
 * of (a - zp_a) * (b - zp_b) over k in order (integer: any order gives the same sum), then the
 * conv path's requantization (TFLite single rounding). */
#include "fwedge_rt.h"

void fw_batch_matmul_s8(const fw_batch_matmul_params *p, const int8_t *a, const int8_t *b, int8_t *y)
{
    for (int g = 0; g < p->batches; ++g) {
        for (int i = 0; i < p->rows; ++i) {
            const int8_t *ar = a + (size_t)g * p->a_strides[0] + (size_t)i * p->a_strides[1];
            int8_t *yr = y + (size_t)g * p->y_strides[0] + (size_t)i * p->y_strides[1];
            for (int j = 0; j < p->cols; ++j) {
                const int8_t *bc = b + (size_t)g * p->b_strides[0] + (size_t)j * p->b_strides[2];
                int32_t acc = 0;
                for (int k = 0; k < p->depth; ++k) {
                    acc += ((int32_t)ar[(size_t)k * p->a_strides[2]] - p->a_zero_point)
                           * ((int32_t)bc[(size_t)k * p->b_strides[1]] - p->b_zero_point);
                }
                int32_t v = fw_multiply_by_quantized_multiplier(acc, p->multiplier, p->shift) + p->output_zero_point;
                yr[(size_t)j * p->y_strides[2]] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
            }
        }
    }
}
