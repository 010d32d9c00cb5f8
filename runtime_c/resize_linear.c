/* Bilinear resize of NHWC tensors, float32 and int8, with the tables fwedge computes from the
 * model's Resize rule (fwedge/ops/resize.py: onnxruntime's float32 SetupUpsampleBilinear). */
#include <math.h>

#include "fwedge_rt.h"

/* onnxruntime's UpsampleBilinear term order: each weight product rounded to float, then the four
 * terms added left to right. Built with -ffp-contract=off (no fused multiply-add), so every
 * arch gives the same bits. */
static inline float fw_bilinear_term(float x11, float x21, float x12, float x22, float wx_low, float wx_high,
                                     float wy_low, float wy_high)
{
    return wx_low * wy_low * x11 + wx_high * wy_low * x21 + wx_low * wy_high * x12 + wx_high * wy_high * x22;
}

/* The loops of both element types: VALUE(v) turns one input element into its float value and
 * STORE(f) the interpolated float into one output element. */
#define FW_RESIZE_LINEAR_NHWC(T, VALUE, STORE)                                                           \
    for (int oy = 0; oy < out_h; ++oy) {                                                                 \
        const T *top = x + (size_t)rows[2 * oy] * in_w * channels;                                       \
        const T *bottom = x + (size_t)rows[2 * oy + 1] * in_w * channels;                                \
        const float wy_low = row_weights[2 * oy], wy_high = row_weights[2 * oy + 1];                     \
        for (int ox = 0; ox < out_w; ++ox) {                                                             \
            const size_t left = (size_t)cols[2 * ox] * channels, right = (size_t)cols[2 * ox + 1] * channels; \
            const float wx_low = col_weights[2 * ox], wx_high = col_weights[2 * ox + 1];                 \
            for (int c = 0; c < channels; ++c) {                                                         \
                y[c] = STORE(fw_bilinear_term(VALUE(top[left + c]), VALUE(top[right + c]),               \
                                              VALUE(bottom[left + c]), VALUE(bottom[right + c]), wx_low, \
                                              wx_high, wy_low, wy_high));                                \
            }                                                                                            \
            y += channels;                                                                               \
        }                                                                                                \
    }

#define FW_SAME(v) (v)

void fw_resize_linear_f32_nhwc(int in_w, int channels, int out_h, int out_w, const int32_t *rows,
                               const float *row_weights, const int32_t *cols, const float *col_weights,
                               const float *x, float *y)
{
    FW_RESIZE_LINEAR_NHWC(float, FW_SAME, FW_SAME)
}

/* onnxruntime's exact QDQ run: DequantizeLinear ((q - zp) * s), the float Resize, QuantizeLinear
 * (a division, round half to even, clamp), all in float. */
static inline int8_t fw_quantize_one(float v, float scale, int32_t zero_point)
{
    float q = nearbyintf(v / scale) + (float)zero_point;
    q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
    return (int8_t)(int32_t)q;
}

#define FW_DEQUANTIZE(q) ((float)((q) - x_zero_point) * x_scale)
#define FW_QUANTIZE(v) fw_quantize_one((v), y_scale, y_zero_point)

void fw_resize_linear_s8_nhwc(int in_w, int channels, int out_h, int out_w, const int32_t *rows,
                              const float *row_weights, const int32_t *cols, const float *col_weights, float x_scale,
                              int32_t x_zero_point, float y_scale, int32_t y_zero_point, const int8_t *x, int8_t *y)
{
    FW_RESIZE_LINEAR_NHWC(int8_t, FW_DEQUANTIZE, FW_QUANTIZE)
}
