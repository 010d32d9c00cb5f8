/* int8 max pool (shared quantization), average pool and global average pool (requantized). */
#include "fwedge_rt.h"
#include "requant_neon.h"

#if defined(FW_NEON)
/* Window taps the NEON pools list per output pixel (larger windows take the portable loops). */
#define FW_POOL_NEON_TAPS 64

/* The input pixels of output pixel (oy, ox)'s window that lie inside the input; returns their count. */
static int pool_taps(const fw_pool_params *p, const int8_t *x, int oy, int ox, int dilation_h, int dilation_w,
                     const int8_t **tap)
{
    int taps = 0;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        const int iy = oy * p->stride_h - p->pad_top + ky * dilation_h;
        if (iy < 0 || iy >= p->in_h) {
            continue;
        }
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            const int ix = ox * p->stride_w - p->pad_left + kx * dilation_w;
            if (ix >= 0 && ix < p->in_w) {
                tap[taps++] = x + ((size_t)iy * p->in_w + ix) * p->channels;
            }
        }
    }
    return taps;
}
/* Sixteen channels of sum over taps of (x - zp) in int32 (four vectors), from int16 partial sums
 * of the bytes (SADDW; at most FW_POOL_NEON_TAPS = 64 taps of 128, no overflow) less
 * taps * zp, which is the scalar sum of x - zp exactly. */
static inline void pool_sum16_neon(const int8_t *const *tap, int taps, int c, int32x4_t minus_zp, int32x4_t *acc)
{
    int16x8_t lo = vdupq_n_s16(0), hi = lo;
    for (int t = 0; t < taps; ++t) {
        const int8x16_t v = vld1q_s8(tap[t] + c);
        lo = vaddw_s8(lo, vget_low_s8(v));
        hi = vaddw_high_s8(hi, v);
    }
    acc[0] = vaddw_s16(minus_zp, vget_low_s16(lo));
    acc[1] = vaddw_high_s16(minus_zp, lo);
    acc[2] = vaddw_s16(minus_zp, vget_low_s16(hi));
    acc[3] = vaddw_high_s16(minus_zp, hi);
}

/* Average pool with at most FW_POOL_NEON_TAPS taps: each pixel's valid taps listed once, its
 * count's multiplier set up once (requant_neon.h), sixteen channels per step. */
static void avg_pool_neon(const fw_pool_params *p, const int8_t *x, const int32_t *multipliers, const int32_t *shifts,
                          int8_t *y)
{
    const int channels = p->channels;
    const int32_t zero_point = p->input_zero_point, output_zero_point = p->output_zero_point;
    const int32_t lo = fw_clamp_s32(p->activation_min, -128, 127), hi = fw_clamp_s32(p->activation_max, -128, 127);
    const int8x16_t lo8 = vdupq_n_s8((int8_t)lo), hi8 = vdupq_n_s8((int8_t)hi);
    const int32x4_t zpo = vdupq_n_s32(output_zero_point);
    const int8_t *tap[FW_POOL_NEON_TAPS];
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const int taps = pool_taps(p, x, oy, ox, 1, 1, tap);
            const int32_t divisor = p->count_include_pad ? p->kernel_h * p->kernel_w : taps;
            const fw_requant_neon q = fw_requant_neon_setup(multipliers[divisor], shifts[divisor]);
            const int32x4_t minus_zp = vdupq_n_s32(-taps * zero_point);
            int8_t *yp = y + ((size_t)oy * p->out_w + ox) * channels;
            int c = 0;
            for (; c + 16 <= channels; c += 16) {
                int32x4_t v[4];
                pool_sum16_neon(tap, taps, c, minus_zp, v);
                for (int j = 0; j < 4; ++j) {
                    v[j] = fw_requant_neon_apply(v[j], &q);
                }
                vst1q_s8(yp + c, fw_narrow16_neon(v, zpo, lo8, hi8));
            }
            for (; c < channels; ++c) {
                int32_t acc = 0;
                for (int t = 0; t < taps; ++t) {
                    acc += tap[t][c] - zero_point;
                }
                const int32_t v = fw_multiply_by_quantized_multiplier(acc, multipliers[divisor], shifts[divisor]);
                yp[c] = (int8_t)fw_clamp_s32(v + output_zero_point, lo, hi);
            }
        }
    }
}

