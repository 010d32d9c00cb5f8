/* Data movement for any element size: concat, constant pad (NHWC), 2-D transpose. */
#include <string.h>

#include "fwedge_rt.h"

void fw_concat(int count, int outer, const int *inner_sizes, const void *const *inputs, int element_size,
               void *y)
{
    int row = 0;
    for (int k = 0; k < count; ++k) {
        row += inner_sizes[k];
    }
    unsigned char *out = (unsigned char *)y;
    int offset = 0;
    for (int k = 0; k < count; ++k) {
        const size_t bytes = (size_t)inner_sizes[k] * element_size;
        const unsigned char *in = (const unsigned char *)inputs[k];
        for (int r = 0; r < outer; ++r) {
            memcpy(out + ((size_t)r * row + offset) * element_size, in + (size_t)r * bytes, bytes);
        }
        offset += inner_sizes[k];
    }
}

void fw_pad_nhwc(int in_h, int in_w, int in_c, int out_h, int out_w, int out_c, int pad_top, int pad_left,
                 int pad_channel, const void *value, int element_size, const void *x, void *y)
{
    unsigned char *out = (unsigned char *)y;
    const unsigned char *in = (const unsigned char *)x;
    const size_t total = (size_t)out_h * out_w * out_c;
    for (size_t i = 0; i < total; ++i) {
        memcpy(out + i * element_size, value, (size_t)element_size);
    }
    const size_t row_bytes = (size_t)in_c * element_size;
    for (int iy = 0; iy < in_h; ++iy) {
        for (int ix = 0; ix < in_w; ++ix) {
            const size_t o = (((size_t)(iy + pad_top) * out_w) + (ix + pad_left)) * out_c + pad_channel;
            memcpy(out + o * element_size, in + ((size_t)iy * in_w + ix) * row_bytes, row_bytes);
        }
    }
}

void fw_transpose2d(int a, int b, int element_size, const void *x, void *y)
{
    const unsigned char *in = (const unsigned char *)x;
    unsigned char *out = (unsigned char *)y;
    for (int i = 0; i < a; ++i) {
        for (int j = 0; j < b; ++j) {
            memcpy(out + ((size_t)j * a + i) * element_size, in + ((size_t)i * b + j) * element_size,
                   (size_t)element_size);
        }
    }
}

#ifdef FW_X86_DISPATCH
#include <cpuid.h>

/* 1 when the AVX-512 VNNI kernel variants can run: cpuid leaf 7 reports AVX-512 F, BW, VL and
 * VNNI, and XCR0 says the OS saves the SSE, AVX, opmask and 512-bit register state. Asked once;
 * a second thread asking at the same time computes the same answer. */
int fw_x86_vnni(void)
{
    static int known = -1;
    if (known < 0) {
        unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
        int ok = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 27)); /* OSXSAVE */
        if (ok) {
            unsigned int xcr0_low = 0, xcr0_high = 0;
            __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
            ok = (xcr0_low & 0xe6u) == 0xe6u;
        }
        if (ok && __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
            const unsigned int f = 1u << 16, bw = 1u << 30, vl = 1u << 31, vnni = 1u << 11;
            ok = (ebx & f) && (ebx & bw) && (ebx & vl) && (ecx & vnni);
        } else {
            ok = 0;
        }
        known = ok;
    }
    return known;
}
#endif
