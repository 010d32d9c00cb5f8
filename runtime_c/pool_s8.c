/* int8 max pool (shared quantization), average pool and global average pool (requantized). */
#include "fwedge_rt.h"

void fw_max_pool_s8(const fw_pool_params *p, const int8_t *x, int8_t *y)
{
    /* Parameters in locals: the int8 stores could alias *p, which would reload them per element. */
    const int channels = p->channels, in_h = p->in_h, in_w = p->in_w;
    const int8_t lo = (int8_t)fw_clamp_s32(p->activation_min, -128, 127);
    const int8_t hi = (int8_t)fw_clamp_s32(p->activation_max, -128, 127);
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
