/* int8 2-D convolution (any stride, padding, dilation, groups), NHWC input, OHWI weights, TFLite requantization.
 *
 * Each output value is a dot product of an input window with one output channel's weights. With
 * groups == 1 and no horizontal dilation, the valid taps of one kernel row are contiguous in
 * both the NHWC input and the OHWI weights, so the inner loop is one long int16 dot product
 * (kernel_w * in_c elements) over four output channels at once, which compilers vectorise
 * (pmaddwd on x86, smlal on Arm). No im2col buffer is needed, a 1x1 convolution is the same loop
 * with kernel_w = 1. Other cases run the per-tap loop over the group's channels. */
#include "fwedge_rt.h"

/* Largest kernel_h * kernel_w * in_c gathered into each of the two per-pixel window buffers (int16 on the stack). */
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

/* acc[k] = window0 . w_k and acc[4 + k] = window1 . w_k for four weight rows and two output
 * pixels: every weight load (and int8 -> int16 widening) serves both pixels. */
static void window_dot4x2(const fw_window_t *window0, const fw_window_t *window1, const int8_t *w0,
                          const int8_t *w1, const int8_t *w2, const int8_t *w3, int n, int32_t *acc)
{
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    for (int i = 0; i < n; ++i) {
        const int32_t xa = window0[i];
        const int32_t xb = window1[i];
        a0 += xa * w0[i];
        a1 += xa * w1[i];
        a2 += xa * w2[i];
        a3 += xa * w3[i];
        b0 += xb * w0[i];
        b1 += xb * w1[i];
        b2 += xb * w2[i];
        b3 += xb * w3[i];
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    acc[4] = b0;
    acc[5] = b1;
    acc[6] = b2;
    acc[7] = b3;
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
        if (p->dilation_w == 1 && iy >= 0 && iy < p->in_h && x0 >= 0 && x0 + p->kernel_w <= p->in_w) {
            /* The whole kernel row is inside the input: one contiguous span of kernel_w * in_c. */
            const int8_t *xp = x + ((size_t)iy * p->in_w + x0) * p->in_c;
            const int span = p->kernel_w * p->in_c;
            for (int c = 0; c < span; ++c) {
                out[c] = (fw_window_t)(xp[c] - anchor);
            }
            out += span;
            continue;
        }
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

/* Filters of at most this many values take the output-channel-innermost path (conv2d_s8_short). */
#define FW_SHORT_FILTER 16

/* groups == 1 and a short filter (a first layer on one input channel, a 1x1 conv on few
 * channels): a dot product per output would be mostly horizontal-sum overhead or scalar
 * remainder, so the block's weights are transposed once into wt[filter][count] (int16, on the
 * stack) and every window value is multiplied into a contiguous row of int32 accumulators, one
 * per output channel, a loop the compiler vectorises without horizontal sums. A product of a
 * window value (|v| <= 255) and a weight (|w| <= 128) fits int16 exactly. */
static void conv2d_s8_short(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    fw_window_t window[FW_SHORT_FILTER];
    int16_t wt[FW_SHORT_FILTER * FW_CHANNEL_BLOCK];
    int32_t offset[FW_CHANNEL_BLOCK], acc[FW_CHANNEL_BLOCK];
    const int filter = p->kernel_h * p->kernel_w * p->in_c;
    const int32_t correction = window_anchor(p->input_zero_point) - p->input_zero_point;
    for (int c0 = 0; c0 < p->out_c; c0 += FW_CHANNEL_BLOCK) {
        const int count = p->out_c - c0 < FW_CHANNEL_BLOCK ? p->out_c - c0 : FW_CHANNEL_BLOCK;
        for (int j = 0; j < count; ++j) {
            const int8_t *wo = w + (size_t)(c0 + j) * filter;
            int32_t total = 0;
            for (int i = 0; i < filter; ++i) {
                total += wo[i];
                wt[i * count + j] = wo[i];
            }
            offset[j] = (bias ? bias[c0 + j] : 0) + correction * total;
        }
        for (int oy = 0; oy < p->out_h; ++oy) {
            for (int ox = 0; ox < p->out_w; ++ox) {
                int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c + c0;
                gather_window(p, x, oy, ox, window);
                for (int j = 0; j < count; ++j) {
                    acc[j] = offset[j];
                }
                for (int i = 0; i < filter; ++i) {
                    const int16_t v = (int16_t)window[i];
                    const int16_t *wr = wt + i * count;
                    for (int j = 0; j < count; ++j) {
                        acc[j] += (int16_t)(v * wr[j]);
                    }
                }
                for (int j = 0; j < count; ++j) {
                    const int32_t v = fw_multiply_by_quantized_multiplier(acc[j], multiplier[c0 + j], shift[c0 + j]);
                    yp[j] = (int8_t)fw_clamp_s32(v + p->output_zero_point, p->activation_min, p->activation_max);
                }
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
    fw_window_t window[2 * FW_WINDOW_MAX];
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
            int ox = 0;
            /* Pairs of horizontally adjacent output pixels share the weight loads. */
            for (; ox + 2 <= p->out_w; ox += 2) {
                int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c + c0;
                int32_t acc[8];
                gather_window(p, x, oy, ox, window);
                gather_window(p, x, oy, ox + 1, window + filter);
                int j = 0;
                for (; j + 4 <= count; j += 4) {
                    const int8_t *wo = w + (size_t)(c0 + j) * filter;
                    window_dot4x2(window, window + filter, wo, wo + filter, wo + 2 * filter, wo + 3 * filter, filter,
                                  acc);
                    for (int k = 0; k < 8; ++k) {
                        const int oc = c0 + j + (k & 3);
                        int32_t v = fw_multiply_by_quantized_multiplier(acc[k] + offset[j + (k & 3)], multiplier[oc],
                                                                        shift[oc]);
                        yp[(k >> 2) * p->out_c + j + (k & 3)] =
                            (int8_t)fw_clamp_s32(v + p->output_zero_point, p->activation_min, p->activation_max);
                    }
                }
                for (; j < count; ++j) {
                    const int oc = c0 + j;
                    for (int k = 0; k < 2; ++k) {
                        const int32_t total = window_dot1(window + k * filter, w + (size_t)oc * filter, filter) +
                                              offset[j];
                        int32_t v = fw_multiply_by_quantized_multiplier(total, multiplier[oc], shift[oc]);
                        yp[k * p->out_c + j] =
                            (int8_t)fw_clamp_s32(v + p->output_zero_point, p->activation_min, p->activation_max);
                    }
                }
            }
            for (; ox < p->out_w; ++ox) {
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
    if (p->groups == 1 && p->kernel_h * p->kernel_w * p->in_c <= FW_SHORT_FILTER) {
        conv2d_s8_short(p, x, w, bias, multiplier, shift, y);
        return;
    }
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
