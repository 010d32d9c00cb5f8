/* int8 2-D convolution (any stride, padding, dilation, groups), NHWC, TFLite requantization. */
#include "fwedge_rt.h"

/* One output pixel, one block of `count` output channels of one group. */
static void conv_pixel_block(const fw_conv_params *p, const int8_t *x, const int8_t *w, int oy, int ox, int group,
                             int oc0, int count, int32_t *acc)
{
    const int in_per_group = p->in_c / p->groups;
    const int out_per_group = p->out_c / p->groups;
    const int32_t zero_point = p->input_zero_point;
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
            const int8_t *xp = x + ((size_t)iy * p->in_w + ix) * p->in_c + (size_t)group * in_per_group;
            const int8_t *wp = w + ((((size_t)group * p->kernel_h + ky) * p->kernel_w + kx) * in_per_group) *
                                       out_per_group + oc0;
            for (int ic = 0; ic < in_per_group; ++ic) {
                const int16_t xv = (int16_t)(xp[ic] - zero_point);
                const int8_t *wr = wp + (size_t)ic * out_per_group;
                for (int j = 0; j < count; ++j) {
                    acc[j] += (int32_t)(xv * (int16_t)wr[j]);
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
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c;
            for (int group = 0; group < p->groups; ++group) {
                for (int oc0 = 0; oc0 < out_per_group; oc0 += FW_CHANNEL_BLOCK) {
                    const int count = out_per_group - oc0 < FW_CHANNEL_BLOCK ? out_per_group - oc0 : FW_CHANNEL_BLOCK;
                    const int base = group * out_per_group + oc0;
                    for (int j = 0; j < count; ++j) {
                        acc[j] = bias ? bias[base + j] : 0;
                    }
                    conv_pixel_block(p, x, w, oy, ox, group, oc0, count, acc);
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
