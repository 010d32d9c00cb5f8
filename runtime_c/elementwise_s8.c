/* int8 element-wise ADD and MUL with TFLite reference requantization and modular broadcasting. */
#include "fwedge_rt.h"
#include "requant_neon.h"

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

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS) && !defined(__AVX2__)
/* Sixteen int8 lanes -> four vectors of (x - zero_point) << left_shift as int32. */
static inline void widen_shifted(__m128i bytes, __m128i zero_point, int left_shift, __m128i *out)
{
    const __m128i lo16 = _mm_srai_epi16(_mm_unpacklo_epi8(bytes, bytes), 8);
    const __m128i hi16 = _mm_srai_epi16(_mm_unpackhi_epi8(bytes, bytes), 8);
    const __m128i count = _mm_cvtsi32_si128(left_shift);
    out[0] = _mm_sll_epi32(_mm_sub_epi32(_mm_srai_epi32(_mm_unpacklo_epi16(lo16, lo16), 16), zero_point), count);
    out[1] = _mm_sll_epi32(_mm_sub_epi32(_mm_srai_epi32(_mm_unpackhi_epi16(lo16, lo16), 16), zero_point), count);
    out[2] = _mm_sll_epi32(_mm_sub_epi32(_mm_srai_epi32(_mm_unpacklo_epi16(hi16, hi16), 16), zero_point), count);
    out[3] = _mm_sll_epi32(_mm_sub_epi32(_mm_srai_epi32(_mm_unpackhi_epi16(hi16, hi16), 16), zero_point), count);
}

/* Same-shape ADD, sixteen elements per step with the exact vector requantization
 * (fw_requant4: one multiplier and shift for all lanes, as ADD has per-tensor scales);
 * returns how many leading elements it wrote. */
static int add_s8_sse2(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    if (p->input1_multiplier < 0 || p->input2_multiplier < 0 || p->output_multiplier < 0) {
        return 0;
    }
    const int s1 = 31 - p->input1_shift, s2 = 31 - p->input2_shift, so = 31 - p->output_shift;
    const __m128i m1 = _mm_set1_epi32(p->input1_multiplier), m2 = _mm_set1_epi32(p->input2_multiplier);
    const __m128i mo = _mm_set1_epi32(p->output_multiplier);
    const __m128i r1 = _mm_set1_epi64x((int64_t)1 << (s1 - 1)), r2 = _mm_set1_epi64x((int64_t)1 << (s2 - 1));
    const __m128i ro = _mm_set1_epi64x((int64_t)1 << (so - 1));
    const __m128i zp1 = _mm_set1_epi32(p->input1_zero_point), zp2 = _mm_set1_epi32(p->input2_zero_point);
    const __m128i zpo = _mm_set1_epi32(p->output_zero_point);
    const __m128i lo = _mm_set1_epi16((int16_t)fw_clamp_s32(p->activation_min, -128, 127));
    const __m128i hi = _mm_set1_epi16((int16_t)fw_clamp_s32(p->activation_max, -128, 127));
    int i = 0;
    for (; i + 16 <= p->size; i += 16) {
        __m128i a[4], b[4], v[4];
        widen_shifted(_mm_loadu_si128((const __m128i *)(x1 + i)), zp1, p->left_shift, a);
        widen_shifted(_mm_loadu_si128((const __m128i *)(x2 + i)), zp2, p->left_shift, b);
        for (int k = 0; k < 4; ++k) {
            const __m128i sum = _mm_add_epi32(fw_requant4(a[k], m1, r1, s1), fw_requant4(b[k], m2, r2, s2));
            v[k] = _mm_add_epi32(fw_requant4(sum, mo, ro, so), zpo);
        }
        const __m128i v0 = _mm_min_epi16(_mm_max_epi16(_mm_packs_epi32(v[0], v[1]), lo), hi);
        const __m128i v1 = _mm_min_epi16(_mm_max_epi16(_mm_packs_epi32(v[2], v[3]), lo), hi);
        _mm_storeu_si128((__m128i *)(y + i), _mm_packs_epi16(v0, v1));
    }
    return i;
}
#endif

