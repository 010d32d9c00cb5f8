/* Rearrangements compiled only into bundles that use them: Transpose (fw_permute4), Slice, Split
 * and Gather (fw_take3), DepthToSpace (fw_depth_to_space_nhwc), the one-hot embedding's row
 * lookup (fw_embedding). */
#include <string.h>

#include "fwedge_rt.h"

void fw_permute4(const int *dims, const int *strides, int element_size, const void *x, void *y)
{
    const unsigned char *in = (const unsigned char *)x;
    unsigned char *out = (unsigned char *)y;
    const size_t item = (size_t)element_size;
    for (int a = 0; a < dims[0]; ++a) {
        for (int b = 0; b < dims[1]; ++b) {
            for (int c = 0; c < dims[2]; ++c) {
                const size_t base = (size_t)a * strides[0] + (size_t)b * strides[1] + (size_t)c * strides[2];
                if (strides[3] == 1) {
                    memcpy(out, in + base * item, (size_t)dims[3] * item);
                    out += (size_t)dims[3] * item;
                    continue;
                }
                for (int d = 0; d < dims[3]; ++d) {
                    memcpy(out, in + (base + (size_t)d * strides[3]) * item, item);
                    out += item;
                }
            }
        }
    }
}

void fw_take3(int in_d1, int in_d2, int out_d0, int out_d1, int out_d2, const int32_t *t0, const int32_t *t1,
              const int32_t *t2, int inner_run, int element_size, const void *x, void *y)
{
    const unsigned char *in = (const unsigned char *)x;
    unsigned char *out = (unsigned char *)y;
    const size_t item = (size_t)element_size;
    for (int i = 0; i < out_d0; ++i) {
        for (int j = 0; j < out_d1; ++j) {
            const unsigned char *row = in + ((size_t)t0[i] * in_d1 + (size_t)t1[j]) * in_d2 * item;
            if (inner_run) {
                memcpy(out, row + (size_t)t2[0] * item, (size_t)out_d2 * item);
                out += (size_t)out_d2 * item;
                continue;
            }
            for (int k = 0; k < out_d2; ++k) {
                memcpy(out, row + (size_t)t2[k] * item, item);
                out += item;
            }
        }
    }
}

void fw_depth_to_space_nhwc(int in_h, int in_w, int out_c, int block, int dcr, int element_size, const void *x,
                            void *y)
{
    const unsigned char *in = (const unsigned char *)x;
    unsigned char *out = (unsigned char *)y;
    const size_t item = (size_t)element_size;
    const size_t in_pixel = (size_t)block * block * out_c * item;
    for (int iy = 0; iy < in_h; ++iy) {
        for (int dy = 0; dy < block; ++dy) {
            for (int ix = 0; ix < in_w; ++ix) {
                const unsigned char *pixel = in + ((size_t)iy * in_w + ix) * in_pixel;
                for (int dx = 0; dx < block; ++dx) {
                    const size_t sub = (size_t)dy * block + dx;
                    if (dcr) {
                        memcpy(out, pixel + sub * out_c * item, (size_t)out_c * item);
                        out += (size_t)out_c * item;
                        continue;
                    }
                    for (int c = 0; c < out_c; ++c) {
                        memcpy(out, pixel + ((size_t)c * block * block + sub) * item, item);
                        out += item;
                    }
                }
            }
        }
    }
}

void fw_embedding(int count, int rows, int depth, int element_size, const int32_t *index, const void *table, void *y)
{
    const unsigned char *source = (const unsigned char *)table;
    unsigned char *out = (unsigned char *)y;
    const size_t row_bytes = (size_t)depth * (size_t)element_size;
    for (int i = 0; i < count; ++i) {
        /* Row clamp(index + 1, 0, rows - 1), in 64 bits so that INT32_MAX + 1 does not wrap. */
        int64_t row = (int64_t)index[i] + 1;
        row = row < 0 ? 0 : row > rows - 1 ? rows - 1 : row;
        memcpy(out + (size_t)i * row_bytes, source + (size_t)row * row_bytes, row_bytes);
    }
}
