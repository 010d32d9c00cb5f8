/* int8 table lookup (sigmoid, hardswish, hardsigmoid, ...), per-channel lookup (PRelu) and clamp. */
#include "fwedge_rt.h"

void fw_lut_s8(int size, const int8_t *table, const int8_t *x, int8_t *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = table[(int)x[i] + 128];
    }
}

void fw_clamp_s8(int size, int32_t lo, int32_t hi, const int8_t *x, int8_t *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = (int8_t)fw_clamp_s32(x[i], lo, hi);
    }
}

void fw_lut_channels_s8(int pixels, int channels, const int8_t *tables, const int8_t *x, int8_t *y)
{
    for (int p = 0; p < pixels; ++p) {
        const int8_t *in = x + (size_t)p * channels;
        int8_t *out = y + (size_t)p * channels;
        for (int c = 0; c < channels; ++c) {
            out[c] = tables[c * 256 + (int)in[c] + 128];
        }
    }
}
