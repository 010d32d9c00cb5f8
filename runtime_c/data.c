/* Data movement for any element size: concat, constant pad (NHWC), 2-D transpose, nearest resize (NHWC). */
#include <string.h>

#include "fwedge_rt.h"

#if defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
#include <arm_neon.h>
#define FW_DATA_NEON 1
#endif

/* n bytes from in to out (not overlapping). On aarch64 64 bytes per step in four registers: the
 * rows of a padded copy are a few hundred bytes to a few kilobytes, where a library memcpy moves
 * 16 bytes per step. */
static void copy_bytes(unsigned char *out, const unsigned char *in, size_t n)
{
#if defined(FW_DATA_NEON)
    for (; n >= 64; n -= 64, in += 64, out += 64) {
        vst1q_u8_x4(out, vld1q_u8_x4(in));
    }
    for (; n >= 16; n -= 16, in += 16, out += 16) {
        vst1q_u8(out, vld1q_u8(in));
    }
#endif
    memcpy(out, in, n);
}

/* n bytes of value at out, 64 per step on aarch64 (a padded copy's border is a few pixels). */
static void fill_bytes(unsigned char *out, unsigned char value, size_t n)
{
#if defined(FW_DATA_NEON)
    const uint8x16_t v = vdupq_n_u8(value);
    const uint8x16x4_t v4 = {{v, v, v, v}};
    for (; n >= 64; n -= 64, out += 64) {
        vst1q_u8_x4(out, v4);
    }
    for (; n >= 16; n -= 16, out += 16) {
        vst1q_u8(out, v);
    }
#endif
    memset(out, value, n);
}

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

/* count elements of element_size bytes at out, each the bytes at value: memset when every byte of
 * the value is the same (an int8 zero point, a float 0), else one element at a time. */
static void fill_elements(unsigned char *out, const unsigned char *value, int element_size, size_t count)
{
    int uniform = 1;
    for (int b = 1; b < element_size; ++b) {
        uniform &= value[b] == value[0];
    }
    if (uniform) {
        fill_bytes(out, value[0], count * (size_t)element_size);
        return;
    }
    for (size_t i = 0; i < count; ++i) {
        memcpy(out + i * element_size, value, (size_t)element_size);
    }
}

void fw_pad_nhwc(int in_h, int in_w, int in_c, int out_h, int out_w, int out_c, int pad_top, int pad_left,
                 int pad_channel, const void *value, int element_size, const void *x, void *y)
{
    unsigned char *out = (unsigned char *)y;
    const unsigned char *in = (const unsigned char *)x;
    const unsigned char *v = (const unsigned char *)value;
    const size_t pixel = (size_t)out_c * element_size, row_bytes = (size_t)in_c * element_size;
    if (pad_channel == 0 && in_c == out_c) {
        /* channels unpadded: an input row is one contiguous copy, the border is filled around it */
        const int right = out_w - in_w - pad_left;
        fill_elements(out, v, element_size, (size_t)pad_top * out_w * out_c);
        for (int iy = 0; iy < in_h; ++iy) {
            unsigned char *row = out + (size_t)(iy + pad_top) * out_w * pixel;
            fill_elements(row, v, element_size, (size_t)pad_left * out_c);
            copy_bytes(row + (size_t)pad_left * pixel, in + (size_t)iy * in_w * row_bytes, (size_t)in_w * row_bytes);
            fill_elements(row + (size_t)(pad_left + in_w) * pixel, v, element_size, (size_t)right * out_c);
        }
        const int bottom = out_h - in_h - pad_top;
        fill_elements(out + (size_t)(pad_top + in_h) * out_w * pixel, v, element_size, (size_t)bottom * out_w * out_c);
        return;
    }
    fill_elements(out, v, element_size, (size_t)out_h * out_w * out_c);
    for (int iy = 0; iy < in_h; ++iy) {
        for (int ix = 0; ix < in_w; ++ix) {
            const size_t o = (((size_t)(iy + pad_top) * out_w) + (ix + pad_left)) * out_c + pad_channel;
            memcpy(out + o * element_size, in + ((size_t)iy * in_w + ix) * row_bytes, row_bytes);
        }
    }
}

void fw_resize_nearest_nhwc(int in_w, int channels, int out_h, int out_w, const int32_t *rows, const int32_t *cols,
                            int element_size, const void *x, void *y)
{
    const unsigned char *in = (const unsigned char *)x;
    unsigned char *out = (unsigned char *)y;
    const size_t pixel = (size_t)channels * element_size;
    for (int oy = 0; oy < out_h; ++oy) {
        const unsigned char *row = in + (size_t)rows[oy] * in_w * pixel;
        for (int ox = 0; ox < out_w; ++ox) {
            memcpy(out, row + (size_t)cols[ox] * pixel, pixel);
            out += pixel;
        }
    }
}

/* y[j][i] = x[i][j] for elements of `size` bytes, a compile-time constant: the compiler turns
 * each memcpy into one load and one store (no call per element, no alignment assumed). */