/* Global average pool, sixteen channels per step: the bytes of up to 256 pixels summed in int16
 * (SADDW; 256 * 128 fits), each such run widened into the int32 sums (SADDW), pixels * zp taken
 * off at the end, which is the scalar sum of x - zp exactly. */
static void global_avg_pool_neon(const fw_pool_params *p, const int8_t *x, int8_t *y)
{
    const int channels = p->channels, pixels = p->in_h * p->in_w;
    const int32_t zero_point = p->input_zero_point, output_zero_point = p->output_zero_point;
    const int32_t lo = fw_clamp_s32(p->activation_min, -128, 127), hi = fw_clamp_s32(p->activation_max, -128, 127);
    const int8x16_t lo8 = vdupq_n_s8((int8_t)lo), hi8 = vdupq_n_s8((int8_t)hi);
    const int32x4_t zpo = vdupq_n_s32(output_zero_point);
    const fw_requant_neon q = fw_requant_neon_setup(p->multiplier, p->shift);
    const int32_t minus_zp = (int32_t)(0u - (uint32_t)pixels * (uint32_t)zero_point);
    int c = 0;
    for (; c + 16 <= channels; c += 16) {
        int32x4_t v[4];
        for (int j = 0; j < 4; ++j) {
            v[j] = vdupq_n_s32(minus_zp);
        }
        for (int i0 = 0; i0 < pixels; i0 += 256) {
            const int run = pixels - i0 < 256 ? pixels - i0 : 256;
            const int8_t *xp = x + (size_t)i0 * channels + c;
            int16x8_t lo16 = vdupq_n_s16(0), hi16 = lo16;
            for (int i = 0; i < run; ++i, xp += channels) {
                const int8x16_t b = vld1q_s8(xp);
                lo16 = vaddw_s8(lo16, vget_low_s8(b));
                hi16 = vaddw_high_s8(hi16, b);
            }
            v[0] = vaddw_s16(v[0], vget_low_s16(lo16));
            v[1] = vaddw_high_s16(v[1], lo16);
            v[2] = vaddw_s16(v[2], vget_low_s16(hi16));
            v[3] = vaddw_high_s16(v[3], hi16);
        }
        for (int j = 0; j < 4; ++j) {
            v[j] = fw_requant_neon_apply(v[j], &q);
        }
        vst1q_s8(y + c, fw_narrow16_neon(v, zpo, lo8, hi8));
    }
    for (; c < channels; ++c) {
        int32_t acc = 0;
        for (int i = 0; i < pixels; ++i) {
            acc += x[(size_t)i * channels + c] - zero_point;
        }
        const int32_t v = fw_multiply_by_quantized_multiplier(acc, p->multiplier, p->shift) + output_zero_point;
        y[c] = (int8_t)fw_clamp_s32(v, lo, hi);
    }
}
#endif

