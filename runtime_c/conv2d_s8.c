/* int8 2-D convolution (any stride, padding, dilation, groups), NHWC input, OHWI weights, TFLite requantization.
 *
 * Each output value is a dot product of an input window with one output channel's weights. With
 * groups == 1 and no horizontal dilation, the valid taps of one kernel row are contiguous in
 * both the NHWC input and the OHWI weights, so the inner loop is one long int16 dot product
 * (kernel_w * in_c elements) over four output channels at once, which compilers vectorise
 * (pmaddwd on x86, smlal on Arm). No im2col buffer is needed, a 1x1 convolution is the same loop
 * with kernel_w = 1. Other cases run the per-tap loop over the group's channels. */
#include "fwedge_rt.h"

/* Largest kernel_h * kernel_w * in_c gathered into the per-pixel window buffer (int16 on the stack). */
#define FW_WINDOW_MAX 2304

/* acc[k] = sum_i window[i] * w_k[i] for four weight rows. */
#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
/* x86 with VNNI: the window holds x + 128 as unsigned bytes and the dot product is
 * unsigned x signed bytes, which the compiler maps to vpdpbusd (64 multiply-adds per
 * instruction). */
typedef uint8_t fw_window_t;
#define FW_WINDOW_U8 1
#else
/* Elsewhere the window holds x - zp as int16 and the dot product is int16 x int8, which maps
 * to pmaddwd (SSE2) or smlal (Arm). */
typedef int16_t fw_window_t;
#define FW_WINDOW_U8 0
#endif

/* The window holds v = x - anchor: anchor -128 for unsigned bytes, zp for int16. Padding holds
 * zp - anchor, so that sum((x - zp) * w) = dot(v, w) + (anchor - zp) * sum(w) over every tap. */
static inline int32_t window_anchor(int32_t zero_point)
{
    return FW_WINDOW_U8 ? -128 : zero_point;
}

static void window_dot4(const fw_window_t *window, const int8_t *w0, const int8_t *w1, const int8_t *w2,
                        const int8_t *w3, int n, int32_t *acc)
{
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int i = 0; i < n; ++i) {
        const int32_t xv = window[i];
        a0 += xv * w0[i];
        a1 += xv * w1[i];
        a2 += xv * w2[i];
        a3 += xv * w3[i];
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

static int32_t window_dot1(const fw_window_t *window, const int8_t *w, int n)
{
    int32_t a = 0;
    for (int i = 0; i < n; ++i) {
        a += (int32_t)window[i] * w[i];
    }
    return a;
}

/* Gather the receptive field of one output pixel in the OHWI order of a filter (x - anchor,
 * padding zp - anchor), so that one dot product runs over the whole filter. */
static void gather_window(const fw_conv_params *p, const int8_t *x, int oy, int ox, fw_window_t *window)
{
    const int y0 = oy * p->stride_h - p->pad_top;
    const int x0 = ox * p->stride_w - p->pad_left;
    const int32_t anchor = window_anchor(p->input_zero_point);
    const fw_window_t pad = (fw_window_t)(p->input_zero_point - anchor);
    fw_window_t *out = window;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        const int iy = y0 + ky * p->dilation_h;
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            const int ix = x0 + kx * p->dilation_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                for (int c = 0; c < p->in_c; ++c) {
                    out[c] = pad;
                }
            } else {
                const int8_t *xp = x + ((size_t)iy * p->in_w + ix) * p->in_c;
                for (int c = 0; c < p->in_c; ++c) {
                    out[c] = (fw_window_t)(xp[c] - anchor);
                }
            }
            out += p->in_c;
        }
    }
}

/* acc[k] += sum_i (x[i] - zero_point) * w_k[i] for four weight rows. */
static void dot4(const int8_t *x, const int8_t *w0, const int8_t *w1, const int8_t *w2, const int8_t *w3, int n,
                 int32_t zero_point, int32_t *acc)
{
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int i = 0; i < n; ++i) {
        const int16_t xv = (int16_t)(x[i] - zero_point);
        a0 += xv * w0[i];
        a1 += xv * w1[i];
        a2 += xv * w2[i];
        a3 += xv * w3[i];
    }
    acc[0] += a0;
    acc[1] += a1;
    acc[2] += a2;
    acc[3] += a3;
}

static int32_t dot1(const int8_t *x, const int8_t *w, int n, int32_t zero_point)
{
    int32_t a = 0;
    for (int i = 0; i < n; ++i) {
        a += (int16_t)(x[i] - zero_point) * w[i];
    }
    return a;
}