#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
/* add_s8_sse2 eight lanes wide (fw_requant8): sixteen elements per step. */
static int add_s8_avx2(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    if (p->input1_multiplier < 0 || p->input2_multiplier < 0 || p->output_multiplier < 0) {
        return 0;
    }
    const fw_requant8_t q1 = fw_requant8_setup(_mm256_set1_epi32(p->input1_multiplier),
                                               _mm256_set1_epi32(31 - p->input1_shift));
    const fw_requant8_t q2 = fw_requant8_setup(_mm256_set1_epi32(p->input2_multiplier),
                                               _mm256_set1_epi32(31 - p->input2_shift));
    const fw_requant8_t qo = fw_requant8_setup(_mm256_set1_epi32(p->output_multiplier),
                                               _mm256_set1_epi32(31 - p->output_shift));
    const __m256i zp1 = _mm256_set1_epi32(p->input1_zero_point), zp2 = _mm256_set1_epi32(p->input2_zero_point);
    const __m256i zpo = _mm256_set1_epi32(p->output_zero_point);
    const __m128i count = _mm_cvtsi32_si128(p->left_shift);
    const __m128i lo = _mm_set1_epi16((int16_t)fw_clamp_s32(p->activation_min, -128, 127));
    const __m128i hi = _mm_set1_epi16((int16_t)fw_clamp_s32(p->activation_max, -128, 127));
    int i = 0;
    for (; i + 16 <= p->size; i += 16) {
        __m256i v[2];
        for (int k = 0; k < 2; ++k) {
            const __m128i a8 = _mm_loadl_epi64((const __m128i *)(x1 + i + 8 * k));
            const __m128i b8 = _mm_loadl_epi64((const __m128i *)(x2 + i + 8 * k));
            const __m256i a = _mm256_sll_epi32(_mm256_sub_epi32(_mm256_cvtepi8_epi32(a8), zp1), count);
            const __m256i b = _mm256_sll_epi32(_mm256_sub_epi32(_mm256_cvtepi8_epi32(b8), zp2), count);
            const __m256i sum = _mm256_add_epi32(fw_requant8(a, &q1), fw_requant8(b, &q2));
            v[k] = _mm256_add_epi32(fw_requant8(sum, &qo), zpo);
        }
        /* packs works per 128-bit half: [v0 lo | v0 hi] and [v1 lo | v1 hi] -> pack the halves */
        const __m128i v0 = _mm_packs_epi32(_mm256_castsi256_si128(v[0]), _mm256_extracti128_si256(v[0], 1));
        const __m128i v1 = _mm_packs_epi32(_mm256_castsi256_si128(v[1]), _mm256_extracti128_si256(v[1], 1));
        _mm_storeu_si128((__m128i *)(y + i), _mm_packs_epi16(_mm_min_epi16(_mm_max_epi16(v0, lo), hi),
                                                          _mm_min_epi16(_mm_max_epi16(v1, lo), hi)));
    }
    return i;
}
#endif

#if defined(FW_NEON)
/* Eight int8 lanes minus the zero point (int16, exact) -> two vectors of that << left_shift as int32. */
static inline void widen_shifted_neon(int16x8_t d, int32x4_t left_shift, int32x4_t *out)
{
    out[0] = vshlq_s32(vmovl_s16(vget_low_s16(d)), left_shift);
    out[1] = vshlq_s32(vmovl_high_s16(d), left_shift);
}

/* Same-shape ADD of layers whose total shifts allow it (every TFLite-style ADD: input scales
 * at most half the common scale, output shift well below), sixteen elements per step, all three
 * requantizations as SQDMULH and SRSHL (requant_neon.h, s >= 32): an input whose total shift s
 * is below 32 is shifted left e = 32 - s more bits before it, which leaves
 * (x * 2^e * m + 2^(s + e - 1)) >> (s + e) = (x * m + 2^(s - 1)) >> s unchanged; (x - zp) <<
 * (left_shift + e) must fit in int32 for that, as (x - zp) << left_shift does in the scalar
 * code. Returns how many leading elements it wrote (0: other shifts, left to the caller). */
