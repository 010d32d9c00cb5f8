/* int8 max pool (shared quantization), average pool and global average pool (requantized). */
#include "fwedge_rt.h"

void fw_max_pool_s8(const fw_pool_params *p, const int8_t *x, int8_t *y)
{
    /* Parameters in locals: the int8 stores could alias *p, which would reload them per element. */
    const int channels = p->channels, in_h = p->in_h, in_w = p->in_w;
    const int8_t lo = (int8_t)fw_clamp_s32(p->activation_min, -128, 127);
    const int8_t hi = (int8_t)fw_clamp_s32(p->activation_max, -128, 127);
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