void fw_max_pool_s8(const fw_pool_params *p, const int8_t *x, int8_t *y)
{
    /* Parameters in locals: the int8 stores could alias *p, which would reload them per element. */
    const int channels = p->channels, in_h = p->in_h, in_w = p->in_w;
    const int8_t lo = (int8_t)fw_clamp_s32(p->activation_min, -128, 127);
    const int8_t hi = (int8_t)fw_clamp_s32(p->activation_max, -128, 127);
#if defined(FW_NEON)
    if (p->kernel_h * p->kernel_w <= FW_POOL_NEON_TAPS) {
        /* The valid taps listed once per pixel, then sixteen channels per register (SMAX), eight
         * for the next channels, a scalar loop for the rest; no window is empty, as padding is
         * smaller than the kernel. */
        const int8x16_t lo8 = vdupq_n_s8(lo), hi8 = vdupq_n_s8(hi);
        const int8_t *tap[FW_POOL_NEON_TAPS];
        /* windows wholly inside the input take their taps from one table of offsets */
        const int kernel_h = p->kernel_h, kernel_w = p->kernel_w, window = kernel_h * kernel_w;
        const int span_h = (kernel_h - 1) * p->dilation_h, span_w = (kernel_w - 1) * p->dilation_w;
        ptrdiff_t offset[FW_POOL_NEON_TAPS];
        for (int i = 0; i < window; ++i) {
            const int ky = i / kernel_w, kx = i - ky * kernel_w;
            offset[i] = ((ptrdiff_t)ky * p->dilation_h * in_w + (ptrdiff_t)kx * p->dilation_w) * channels;
        }
        for (int oy = 0; oy < p->out_h; ++oy) {
            const int y0 = oy * p->stride_h - p->pad_top;
            for (int ox = 0; ox < p->out_w; ++ox) {
                const int x0 = ox * p->stride_w - p->pad_left;
                int taps = window;
                if (y0 >= 0 && y0 + span_h < in_h && x0 >= 0 && x0 + span_w < in_w) {
                    const int8_t *base = x + ((size_t)y0 * in_w + x0) * channels;
                    for (int i = 0; i < window; ++i) {
                        tap[i] = base + offset[i];
                    }
                } else {
                    taps = pool_taps(p, x, oy, ox, p->dilation_h, p->dilation_w, tap);
                }
                int8_t *yp = y + ((size_t)oy * p->out_w + ox) * channels;
                int c = 0;
                for (; c + 16 <= channels; c += 16) {
                    int8x16_t m = vdupq_n_s8(-128);
                    for (int t = 0; t < taps; ++t) {
                        m = vmaxq_s8(m, vld1q_s8(tap[t] + c));
                    }
                    vst1q_s8(yp + c, vminq_s8(vmaxq_s8(m, lo8), hi8));
                }
                for (; c + 8 <= channels; c += 8) {
                    int8x8_t m = vdup_n_s8(-128);
                    for (int t = 0; t < taps; ++t) {
                        m = vmax_s8(m, vld1_s8(tap[t] + c));
                    }
                    vst1_s8(yp + c, vmin_s8(vmax_s8(m, vget_low_s8(lo8)), vget_low_s8(hi8)));
                }
                for (; c < channels; ++c) {
                    int8_t m = -128;
                    for (int t = 0; t < taps; ++t) {
                        m = tap[t][c] > m ? tap[t][c] : m;
                    }
                    yp[c] = m < lo ? lo : (m > hi ? hi : m);
                }
            }
        }
        return;
    }
#endif
#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
    if (channels % 16 == 0 && p->kernel_h * p->kernel_w <= 16) {
        /* The valid taps of a pixel listed once, then sixteen channels per register with the
         * running maximum kept in it. SSE2 has no signed byte max: x ^ 0x80 maps int8 order
         * onto uint8 order, so pmaxub/pminub on flipped bytes give the signed max and clamp. */
        const __m128i flip = _mm_set1_epi8((char)0x80);
        const __m128i lo_u = _mm_set1_epi8((char)(lo ^ 0x80)), hi_u = _mm_set1_epi8((char)(hi ^ 0x80));
        const int8_t *tap[16];
        for (int oy = 0; oy < p->out_h; ++oy) {
            for (int ox = 0; ox < p->out_w; ++ox) {
                int taps = 0;
                for (int ky = 0; ky < p->kernel_h; ++ky) {
                    const int iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                    for (int kx = 0; kx < p->kernel_w; ++kx) {
                        const int ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                        if (iy >= 0 && iy < in_h && ix >= 0 && ix < in_w) {
                            tap[taps++] = x + ((size_t)iy * in_w + ix) * channels;
                        }
                    }
                }
                int8_t *yp = y + ((size_t)oy * p->out_w + ox) * channels;
                for (int c = 0; c < channels; c += 16) {
                    __m128i m = _mm_setzero_si128(); /* -128, flipped */
                    for (int t = 0; t < taps; ++t) {
                        m = _mm_max_epu8(m, _mm_xor_si128(_mm_loadu_si128((const __m128i *)(tap[t] + c)), flip));
                    }
                    m = _mm_min_epu8(_mm_max_epu8(m, lo_u), hi_u);
                    _mm_storeu_si128((__m128i *)(yp + c), _mm_xor_si128(m, flip));
                }
            }
        }
        return;
    }
#endif
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            int8_t *yp = y + ((size_t)oy * p->out_w + ox) * channels;
            for (int c = 0; c < channels; ++c) {
                yp[c] = -128;
            }
            for (int ky = 0; ky < p->kernel_h; ++ky) {
                const int iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                if (iy < 0 || iy >= in_h) {
                    continue;
                }
                for (int kx = 0; kx < p->kernel_w; ++kx) {
                    const int ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                    if (ix < 0 || ix >= in_w) {
                        continue;
                    }
                    const int8_t *xp = x + ((size_t)iy * in_w + ix) * channels;
                    for (int c = 0; c < channels; ++c) {
                        yp[c] = xp[c] > yp[c] ? xp[c] : yp[c];
                    }
                }
            }
            for (int c = 0; c < channels; ++c) {
                yp[c] = yp[c] < lo ? lo : (yp[c] > hi ? hi : yp[c]);
            }
        }
    }
}