static int add_s8_neon(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    const int s1 = 31 - p->input1_shift, s2 = 31 - p->input2_shift, so = 31 - p->output_shift;
    const int e1 = s1 < 32 ? 32 - s1 : 0, e2 = s2 < 32 ? 32 - s2 : 0;
    if (p->input1_multiplier < 0 || p->input2_multiplier < 0 || p->output_multiplier < 0 || so < 32 ||
        p->left_shift < 0 || p->left_shift + e1 > 23 || p->left_shift + e2 > 23 ||
        p->input1_zero_point != (int8_t)p->input1_zero_point || p->input2_zero_point != (int8_t)p->input2_zero_point) {
        return 0;
    }
    const int32x4_t m1 = vdupq_n_s32(p->input1_multiplier), m2 = vdupq_n_s32(p->input2_multiplier);
    const int32x4_t mo = vdupq_n_s32(p->output_multiplier);
    const int32x4_t k1 = vdupq_n_s32(31 - s1 - e1), k2 = vdupq_n_s32(31 - s2 - e2), ko = vdupq_n_s32(31 - so);
    const int32x4_t shift1 = vdupq_n_s32(p->left_shift + e1), shift2 = vdupq_n_s32(p->left_shift + e2);
    const int8x16_t zp1 = vdupq_n_s8((int8_t)p->input1_zero_point), zp2 = vdupq_n_s8((int8_t)p->input2_zero_point);
    const int32x4_t zpo = vdupq_n_s32(p->output_zero_point);
    const int8x16_t lo = vdupq_n_s8((int8_t)fw_clamp_s32(p->activation_min, -128, 127));
    const int8x16_t hi = vdupq_n_s8((int8_t)fw_clamp_s32(p->activation_max, -128, 127));
    int i = 0;
    for (; i + 16 <= p->size; i += 16) {
        const int8x16_t a = vld1q_s8(x1 + i), b = vld1q_s8(x2 + i);
        int32x4_t sa[4], sb[4], v[4];
        widen_shifted_neon(vsubl_s8(vget_low_s8(a), vget_low_s8(zp1)), shift1, sa);
        widen_shifted_neon(vsubl_high_s8(a, zp1), shift1, sa + 2);
        widen_shifted_neon(vsubl_s8(vget_low_s8(b), vget_low_s8(zp2)), shift2, sb);
        widen_shifted_neon(vsubl_high_s8(b, zp2), shift2, sb + 2);
        for (int k = 0; k < 4; ++k) {
            const int32x4_t sum = vaddq_s32(fw_requant4_neon_high(sa[k], m1, k1), fw_requant4_neon_high(sb[k], m2, k2));
            v[k] = fw_requant4_neon_high(sum, mo, ko);
        }
        vst1q_s8(y + i, fw_narrow16_neon(v, zpo, lo, hi));
    }
    return i;
}

/* Same-shape MUL, sixteen elements per step: (x1 - zp1) * (x2 - zp2) exactly in int32 (SMULL
 * of the int16 differences), then the output requantization (requant_neon.h). An output total
 * shift below 32 (a product scale of at least half the output's) is raised to 32 or more by
 * shifting the product left (|product| <= 255 * 255 < 2^16, so up to 14 bits fit), as in
 * add_s8_neon; returns how many leading elements it wrote. */
