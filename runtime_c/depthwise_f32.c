/* float32 depthwise 2-D convolution (any stride, padding, dilation, channel multiplier), NHWC. */
#include "fwedge_rt.h"

void fw_depthwise_conv2d_f32(const fw_conv_params *p, const float *x, const float *w, const float *bias,
                             float *y)
{
    const int channel_multiplier = p->out_c / p->in_c;
    float acc[FW_CHANNEL_BLOCK];
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            float *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c;
            for (int oc0 = 0; oc0 < p->out_c; oc0 += FW_CHANNEL_BLOCK) {
                const int count = p->out_c - oc0 < FW_CHANNEL_BLOCK ? p->out_c - oc0 : FW_CHANNEL_BLOCK;
                for (int j = 0; j < count; ++j) {
                    acc[j] = bias ? bias[oc0 + j] : 0.0f;
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
                        const float *xp = x + ((size_t)iy * p->in_w + ix) * p->in_c;
                        const float *wp = w + ((size_t)ky * p->kernel_w + kx) * p->out_c + oc0;
                        if (channel_multiplier == 1) {
                            const float *xc = xp + oc0;
                            for (int j = 0; j < count; ++j) {
                                acc[j] += xc[j] * wp[j];
                            }
                        } else {
                            for (int j = 0; j < count; ++j) {
                                acc[j] += xp[(oc0 + j) / channel_multiplier] * wp[j];
                            }
                        }
                    }
                }
                for (int j = 0; j < count; ++j) {
                    yp[oc0 + j] = fw_clamp_f32(acc[j], p->float_min, p->float_max);
                }
            }
        }
    }
}
