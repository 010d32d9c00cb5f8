/* float32 max / average pool and global average pool, NHWC. */
#include "fwedge_rt.h"

void fw_max_pool_f32(const fw_pool_params *p, const float *x, float *y)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            float *yp = y + ((size_t)oy * p->out_w + ox) * p->channels;
            int first = 1;
            for (int ky = 0; ky < p->kernel_h; ++ky) {
                const int iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                if (iy < 0 || iy >= p->in_h) {
                    continue;
                }
                for (int kx = 0; kx < p->kernel_w; ++kx) {
                    const int ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                    if (ix < 0 || ix >= p->in_w) {
                        continue;
                    }
                    const float *xp = x + ((size_t)iy * p->in_w + ix) * p->channels;
                    for (int c = 0; c < p->channels; ++c) {
                        yp[c] = first || xp[c] > yp[c] ? xp[c] : yp[c];
                    }
                    first = 0;
                }
            }
            for (int c = 0; c < p->channels; ++c) {
                yp[c] = first ? 0.0f : fw_clamp_f32(yp[c], p->float_min, p->float_max);
            }
        }
    }
}

void fw_avg_pool_f32(const fw_pool_params *p, const float *x, float *y)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            float *yp = y + ((size_t)oy * p->out_w + ox) * p->channels;
            int taps = 0;
            for (int c = 0; c < p->channels; ++c) {
                yp[c] = 0.0f;
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
                    const float *xp = x + ((size_t)iy * p->in_w + ix) * p->channels;
                    for (int c = 0; c < p->channels; ++c) {
                        yp[c] += xp[c];
                    }
                    ++taps;
                }
            }
            const int divisor = p->count_include_pad ? p->kernel_h * p->kernel_w : taps;
            for (int c = 0; c < p->channels; ++c) {
                yp[c] = divisor > 0 ? fw_clamp_f32(yp[c] / (float)divisor, p->float_min, p->float_max) : 0.0f;
            }
        }
    }
}

void fw_global_avg_pool_f32(const fw_pool_params *p, const float *x, float *y)
{
    const int pixels = p->in_h * p->in_w;
    for (int c = 0; c < p->channels; ++c) {
        y[c] = 0.0f;
    }
    for (int i = 0; i < pixels; ++i) {
        const float *xp = x + (size_t)i * p->channels;
        for (int c = 0; c < p->channels; ++c) {
            y[c] += xp[c];
        }
    }
    for (int c = 0; c < p->channels; ++c) {
        y[c] /= (float)pixels;
    }
}
