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
        for (int i = 0; i < p->size; ++i) {
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
