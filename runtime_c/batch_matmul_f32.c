/* float32 matrix product of two activations over a batch (batch_matmul), strided as
 * batch_matmul_s8.c; the sum over k in order, in float32, then the fused activation's clamp. */
#include "fwedge_rt.h"

void fw_batch_matmul_f32(const fw_batch_matmul_params *p, const float *a, const float *b, float *y)
{
    for (int g = 0; g < p->batches; ++g) {
        for (int i = 0; i < p->rows; ++i) {
            const float *ar = a + (size_t)g * p->a_strides[0] + (size_t)i * p->a_strides[1];
            float *yr = y + (size_t)g * p->y_strides[0] + (size_t)i * p->y_strides[1];
            for (int j = 0; j < p->cols; ++j) {
                const float *bc = b + (size_t)g * p->b_strides[0] + (size_t)j * p->b_strides[2];
                float acc = 0.0f;
                for (int k = 0; k < p->depth; ++k) {
                    acc += ar[(size_t)k * p->a_strides[2]] * bc[(size_t)k * p->b_strides[1]];
                }
                yr[(size_t)j * p->y_strides[2]] = fw_clamp_f32(acc, p->float_min, p->float_max);
            }
        }
    }
}