#define FW_TRANSPOSE2D_FIXED(size)                                                             \
    do {                                                                                       \
        const unsigned char *in = (const unsigned char *)x;                                    \
        unsigned char *out = (unsigned char *)y;                                               \
        for (int i = 0; i < a; ++i) {                                                          \
            for (int j = 0; j < b; ++j) {                                                      \
                memcpy(out + ((size_t)j * a + i) * (size), in + ((size_t)i * b + j) * (size), (size)); \
            }                                                                                  \
        }                                                                                      \
    } while (0)

void fw_transpose2d(int a, int b, int element_size, const void *x, void *y)
{
    if (element_size == 1) { /* int8 */
        FW_TRANSPOSE2D_FIXED(1);
        return;
    }
    if (element_size == 4) { /* float */
        FW_TRANSPOSE2D_FIXED(4);
        return;
    }
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

/* The widest kernel variant this CPU runs (fwedge_rt.h), from cpuid and XCR0: FW_X86_AVX2 needs
 * every x86-64-v3 extension the compiler may use there (AVX, AVX2, FMA, F16C, MOVBE, BMI1,
 * BMI2, LZCNT) and the OS saving the SSE and AVX state; FW_X86_AVX512_VNNI also AVX-512 F, BW,
 * CD, DQ, VL and VNNI with the opmask and 512-bit state saved. Asked once; a second thread
 * asking at the same time computes the same answer. */
int fw_x86_level(void)
{
    static int known = -1;
    if (known < 0) {
        unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0, xcr0 = 0, high = 0;
        int level = FW_X86_BASELINE;
        const unsigned int fma = 1u << 12, movbe = 1u << 22, osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
        if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & osxsave)) {
            const int v3_leaf1 = (ecx & fma) && (ecx & movbe) && (ecx & avx) && (ecx & f16c);
            __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(high) : "c"(0));
            unsigned int lzcnt = 0;
            if (__get_cpuid(0x80000001u, &eax, &ebx, &ecx, &edx)) {
                lzcnt = ecx & (1u << 5);
            }
            if (v3_leaf1 && lzcnt && (xcr0 & 0x6u) == 0x6u && __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
                const unsigned int bmi1 = 1u << 3, avx2 = 1u << 5, bmi2 = 1u << 8;
                const unsigned int f = 1u << 16, dq = 1u << 17, cd = 1u << 28, bw = 1u << 30, vl = 1u << 31;
                const unsigned int vnni = 1u << 11;
                if ((ebx & bmi1) && (ebx & avx2) && (ebx & bmi2)) {
                    level = FW_X86_AVX2;
                    if ((xcr0 & 0xe6u) == 0xe6u && (ebx & f) && (ebx & dq) && (ebx & cd) && (ebx & bw) && (ebx & vl) &&
                        (ecx & vnni)) {
                        level = FW_X86_AVX512_VNNI;
                    }
                }
            }
        }
        known = level;
    }
    return known;
}

/* "baseline", "avx2" or "avx512-vnni". */
const char *fw_x86_level_name(int level)
{
    return level == FW_X86_AVX512_VNNI ? "avx512-vnni" : level == FW_X86_AVX2 ? "avx2" : "baseline";
}

const char *fw_kernels_name(void)
{
    return fw_x86_level_name(fw_x86_level());
}
#endif

#ifdef FW_ARM_DISPATCH
#include <sys/auxv.h>

/* Whether the CPU and the OS run ARMv8.2 dotprod (sdot/udot): HWCAP_ASIMDDP, bit 20 of the
 * kernel's AT_HWCAP (spelled as a number: older libc headers lack the name). Asked once; a
 * second thread asking at the same time computes the same answer. */
int fw_arm_has_dotprod(void)
{
    static int known = -1;
    if (known < 0) {
        known = (getauxval(AT_HWCAP) & (1ul << 20)) != 0;
    }
    return known;
}

/* "dotprod" or "baseline". */
const char *fw_kernels_name(void)
{
    return fw_arm_has_dotprod() ? "dotprod" : "baseline";
}
#endif

#ifdef FW_RISCV_DISPATCH
#ifdef __linux__
#include <sys/auxv.h>
#endif

/* FW_RISCV_V when the kernel reports the V extension: bit 'V' - 'A' of AT_HWCAP. Linux sets it
 * (6.5 and later) only when the CPU has V and user space may use it (the vector state is
 * saved; abi.riscv_v_default_allow), and qemu-riscv64 7.2 sets it for -cpu rv64,v=true
 * (checked: hwcap 0x20112d with v=true, 0x112d without). So the bit alone decides: no probe
 * that runs a vsetvli under a SIGILL handler, which would have to take over the
 * application's handler. Without Linux (no getauxval) the baseline runs. Asked once; a
 * second thread asking at the same time computes the same answer. */
int fw_riscv_level(void)
{
    static int known = -1;
    if (known < 0) {
        int level = FW_RISCV_BASELINE;
#ifdef __linux__
        if (getauxval(AT_HWCAP) & (1ul << ('V' - 'A'))) {
            level = FW_RISCV_V;
        }
#endif
        known = level;
    }
    return known;
}

/* "baseline" or "rvv". */
const char *fw_riscv_level_name(int level)
{
    return level == FW_RISCV_V ? "rvv" : "baseline";
}

const char *fw_kernels_name(void)
{
    return fw_riscv_level_name(fw_riscv_level());
}
#endif
