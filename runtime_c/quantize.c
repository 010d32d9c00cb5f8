/* Quantize (float -> int8), dequantize (int8 -> float) and requantize (int8 -> int8). */
#include <math.h>

#include "fwedge_rt.h"

void fw_quantize_f32_s8(int size, float scale, int32_t zero_point, const float *x, int8_t *y)
{
    for (int i = 0; i < size; ++i) {
        /* Division (not a reciprocal multiply) and round-half-to-even, as ONNX QuantizeLinear.
         * Clamp in float first so that huge or infinite inputs cannot overflow the int cast. */
        float q = nearbyintf(x[i] / scale) + (float)zero_point;
        q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
        y[i] = (int8_t)(int32_t)q;
    }
}

void fw_dequantize_s8_f32(int size, float scale, int32_t zero_point, const int8_t *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = (float)(x[i] - zero_point) * scale;
    }
}

void fw_requantize_s8(int size, int32_t input_zero_point, int32_t output_zero_point, int32_t multiplier,
                      int32_t shift, const int8_t *x, int8_t *y)
{
    for (int i = 0; i < size; ++i) {
        int32_t v = fw_multiply_by_quantized_multiplier(x[i] - input_zero_point, multiplier, shift);
        y[i] = (int8_t)fw_clamp_s32(v + output_zero_point, -128, 127);
    }
}
