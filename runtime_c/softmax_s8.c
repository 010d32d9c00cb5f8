/* int8 softmax with an exp lookup table (Q24) and a Q30 probability, over `depth` elements
 * `inner` apart: any stored axis, inner the product of the axes stored after it (1: the innermost). */
#include "fwedge_rt.h"

void fw_softmax_s8(int outer, int depth, int inner, const int32_t *exp_table, int32_t multiplier, int32_t shift,
                   int32_t output_zero_point, const int8_t *x, int8_t *y)
{
    for (int r = 0; r < outer * inner; ++r) {
        const size_t start = (size_t)(r / inner) * depth * inner + (size_t)(r % inner);
        const int8_t *xr = x + start;
        int8_t *yr = y + start;
        int32_t peak = xr[0];
        for (int i = 1; i < depth; ++i) {
            peak = xr[(size_t)i * inner] > peak ? xr[(size_t)i * inner] : peak;
        }
        int64_t total = 0;
        for (int i = 0; i < depth; ++i) {
            total += exp_table[peak - xr[(size_t)i * inner]];
        }
        for (int i = 0; i < depth; ++i) {
            const int64_t e = exp_table[peak - xr[(size_t)i * inner]];
            const int32_t probability = (int32_t)((e * (1LL << 30) + total / 2) / total);
            int32_t v = fw_multiply_by_quantized_multiplier(probability, multiplier, shift) + output_zero_point;
            yr[(size_t)i * inner] = (int8_t)fw_clamp_s32(v, -128, 127);
        }
    }
}
