/* int8 fully connected layer with per-output-feature TFLite requantization.
 *
 * x86 (SSE2/AVX2 builds): four output features at a time, eight inputs per step (AVX2: sixteen)
 * widened to int16 once (x - zero_point) and multiplied-added with each feature's weights (pmaddwd);
 * the leftover inputs and features take the scalar loop.
 * aarch64 (NEON): four output features at a time, sixteen inputs per step: x - zero_point
 * widened to int16 once (ssubl), each feature's weights widened (sxtl) and multiplied-added into
 * int32 (smlal, smlal2). With ARMv8.2 dotprod (FW_CONV_SDOT: the dotprod variant of an aarch64
 * dispatch build) the sixteen-input steps are two sdot per feature on the raw int8 values: one
 * of x with the weights, one of the zero point with them, the second taken off the first at the
 * end (sum (x - zp) * w = sum x * w - sum zp * w; int32 lanes wrap, so the sum is the same
 * int32 as the portable loop's). The C export folds the zero point into the bias where the
 * int32 sums allow (targets/c_emitters.py fold_input_zero_point) and passes 0: then one sdot per
 * feature. Integer sums: any order is exact. */
#include "fwedge_rt.h"

static int32_t dot_s8(const int8_t *x, const int8_t *w, int n, int32_t zero_point)
{
    int32_t acc = 0;
    for (int i = 0; i < n; ++i) {
        acc += (int32_t)((int16_t)(x[i] - zero_point) * (int16_t)w[i]);
    }
    return acc;
}

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
static inline __m128i widen8(const int8_t *p)
{
    const __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return _mm_srai_epi16(_mm_unpacklo_epi8(b, b), 8);
}

static inline int32_t sum4(__m128i v)
{
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4e));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xb1));
    return _mm_cvtsi128_si32(v);
}
#endif

#if defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
#include <arm_neon.h>

/* acc + the eight products of x (int16, x - zero_point) with the eight int8 weights at w. */
static inline int32x4_t dot8_neon(int32x4_t acc, int16x8_t x, int8x8_t w)
{
    const int16x8_t w16 = vmovl_s8(w);
    return vmlal_high_s16(vmlal_s16(acc, vget_low_s16(x), vget_low_s16(w16)), x, w16);
}

/* Features [o, o + 4): their sums of (x - zero_point) * w over the first in_features & ~7
 * inputs, one int32 per feature. */