/* Accumulate one output pixel for output channels [oc0, oc0 + count) of `group`. */
static void conv_pixel(const fw_conv_params *p, const int8_t *x, const int8_t *w, int oy, int ox, int group, int oc0,
                       int count, int32_t *acc)
{
    const int in_per_group = p->in_c / p->groups;
    const int32_t zero_point = p->input_zero_point;
    const size_t filter = (size_t)p->kernel_h * p->kernel_w * in_per_group;
    const int y0 = oy * p->stride_h - p->pad_top;
    const int x0 = ox * p->stride_w - p->pad_left;
    if (p->groups == 1 && p->dilation_w == 1) {
        const int kx0 = x0 < 0 ? -x0 : 0;
        const int kx1 = x0 + p->kernel_w > p->in_w ? p->in_w - x0 : p->kernel_w;
        if (kx1 <= kx0) {
            return;
        }
        const int span = (kx1 - kx0) * p->in_c;
        for (int ky = 0; ky < p->kernel_h; ++ky) {
            const int iy = y0 + ky * p->dilation_h;
            if (iy < 0 || iy >= p->in_h) {
                continue;
            }
            const int8_t *xp = x + ((size_t)iy * p->in_w + x0 + kx0) * p->in_c;
            const int8_t *wp = w + (size_t)oc0 * filter + ((size_t)ky * p->kernel_w + kx0) * p->in_c;
            int j = 0;
            for (; j + 4 <= count; j += 4) {
                const int8_t *wj = wp + (size_t)j * filter;
                dot4(xp, wj, wj + filter, wj + 2 * filter, wj + 3 * filter, span, zero_point, acc + j);
            }
            for (; j < count; ++j) {
                acc[j] += dot1(xp, wp + (size_t)j * filter, span, zero_point);
            }
        }
        return;
    }
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        const int iy = y0 + ky * p->dilation_h;
        if (iy < 0 || iy >= p->in_h) {
            continue;
        }
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            const int ix = x0 + kx * p->dilation_w;
            if (ix < 0 || ix >= p->in_w) {
                continue;
            }
            const int8_t *xp = x + ((size_t)iy * p->in_w + ix) * p->in_c + (size_t)group * in_per_group;
            const int8_t *wp = w + (size_t)oc0 * filter + ((size_t)ky * p->kernel_w + kx) * in_per_group;
            for (int j = 0; j < count; ++j) {
                acc[j] += dot1(xp, wp + (size_t)j * filter, in_per_group, zero_point);
            }
        }
    }
}

/* groups == 1 and a filter of at most FW_WINDOW_MAX values: for each block of output channels,
 * sum each filter once, then per pixel gather the window once and take one dot product per
 * output channel over the whole filter. */
static void conv2d_s8_window(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                             const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    fw_window_t window[FW_WINDOW_MAX];
    int32_t offset[FW_CHANNEL_BLOCK];
    const int filter = p->kernel_h * p->kernel_w * p->in_c;
    const int32_t correction = window_anchor(p->input_zero_point) - p->input_zero_point;
    for (int c0 = 0; c0 < p->out_c; c0 += FW_CHANNEL_BLOCK) {
        const int count = p->out_c - c0 < FW_CHANNEL_BLOCK ? p->out_c - c0 : FW_CHANNEL_BLOCK;
        for (int j = 0; j < count; ++j) {
            const int8_t *wo = w + (size_t)(c0 + j) * filter;
            int32_t total = 0;
            for (int i = 0; i < filter; ++i) {
                total += wo[i];
            }
            offset[j] = (bias ? bias[c0 + j] : 0) + correction * total;
        }
        for (int oy = 0; oy < p->out_h; ++oy) {
            for (int ox = 0; ox < p->out_w; ++ox) {
                int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c + c0;
                int32_t acc[4];
                gather_window(p, x, oy, ox, window);
                int j = 0;
                for (; j + 4 <= count; j += 4) {
                    const int8_t *wo = w + (size_t)(c0 + j) * filter;
                    window_dot4(window, wo, wo + filter, wo + 2 * filter, wo + 3 * filter, filter, acc);
                    for (int k = 0; k < 4; ++k) {
                        const int oc = c0 + j + k;
                        int32_t v = fw_multiply_by_quantized_multiplier(acc[k] + offset[j + k], multiplier[oc], shift[oc]);
                        yp[j + k] = (int8_t)fw_clamp_s32(v + p->output_zero_point, p->activation_min, p->activation_max);
                    }
                }
                for (; j < count; ++j) {
                    const int oc = c0 + j;
                    const int32_t total = window_dot1(window, w + (size_t)oc * filter, filter) + offset[j];
                    int32_t v = fw_multiply_by_quantized_multiplier(total, multiplier[oc], shift[oc]);
                    yp[j] = (int8_t)fw_clamp_s32(v + p->output_zero_point, p->activation_min, p->activation_max);
                }
            }
        }
    }
}

void fw_conv2d_s8(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                  const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int out_per_group = p->out_c / p->groups;
    int32_t acc[FW_CHANNEL_BLOCK];
    if (p->groups == 1 && p->kernel_h * p->kernel_w * p->in_c <= FW_WINDOW_MAX) {
        conv2d_s8_window(p, x, w, bias, multiplier, shift, y);
        return;
    }
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c;
            for (int group = 0; group < p->groups; ++group) {
                for (int c0 = 0; c0 < out_per_group; c0 += FW_CHANNEL_BLOCK) {
                    const int count = out_per_group - c0 < FW_CHANNEL_BLOCK ? out_per_group - c0 : FW_CHANNEL_BLOCK;
                    const int base = group * out_per_group + c0;
                    for (int j = 0; j < count; ++j) {
                        acc[j] = bias ? bias[base + j] : 0;
                    }
                    conv_pixel(p, x, w, oy, ox, group, base, count, acc);
                    for (int j = 0; j < count; ++j) {
                        int32_t v = fw_multiply_by_quantized_multiplier(acc[j], multiplier[base + j], shift[base + j]);
                        v += p->output_zero_point;
                        yp[base + j] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
                    }
                }
            }
        }
    }
}