void fw_avg_pool_s8(const fw_pool_params *p, const int8_t *x, const int32_t *multipliers, const int32_t *shifts,
                    int8_t *y)
{
#if defined(FW_NEON)
    if (p->kernel_h * p->kernel_w <= FW_POOL_NEON_TAPS) {
        avg_pool_neon(p, x, multipliers, shifts, y);
        return;
    }
#endif
    int32_t acc[FW_CHANNEL_BLOCK];
    const int32_t zero_point = p->input_zero_point;
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->channels;
            for (int c0 = 0; c0 < p->channels; c0 += FW_CHANNEL_BLOCK) {
                const int count = p->channels - c0 < FW_CHANNEL_BLOCK ? p->channels - c0 : FW_CHANNEL_BLOCK;
                int32_t taps = 0;
                for (int j = 0; j < count; ++j) {
                    acc[j] = 0;
                }
                for (int ky = 0; ky < p->kernel_h; ++ky) {
                    const int iy = oy * p->stride_h - p->pad_top + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (int kx = 0; kx < p->kernel_w; ++kx) {
                        const int ix = ox * p->stride_w - p->pad_left + kx;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        const int8_t *xp = x + ((size_t)iy * p->in_w + ix) * p->channels + c0;
                        for (int j = 0; j < count; ++j) {
                            acc[j] += xp[j] - zero_point;
                        }
                        ++taps;
                    }
                }
                const int32_t divisor = p->count_include_pad ? p->kernel_h * p->kernel_w : taps;
                const int32_t multiplier = multipliers[divisor], shift = shifts[divisor];
                for (int j = 0; j < count; ++j) {
                    const int32_t v = fw_multiply_by_quantized_multiplier(acc[j], multiplier, shift);
                    yp[c0 + j] = (int8_t)fw_clamp_s32(v + p->output_zero_point, p->activation_min, p->activation_max);
                }
            }
        }
    }
}

void fw_global_avg_pool_s8(const fw_pool_params *p, const int8_t *x, int8_t *y)
{
#if defined(FW_NEON)
    global_avg_pool_neon(p, x, y);
    return;
#endif
    int32_t acc[FW_CHANNEL_BLOCK];
    const int pixels = p->in_h * p->in_w;
    const int32_t zero_point = p->input_zero_point;
    for (int c0 = 0; c0 < p->channels; c0 += FW_CHANNEL_BLOCK) {
        const int count = p->channels - c0 < FW_CHANNEL_BLOCK ? p->channels - c0 : FW_CHANNEL_BLOCK;
        for (int j = 0; j < count; ++j) {
            acc[j] = 0;
        }
        for (int i = 0; i < pixels; ++i) {
            const int8_t *xp = x + (size_t)i * p->channels + c0;
            for (int j = 0; j < count; ++j) {
                acc[j] += xp[j] - zero_point;
            }
        }
        for (int j = 0; j < count; ++j) {
            int32_t v = fw_multiply_by_quantized_multiplier(acc[j], p->multiplier, p->shift) + p->output_zero_point;
            y[c0 + j] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
        }
    }
}
