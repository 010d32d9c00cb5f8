/* NEON forms of fw_multiply_by_quantized_multiplier for the aarch64 int8 kernels (depthwise_s8.c,
 * pool_s8.c, elementwise_s8.c); ARMv8.0 Advanced SIMD only, which every aarch64 CPU has.
 *
 * The scalar definition is (x * m + 2^(s - 1)) >> s in 64 bits, one rounding, with the total
 * shift s = 31 - shift in [1, 62] and m >= 0. Three exact vector forms of it, with P = x * m:
 * - any s: SMULL/SMULL2 give P in 64 bits, SRSHL by -s adds 2^(s - 1) and shifts (the
 *   architecture rounds in unbounded precision, and |P| + 2^61 < 2^63 anyway), XTN keeps the
 *   low 32 bits as the scalar's cast does;
 * - s == 31: SQRDMULH is (2P + 2^31) >> 32 = (P + 2^30) >> 31, the definition itself; it
 *   saturates only for x == m == INT32_MIN, and m >= 0;
 * - s >= 32: SQDMULH is floor(P / 2^31) (no saturation, m >= 0), and SRSHL by -(s - 31) gives
 *   floor((floor(P / 2^31) + 2^(s - 32)) / 2^(s - 31)) = floor((P + 2^(s - 1)) / 2^s): nested
 *   floors of divisions by positive integers compose, so there is still one rounding.
 * runtime_c/tests/test_kernels.c checks every form against the scalar helper. */
#ifndef FWEDGE_REQUANT_NEON_H
#define FWEDGE_REQUANT_NEON_H

#include "fwedge_rt.h"

#if defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
#include <arm_neon.h>
#define FW_NEON 1

/* Per-lane multipliers m (>= 0) and total shifts s of four lanes, any s in [1, 62]. */
static inline int32x4_t fw_requant4_neon_wide(int32x4_t x, int32x4_t m, int64x2_t neg_s_lo, int64x2_t neg_s_hi)
{
    const int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(x), vget_low_s32(m)), neg_s_lo);
    const int64x2_t hi = vrshlq_s64(vmull_high_s32(x, m), neg_s_hi);
    return vuzp1q_s32(vreinterpretq_s32_s64(lo), vreinterpretq_s32_s64(hi));
}

/* Per-lane multipliers m (>= 0) and total shifts s >= 32 of four lanes; neg_k = 31 - s. */
static inline int32x4_t fw_requant4_neon_high(int32x4_t x, int32x4_t m, int32x4_t neg_k)
{
    return vrshlq_s32(vqdmulhq_s32(x, m), neg_k);
}

/* One multiplier and total shift for every lane (per-tensor scales: pools, add, mul), with
 * the cheapest exact form chosen once. */
typedef struct {
    int form; /* 0: wide (s <= 30 or m < 0), 1: s == 31, 2: s >= 32 */
    int32x4_t m, neg_k;
    int64x2_t neg_s;
} fw_requant_neon;

static inline fw_requant_neon fw_requant_neon_setup(int32_t multiplier, int32_t shift)
{
    fw_requant_neon q;
    const int s = 31 - shift;
    q.form = multiplier < 0 || s < 31 ? 0 : s == 31 ? 1 : 2;
    q.m = vdupq_n_s32(multiplier);
    q.neg_k = vdupq_n_s32(31 - s);
    q.neg_s = vdupq_n_s64(-s);
    return q;
}

static inline int32x4_t fw_requant_neon_apply(int32x4_t x, const fw_requant_neon *q)
{
    if (q->form == 2) {
        return fw_requant4_neon_high(x, q->m, q->neg_k);
    }
    if (q->form == 1) {
        return vqrdmulhq_s32(x, q->m);
    }
    return fw_requant4_neon_wide(x, q->m, q->neg_s, q->neg_s);
}

/* Sixteen int32 lanes (four vectors) plus the output zero point, saturated to int8 and clamped
 * to [lo, hi]: the scalar fw_clamp_s32 of every lane, as the activation range lies in int8. */
static inline int8x16_t fw_narrow16_neon(const int32x4_t v[4], int32x4_t zero_point, int8x16_t lo, int8x16_t hi)
{
    const int16x8_t a = vcombine_s16(vqmovn_s32(vaddq_s32(v[0], zero_point)), vqmovn_s32(vaddq_s32(v[1], zero_point)));
    const int16x8_t b = vcombine_s16(vqmovn_s32(vaddq_s32(v[2], zero_point)), vqmovn_s32(vaddq_s32(v[3], zero_point)));
    return vminq_s8(vmaxq_s8(vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)), lo), hi);
}

/* Eight lanes: fw_narrow16_neon's half. */
static inline int8x8_t fw_narrow8_neon(int32x4_t v0, int32x4_t v1, int32x4_t zero_point, int8x8_t lo, int8x8_t hi)
{
    const int16x8_t a = vcombine_s16(vqmovn_s32(vaddq_s32(v0, zero_point)), vqmovn_s32(vaddq_s32(v1, zero_point)));
    return vmin_s8(vmax_s8(vqmovn_s16(a), lo), hi);
}
#endif

#endif /* FWEDGE_REQUANT_NEON_H */