static void dot4_neon(const int8_t *x, const int8_t *w, int in_features, int32_t zero_point, int32_t *sums)
{
    const int8x8_t zp = vdup_n_s8((int8_t)zero_point);
    const int8_t *rows[4] = {w, w + in_features, w + 2 * (size_t)in_features, w + 3 * (size_t)in_features};
    int32x4_t a[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    int i = 0;
#ifdef FW_CONV_SDOT
    const int8x16_t zp16 = vdupq_n_s8((int8_t)zero_point);
    int32x4_t z[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    if (zero_point == 0) { /* the export folds the zero point into the bias where it can */
        for (; i + 16 <= in_features; i += 16) {
            const int8x16_t xv = vld1q_s8(x + i);
            for (int j = 0; j < 4; ++j) {
                a[j] = vdotq_s32(a[j], vld1q_s8(rows[j] + i), xv);
            }
        }
    }
    for (; i + 16 <= in_features; i += 16) {
        const int8x16_t xv = vld1q_s8(x + i);
        for (int j = 0; j < 4; ++j) {
            const int8x16_t wv = vld1q_s8(rows[j] + i);
            a[j] = vdotq_s32(a[j], wv, xv);
            z[j] = vdotq_s32(z[j], wv, zp16);
        }
    }
    for (int j = 0; j < 4; ++j) {
        a[j] = vsubq_s32(a[j], z[j]);
    }
#endif
    for (; i + 16 <= in_features; i += 16) {
        const int8x16_t xv = vld1q_s8(x + i);
        const int16x8_t lo = vsubl_s8(vget_low_s8(xv), zp), hi = vsubl_s8(vget_high_s8(xv), zp);
        for (int j = 0; j < 4; ++j) {
            const int8x16_t wv = vld1q_s8(rows[j] + i);
            a[j] = dot8_neon(dot8_neon(a[j], lo, vget_low_s8(wv)), hi, vget_high_s8(wv));
        }
    }
    for (; i + 8 <= in_features; i += 8) {
        const int16x8_t xv = vsubl_s8(vld1_s8(x + i), zp);
        for (int j = 0; j < 4; ++j) {
            a[j] = dot8_neon(a[j], xv, vld1_s8(rows[j] + i));
        }
    }
    for (int j = 0; j < 4; ++j) {
        sums[j] = vaddvq_s32(a[j]);
    }
}
#endif

void fw_fully_connected_s8(const fw_fully_connected_params *p, const int8_t *x, const int8_t *w,
                           const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int32_t zero_point = p->input_zero_point;
    const int in_features = p->in_features, out_features = p->out_features;
    int o = 0;
#if defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
    const int vector_end = in_features & ~7;
    for (; o + 4 <= out_features; o += 4) {
        const int8_t *w0 = w + (size_t)o * in_features;
        int32_t acc[4];
        dot4_neon(x, w0, in_features, zero_point, acc);
        for (int j = 0; j < 4; ++j) {
            acc[j] += dot_s8(x + vector_end, w0 + (size_t)j * in_features + vector_end, in_features - vector_end,
                             zero_point);
            const int32_t a = acc[j] + (bias ? bias[o + j] : 0);
            const int32_t v = fw_multiply_by_quantized_multiplier(a, multiplier[o + j], shift[o + j]) + p->output_zero_point;
            y[o + j] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
        }
    }
#elif defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
    const int vector_end = in_features & ~7;
    const __m128i zp = _mm_set1_epi16((int16_t)zero_point);
    for (; o + 4 <= out_features; o += 4) {
        const int8_t *w0 = w + (size_t)o * in_features, *w1 = w0 + in_features;
        const int8_t *w2 = w1 + in_features, *w3 = w2 + in_features;
        __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
        int i = 0;
#if defined(__AVX2__)
        /* Sixteen inputs per step, widened with vpmovsxbw. */
        const __m256i zp16 = _mm256_set1_epi16((int16_t)zero_point);
        __m256i b0 = _mm256_setzero_si256(), b1 = b0, b2 = b0, b3 = b0;
        for (; i + 16 <= vector_end; i += 16) {
#define FW_WIDEN16(q) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q)))
            const __m256i xv = _mm256_sub_epi16(FW_WIDEN16(x + i), zp16);
            b0 = _mm256_add_epi32(_mm256_madd_epi16(xv, FW_WIDEN16(w0 + i)), b0);
            b1 = _mm256_add_epi32(_mm256_madd_epi16(xv, FW_WIDEN16(w1 + i)), b1);
            b2 = _mm256_add_epi32(_mm256_madd_epi16(xv, FW_WIDEN16(w2 + i)), b2);
            b3 = _mm256_add_epi32(_mm256_madd_epi16(xv, FW_WIDEN16(w3 + i)), b3);
#undef FW_WIDEN16
        }
        a0 = _mm_add_epi32(_mm256_castsi256_si128(b0), _mm256_extracti128_si256(b0, 1));
        a1 = _mm_add_epi32(_mm256_castsi256_si128(b1), _mm256_extracti128_si256(b1, 1));
        a2 = _mm_add_epi32(_mm256_castsi256_si128(b2), _mm256_extracti128_si256(b2, 1));
        a3 = _mm_add_epi32(_mm256_castsi256_si128(b3), _mm256_extracti128_si256(b3, 1));
#endif
        for (; i < vector_end; i += 8) {
            const __m128i xv = _mm_sub_epi16(widen8(x + i), zp);
            a0 = _mm_add_epi32(_mm_madd_epi16(xv, widen8(w0 + i)), a0);
            a1 = _mm_add_epi32(_mm_madd_epi16(xv, widen8(w1 + i)), a1);
            a2 = _mm_add_epi32(_mm_madd_epi16(xv, widen8(w2 + i)), a2);
            a3 = _mm_add_epi32(_mm_madd_epi16(xv, widen8(w3 + i)), a3);
        }
        int32_t acc[4] = {sum4(a0), sum4(a1), sum4(a2), sum4(a3)};
        for (int t = vector_end; t < in_features; ++t) { /* fewer than eight: one short scalar loop */
            const int32_t xt = x[t] - zero_point;
            acc[0] += xt * w0[t];
            acc[1] += xt * w1[t];
            acc[2] += xt * w2[t];
            acc[3] += xt * w3[t];
        }
        for (int j = 0; j < 4; ++j) {
            const int32_t a = acc[j] + (bias ? bias[o + j] : 0);
            const int32_t v = fw_multiply_by_quantized_multiplier(a, multiplier[o + j], shift[o + j]) + p->output_zero_point;
            y[o + j] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
        }
    }
#endif
    for (; o < out_features; ++o) {
        int32_t acc = dot_s8(x, w + (size_t)o * in_features, in_features, zero_point);
        if (bias) {
            acc += bias[o];
        }
        int32_t v = fw_multiply_by_quantized_multiplier(acc, multiplier[o], shift[o]) + p->output_zero_point;
        y[o] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
    }
}

#if defined(FW_ARM_DISPATCH) && !defined(FW_VARIANT)
/* The aarch64 dispatch entry (fwedge_rt.h): the dotprod variant where the CPU has sdot. */
void fw_fully_connected_s8_dispatch(const fw_fully_connected_params *p, const int8_t *x, const int8_t *w,
                                    const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    (fw_arm_has_dotprod() ? fw_fully_connected_s8_dotprod : fw_fully_connected_s8)(p, x, w, bias, multiplier, shift, y);
}
#endif
