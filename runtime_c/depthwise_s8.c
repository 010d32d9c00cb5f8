/* int8 depthwise 2-D convolution (any stride, padding, dilation, channel multiplier), NHWC. */
#include "fwedge_rt.h"

void fw_depthwise_conv2d_s8(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int channel_multiplier = p->out_c / p->in_c;
    const int32_t zero_point = p->input_zero_point;
    int32_t acc[FW_CHANNEL_BLOCK];
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            int8_t *yp = y + ((size_t)oy * p->out_w + ox) * p->out_c;
            for (int oc0 = 0; oc0 < p->out_c; oc0 += FW_CHANNEL_BLOCK) {
                const int count = p->out_c - oc0 < FW_CHANNEL_BLOCK ? p->out_c - oc0 : FW_CHANNEL_BLOCK;
                for (int j = 0; j < count; ++j) {
                    acc[j] = bias ? bias[oc0 + j] : 0;
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
                        const int8_t *xp = x + ((size_t)iy * p->in_w + ix) * p->in_c;
                        const int8_t *wp = w + ((size_t)ky * p->kernel_w + kx) * p->out_c + oc0;
                        if (channel_multiplier == 1) {
                            const int8_t *xc = xp + oc0;
                            for (int j = 0; j < count; ++j) {
                                acc[j] += (int32_t)((int16_t)(xc[j] - zero_point) * (int16_t)wp[j]);
                            }
                        } else {
                            for (int j = 0; j < count; ++j) {
                                const int16_t xv = (int16_t)(xp[(oc0 + j) / channel_multiplier] - zero_point);
                                acc[j] += (int32_t)(xv * (int16_t)wp[j]);
                            }
                        }
                    }
                }
                for (int j = 0; j < count; ++j) {
                    int32_t v = fw_multiply_by_quantized_multiplier(acc[j], multiplier[oc0 + j], shift[oc0 + j]);
                    v += p->output_zero_point;
                    yp[oc0 + j] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
                }
            }
        }
    }
}
