/* float32 2-D convolution (any stride, padding, dilation, groups), NHWC. */
#include "fwedge_rt.h"

void fw_conv2d_f32(const fw_conv_params *p, const float *x, const float *w, const float *bias, float *y)
{
    const int in_per_group = p->in_c / p->groups;
    const int out_per_group = p->out_c / p->groups;
    float acc[FW_CHANNEL_BLOCK];
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            float *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c;
            for (int group = 0; group < p->groups; ++group) {
                for (int oc0 = 0; oc0 < out_per_group; oc0 += FW_CHANNEL_BLOCK) {
                    const int count = out_per_group - oc0 < FW_CHANNEL_BLOCK ? out_per_group - oc0 : FW_CHANNEL_BLOCK;
                    const int base = group * out_per_group + oc0;
                    for (int j = 0; j < count; ++j) {
                        acc[j] = bias ? bias[base + j] : 0.0f;
                    }
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
                            const float *xp = x + ((size_t)iy * p->in_w + ix) * p->in_c + (size_t)group * in_per_group;
                            const float *wp = w + ((((size_t)group * p->kernel_h + ky) * p->kernel_w + kx) *
                                                   in_per_group) * out_per_group + oc0;
                            for (int ic = 0; ic < in_per_group; ++ic) {
                                const float xv = xp[ic];
                                const float *wr = wp + (size_t)ic * out_per_group;
                                for (int j = 0; j < count; ++j) {
                                    acc[j] += xv * wr[j];
                                }
                            }
                        }
                    }
                    for (int j = 0; j < count; ++j) {
                        yp[base + j] = fw_clamp_f32(acc[j], p->float_min, p->float_max);
                    }
                }
            }
        }
    }
}