static int mul_s8_neon(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    const int so = 31 - p->output_shift, e = so < 32 ? 32 - so : 0;
    if (p->output_multiplier < 0 || e > 14 || p->input1_zero_point != (int8_t)p->input1_zero_point ||
        p->input2_zero_point != (int8_t)p->input2_zero_point) {
        return 0;
    }
    const int32x4_t mo = vdupq_n_s32(p->output_multiplier), ko = vdupq_n_s32(31 - so - e);
    const int32x4_t product_shift = vdupq_n_s32(e);
    const int8x16_t zp1 = vdupq_n_s8((int8_t)p->input1_zero_point), zp2 = vdupq_n_s8((int8_t)p->input2_zero_point);
    const int32x4_t zpo = vdupq_n_s32(p->output_zero_point);
    const int8x16_t lo = vdupq_n_s8((int8_t)fw_clamp_s32(p->activation_min, -128, 127));
    const int8x16_t hi = vdupq_n_s8((int8_t)fw_clamp_s32(p->activation_max, -128, 127));
    int i = 0;
    for (; i + 16 <= p->size; i += 16) {
        const int8x16_t a = vld1q_s8(x1 + i), b = vld1q_s8(x2 + i);
        const int16x8_t a_lo = vsubl_s8(vget_low_s8(a), vget_low_s8(zp1)), a_hi = vsubl_high_s8(a, zp1);
        const int16x8_t b_lo = vsubl_s8(vget_low_s8(b), vget_low_s8(zp2)), b_hi = vsubl_high_s8(b, zp2);
        int32x4_t v[4];
        v[0] = vmull_s16(vget_low_s16(a_lo), vget_low_s16(b_lo));
        v[1] = vmull_high_s16(a_lo, b_lo);
        v[2] = vmull_s16(vget_low_s16(a_hi), vget_low_s16(b_hi));
        v[3] = vmull_high_s16(a_hi, b_hi);
        for (int k = 0; k < 4; ++k) {
            v[k] = fw_requant4_neon_high(vshlq_s32(v[k], product_shift), mo, ko);
        }
        vst1q_s8(y + i, fw_narrow16_neon(v, zpo, lo, hi));
    }
    return i;
}
#endif

void fw_add_s8(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    if (p->input1.modulus == p->size && p->input2.modulus == p->size) {
        /* A local copy: the int8 stores could alias *p, which would reload every parameter per element. */
        const fw_elementwise_params params = *p;
        int i = 0;
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
        i = add_s8_avx2(&params, x1, x2, y);
#elif defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
        i = add_s8_sse2(&params, x1, x2, y);
#elif defined(FW_NEON)
        i = add_s8_neon(&params, x1, x2, y);
#endif
        for (; i < params.size; ++i) {
            y[i] = add_one(&params, x1[i], x2[i]);
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
        int i = 0;
#if defined(FW_NEON)
        i = mul_s8_neon(p, x1, x2, y);
#endif
        for (; i < p->size; ++i) {
            y[i] = mul_one(p, x1[i], x2[i]);
        }
        return;
    }
    for (int i = 0; i < p->size; ++i) {
        y[i] = mul_one(p, x1[broadcast_index(&p->input1, i)], x2[broadcast_index(&p->input2, i)]);
    }
}

#if defined(FW_X86_DISPATCH) && !defined(FW_VARIANT)
/* The x86-64 dispatch entries (fwedge_rt.h). */
void fw_add_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    const int level = fw_x86_level();
    (level == FW_X86_AVX512_VNNI ? fw_add_s8_vnni : level == FW_X86_AVX2 ? fw_add_s8_avx2 : fw_add_s8)(p, x1, x2, y);
}

void fw_mul_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    const int level = fw_x86_level();
    (level == FW_X86_AVX512_VNNI ? fw_mul_s8_vnni : level == FW_X86_AVX2 ? fw_mul_s8_avx2 : fw_mul_s8)(p, x1, x2, y);
}
#endif

#if defined(FW_RISCV_DISPATCH) && !defined(FW_VARIANT)
/* The riscv64 dispatch entries (fwedge_rt.h). */
void fw_add_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    (fw_riscv_level() == FW_RISCV_V ? fw_add_s8_rvv : fw_add_s8)(p, x1, x2, y);
}

void fw_mul_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y)
{
    (fw_riscv_level() == FW_RISCV_V ? fw_mul_s8_rvv : fw_mul_s8)(p, x1, x2, y);
}
#endif
