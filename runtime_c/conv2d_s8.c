/* int8 2-D convolution (any stride, padding, dilation, groups), NHWC input, TFLite requantization.
 *
 * groups == 1 (every conv of a plain CNN, 1x1 pointwise convs included) runs as a small GEMM
 * without an im2col buffer: a tile of FW_TILE_PIXELS output pixels times FW_CONV_BLOCK output
 * channels is accumulated in registers. Per tile, each pixel's receptive field (its input
 * pixel for a 1x1 conv) is gathered once and stored in groups of G = FW_CONV_K_GROUP values,
 * [k / G][pixel][G]; the weights were packed at export time (fw_pack_conv2d_s8_weights, the
 * same layout the code generator writes) as [out_c / 8][k / G][8][G], so one load holds G
 * filter taps of eight output channels. The inner step multiplies the G window values of one
 * pixel with those of eight channels and adds the G products into one int32 lane:
 * - G = 2, int16 x - zero_point: x86's pmaddwd (SSE2 intrinsics when the compiler defines
 *   __SSE2__; AVX2 builds hold the weights as int16, fw_conv_weight, one 32-byte load per step
 *   and no vpmovsxbw), smlal on Arm from the portable loop;
 * - G = 4 in VNNI builds: u8 x + 128 against int8 weights with vpdpbusd (gather_quads explains
 *   the offset), on 512-bit registers (four blocks per step) when the build has AVX-512.
 * Filters longer than FW_K_CHUNK values are gathered and accumulated in chunks, so the stack
 * stays bounded.
 *
 * groups > 1 (grouped, not depthwise) keeps the plain OHWI layout and a per-tap loop. */
#include <string.h>

#include "fwedge_rt.h"


/* Channels whose requantization constants conv2d_s8_packed keeps in a table on the stack
 * (more: per block). */
#define FW_REQUANT_TABLE 256
/* A multiple of 4: a chunk boundary never splits a pair or a quad. FW_TILE_PIXELS * FW_K_CHUNK
 * tile values on the stack. */
#define FW_K_CHUNK 576

/* Values of the gathered tile: u8 quads in VNNI builds (see gather_quads), raw int8 quads in
 * aarch64 NEON builds (conv2d_s8_neon.h), int16 pairs x - zero_point otherwise. */
#ifdef FW_CONV_VNNI
typedef uint8_t fw_tile_value;
#elif defined(FW_CONV_NEON)
typedef int8_t fw_tile_value;
#else
typedef int16_t fw_tile_value;
#endif

size_t fw_conv2d_s8_packed_size(const fw_conv_params *p)
{
    const size_t filter = (size_t)p->kernel_h * p->kernel_w * (p->in_c / p->groups);
    if (p->groups != 1) {
        return (size_t)p->out_c * filter;
    }
    const size_t padded = (filter + FW_CONV_K_GROUP - 1) / FW_CONV_K_GROUP * FW_CONV_K_GROUP;
    return (size_t)((p->out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK) * padded * FW_CONV_BLOCK;
}

void fw_pack_conv2d_s8_weights(const fw_conv_params *p, const int8_t *ohwi, fw_conv_weight *packed)
{
    const int filter = p->kernel_h * p->kernel_w * (p->in_c / p->groups);
    if (p->groups != 1) {
        for (size_t i = 0; i < (size_t)p->out_c * filter; ++i) {
            packed[i] = ohwi[i];
        }
        return;
    }
    const int group = FW_CONV_K_GROUP;
    const int padded = (filter + group - 1) / group * group;
    const int blocks = (p->out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK;
    for (int b = 0; b < blocks; ++b) {
        for (int k = 0; k < padded; ++k) {
            for (int j = 0; j < FW_CONV_BLOCK; ++j) {
                const int oc = b * FW_CONV_BLOCK + j;
                const int8_t v = oc < p->out_c && k < filter ? ohwi[(size_t)oc * filter + k] : 0;
                packed[((size_t)b * padded + k / group * group) * FW_CONV_BLOCK + group * j + k % group] = v;
            }
        }
    }
}

/* Window values [k0, k0 + count) of output pixel `pixel` (OHWI order: (ky, kx, channel)) as
 * x - zero_point, padding 0. */
static void gather_window(const fw_conv_params *p, const int8_t *x, int pixel, int k0, int count, int16_t *out)
{
    const int oy = pixel / p->out_w, ox = pixel - (pixel / p->out_w) * p->out_w;
    const int in_c = p->in_c;
    const int32_t zero_point = p->input_zero_point;
    int tap = k0 / in_c, c = k0 - tap * in_c, done = 0;
    while (done < count) {
        const int ky = tap / p->kernel_w, kx = tap - (tap / p->kernel_w) * p->kernel_w;
        const int iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
        const int ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
        const int n = in_c - c < count - done ? in_c - c : count - done;
        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
            for (int i = 0; i < n; ++i) {
                out[done + i] = 0;
            }
        } else {
            const int8_t *xp = x + ((size_t)iy * p->in_w + ix) * in_c + c;
            for (int i = 0; i < n; ++i) {
                out[done + i] = (int16_t)(xp[i] - zero_point);
            }
        }
        done += n;
        c = 0;
        ++tap;
    }
}

#if !defined(FW_CONV_VNNI) && !defined(FW_CONV_NEON)
/* The whole window of output pixel `pixel` written straight into its column of the tile
 * ([k / 2][FW_TILE_PIXELS][2], column `t`), by kernel rows and columns: no divisions per tap and
 * no second interleaving pass, which dominate for one or a few input channels. */
static void gather_window_full(const fw_conv_params *p, const int8_t *x, int pixel, int t, int16_t *tile)
{
    const int oy = pixel / p->out_w, ox = pixel - (pixel / p->out_w) * p->out_w;
    const int in_c = p->in_c, in_h = p->in_h, in_w = p->in_w;
    const int16_t zero_point = (int16_t)p->input_zero_point;
    const int y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
    int16_t *column = tile + 2 * t;
    int k = 0;
    if (in_c == 1 && y0 >= 0 && y0 + (p->kernel_h - 1) * p->dilation_h < in_h && x0 >= 0 &&
        x0 + (p->kernel_w - 1) * p->dilation_w < in_w) {
        /* One channel, window inside the image (all but the border pixels): no checks per tap. */
        for (int ky = 0; ky < p->kernel_h; ++ky) {
            const int8_t *row = x + (size_t)(y0 + ky * p->dilation_h) * in_w + x0;
            for (int kx = 0; kx < p->kernel_w; ++kx, ++k) {
                column[(k >> 1) * 2 * FW_TILE_PIXELS + (k & 1)] = (int16_t)(row[kx * p->dilation_w] - zero_point);
            }
        }
        if (k & 1) {
            column[(k >> 1) * 2 * FW_TILE_PIXELS + 1] = 0;
        }
        return;
    }
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        const int iy = y0 + ky * p->dilation_h;
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            const int ix = x0 + kx * p->dilation_w;
            const int inside = iy >= 0 && iy < in_h && ix >= 0 && ix < in_w;
            const int8_t *xp = x + (inside ? ((size_t)iy * in_w + ix) * in_c : 0);
            if (in_c == 1) { /* a first layer on a grey image: no channel loop to set up */
                column[(k >> 1) * 2 * FW_TILE_PIXELS + (k & 1)] = inside ? (int16_t)(xp[0] - zero_point) : 0;
                ++k;
                continue;
            }
            for (int c = 0; c < in_c; ++c, ++k) {
                column[(k >> 1) * 2 * FW_TILE_PIXELS + (k & 1)] = inside ? (int16_t)(xp[c] - zero_point) : 0;
            }
        }
    }
    if (k & 1) {
        column[(k >> 1) * 2 * FW_TILE_PIXELS + 1] = 0;
    }
}

/* Gather window values [k0, k0 + count) of pixels [pixel0, pixel0 + pixels) into
 * tile[k / 2][FW_TILE_PIXELS][2] (missing pixels and the odd tail are 0). */
static void gather_tile(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int k0, int count,
                        int16_t *line, int16_t *tile)
{
    const int pairs = (count + 1) / 2;
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        if (t < pixels && k0 == 0 && count == p->kernel_h * p->kernel_w * p->in_c) {
            gather_window_full(p, x, pixel0 + t, t, tile);
            continue;
        }
        if (t < pixels) {
            gather_window(p, x, pixel0 + t, k0, count, line);
        } else {
            memset(line, 0, (size_t)count * sizeof *line);
        }
        line[count] = 0;
        for (int i = 0; i < pairs; ++i) {
            tile[(i * FW_TILE_PIXELS + t) * 2] = line[2 * i];
            tile[(i * FW_TILE_PIXELS + t) * 2 + 1] = line[2 * i + 1];
        }
    }
}

#endif /* !FW_CONV_VNNI && !FW_CONV_NEON */

#if (defined(__SSE2__) && !defined(FW_NO_INTRINSICS)) || defined(FW_CONV_NEON)
/* Top-left input coordinates (y0, x0) of the windows of the tile's pixels (missing pixels:
 * pixel0's). */
static void tile_origins(const fw_conv_params *p, int pixel0, int pixels, int *y0, int *x0)
{
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        const int pixel = pixel0 + (t < pixels ? t : 0);
        const int oy = pixel / p->out_w, ox = pixel - oy * p->out_w;
        y0[t] = oy * p->stride_h - p->pad_top;
        x0[t] = ox * p->stride_w - p->pad_left;
    }
}

/* The input pixel (its in_c values) under tap (ky, kx) of each of the tile's windows; NULL in
 * the padding and for missing pixels. */
static void tap_bases(const fw_conv_params *p, const int8_t *x, const int *y0, const int *x0, int pixels, int ky,
                      int kx, const int8_t **base)
{
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        const int iy = y0[t] + ky * p->dilation_h, ix = x0[t] + kx * p->dilation_w;
        base[t] = t < pixels && iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w
                      ? x + ((size_t)iy * p->in_w + ix) * p->in_c
                      : NULL;
    }
}

/* The rows of the input patch under a one-channel tile (a first layer on a grey image) of four
 * pixels of one output row, stride 1 along x: *base is the first window's top-left value and
 * rows are *row_step apart, straight from x when the windows are inside the image, else in a
 * copy (`patch`, FW_ONE_CHANNEL_PATCH bytes) with the zero point in the padding (x - zp = 0
 * there). Returns 0 for any other tile. */
#define FW_ONE_CHANNEL_PATCH 256
static int one_channel_rows(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int8_t *patch,
                            const int8_t **base, ptrdiff_t *row_step)
{
    if (p->in_c != 1 || p->stride_w != 1 || p->dilation_w != 1 || pixels != FW_TILE_PIXELS) {
        return 0;
    }
    const int oy = pixel0 / p->out_w, ox = pixel0 - oy * p->out_w;
    const int y0 = oy * p->stride_h - p->pad_top, x0 = ox - p->pad_left;
    const int span = FW_TILE_PIXELS - 1 + p->kernel_w;
    if (ox + FW_TILE_PIXELS > p->out_w) {
        return 0;
    }
    *base = x + (ptrdiff_t)y0 * p->in_w + x0;
    *row_step = (ptrdiff_t)p->dilation_h * p->in_w;
    if (y0 < 0 || y0 + (p->kernel_h - 1) * p->dilation_h >= p->in_h || x0 < 0 || x0 + span - 1 >= p->in_w) {
        if (p->kernel_h * span > FW_ONE_CHANNEL_PATCH) {
            return 0;
        }
        for (int ky = 0; ky < p->kernel_h; ++ky) {
            const int iy = y0 + ky * p->dilation_h;
            for (int j = 0; j < span; ++j) {
                const int ix = x0 + j;
                patch[ky * span + j] = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w
                                           ? x[(size_t)iy * p->in_w + ix]
                                           : (int8_t)p->input_zero_point;
            }
        }
        *base = patch;
        *row_step = span;
    }
    return 1;
}
#endif

#ifdef FW_CONV_NEON
#include "requant_neon.h"
#include "conv2d_s8_neon.h"
#endif

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
/* Four input bytes at tap k of a one_channel_rows patch: tap k of the tile's four pixels. */
static inline __m128i one_channel_tap(const fw_conv_params *p, const int8_t *base, ptrdiff_t row_step, int k)
{
    const int ky = k / p->kernel_w, kx = k - ky * p->kernel_w;
    int32_t word;
    memcpy(&word, base + ky * row_step + kx, 4);
    return _mm_cvtsi32_si128(word);
}
#endif

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS) && !defined(FW_CONV_VNNI)
/* gather_tile of the whole filter for in_c % 8 == 0, eight channels of four pixels at a time:
 * widen to int16, subtract the zero point, and transpose the four pixels' 4 x 4 int32 pairs
 * into the [k / 2][pixel][2] order with unpack instructions. */
static void gather_tile_sse2(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int16_t *tile)
{
    const int in_c = p->in_c;
    const __m128i zero_point = _mm_set1_epi16((int16_t)p->input_zero_point);
    const int8_t *base[FW_TILE_PIXELS];
    int y0[FW_TILE_PIXELS], x0[FW_TILE_PIXELS];
    tile_origins(p, pixel0, pixels, y0, x0);
    __m128i *out = (__m128i *)tile;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            tap_bases(p, x, y0, x0, pixels, ky, kx, base);
            for (int c = 0; c < in_c; c += 8) {
                __m128i v[FW_TILE_PIXELS];
                for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                    if (base[t]) {
                        const __m128i b = _mm_loadl_epi64((const __m128i *)(base[t] + c));
                        v[t] = _mm_sub_epi16(_mm_srai_epi16(_mm_unpacklo_epi8(b, b), 8), zero_point);
                    } else {
                        v[t] = _mm_setzero_si128();
                    }
                }
                fw_transpose4(&v[0], &v[1], &v[2], &v[3]);
                _mm_storeu_si128(out + 0, v[0]);
                _mm_storeu_si128(out + 1, v[1]);
                _mm_storeu_si128(out + 2, v[2]);
                _mm_storeu_si128(out + 3, v[3]);
                out += 4;
            }
        }
    }
}
#endif

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
/* One input channel, stride 1 along x, four pixels of one output row (one_channel_rows): tap k
 * of the four pixels is four consecutive input bytes. Pairs: two taps of the whole tile are two
 * 4-byte loads, interleaved, widened and stored as one [pixel][2] row of the tile. Quads (VNNI):
 * four loads, transposed bytewise into one [pixel][4] row with two rounds of unpacks. Returns 0
 * (nothing written) for any other tile. */
static int gather_tile_one_channel(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels,
                                   fw_tile_value *tile)
{
    int8_t patch[FW_ONE_CHANNEL_PATCH];
    const int8_t *base;
    ptrdiff_t row_step;
    if (!one_channel_rows(p, x, pixel0, pixels, patch, &base, &row_step)) {
        return 0;
    }
    const int taps = p->kernel_h * p->kernel_w;
#ifdef FW_CONV_VNNI
    const __m128i flip = _mm_set1_epi8((char)0x80);
    for (int k = 0; k < taps; k += 4) {
        __m128i v[4];
        for (int i = 0; i < 4; ++i) {
            /* past the last tap the weights are 0: any value will do */
            v[i] = k + i < taps ? one_channel_tap(p, base, row_step, k + i) : _mm_setzero_si128();
        }
        const __m128i ab = _mm_unpacklo_epi8(v[0], v[1]), cd = _mm_unpacklo_epi8(v[2], v[3]);
        _mm_storeu_si128((__m128i *)(tile + 4 * k), _mm_xor_si128(_mm_unpacklo_epi16(ab, cd), flip));
    }
#else
    const __m128i zero_point = _mm_set1_epi16((int16_t)p->input_zero_point);
    const __m128i padding = _mm_set1_epi8((char)p->input_zero_point);
    for (int k = 0; k < taps; k += 2) {
        const __m128i a = one_channel_tap(p, base, row_step, k);
        const __m128i b = k + 1 < taps ? one_channel_tap(p, base, row_step, k + 1) : padding;
        const __m128i ab = _mm_unpacklo_epi8(a, b);
        _mm_storeu_si128((__m128i *)(tile + k * FW_TILE_PIXELS),
                         _mm_sub_epi16(_mm_srai_epi16(_mm_unpacklo_epi8(ab, ab), 8), zero_point));
    }
#endif
    return 1;
}
#endif

#ifdef FW_RVV
/* gather_tile of the whole filter for an even in_c, pixel by pixel: a segment load splits each
 * tap's in_c values into the even and the odd channels, each widened to int16 minus the zero
 * point (vwsub.vx), and a strided segment store writes them back as pairs into the pixel's
 * column of the [k / 2][pixel][2] tile (2-byte aligned stores: the tile is an int16 array).
 * Pairs never straddle two taps since in_c is even. vl pairs per pass. */
static void gather_tile_rvv(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int16_t *tile)
{
    const int pairs = p->in_c / 2;
    const int8_t zero_point = (int8_t)p->input_zero_point;
    const ptrdiff_t pair_stride = 2 * FW_TILE_PIXELS * (ptrdiff_t)sizeof *tile;
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        const int pixel = pixel0 + (t < pixels ? t : 0);
        const int oy = pixel / p->out_w, ox = pixel - oy * p->out_w;
        const int y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
        int16_t *column = tile + 2 * t;
        for (int ky = 0; ky < p->kernel_h; ++ky) {
            const int iy = y0 + ky * p->dilation_h;
            for (int kx = 0; kx < p->kernel_w; ++kx) {
                const int ix = x0 + kx * p->dilation_w;
                const int inside = t < pixels && iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
                const int8_t *xp = x + (inside ? ((size_t)iy * p->in_w + ix) * p->in_c : 0);
                for (int c = 0; c < pairs;) {
                    const size_t vl = __riscv_vsetvl_e16m1((size_t)(pairs - c));
                    vint16m1_t even = __riscv_vmv_v_x_i16m1(0, vl), odd = even;
                    if (inside) {
                        const vint8mf2x2_t v = __riscv_vlseg2e8_v_i8mf2x2(xp + 2 * c, vl);
                        even = __riscv_vwsub_vx_i16m1(__riscv_vget_v_i8mf2x2_i8mf2(v, 0), zero_point, vl);
                        odd = __riscv_vwsub_vx_i16m1(__riscv_vget_v_i8mf2x2_i8mf2(v, 1), zero_point, vl);
                    }
                    __riscv_vssseg2e16_v_i16m1x2(column + (size_t)c * 2 * FW_TILE_PIXELS, pair_stride,
                                                 __riscv_vcreate_v_i16m1x2(even, odd), vl);
                    c += (int)vl;
                }
                column += (size_t)pairs * 2 * FW_TILE_PIXELS;
            }
        }
    }
}
#endif

#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
/* The four pixels' eight-channel accumulators, pixel after pixel. */
static inline void store_tile(int32_t *acc, __m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 8), a1);
    _mm256_storeu_si256((__m256i *)(acc + 16), a2);
    _mm256_storeu_si256((__m256i *)(acc + 24), a3);
}
#endif

#ifdef FW_CONV_VNNI
/* VNNI builds. vpdpbusd multiplies unsigned by signed bytes, so the tile holds u = x + 128
 * (x ^ 0x80), four consecutive filter values of a pixel per int32 lane: [k / 4][pixel][4]
 * uint8. Padding is u = zp + 128, the value whose x - zp is 0. The GEMM then sums u * w, and
 * sum (x - zp) * w = sum u * w - (128 + zp) * sum w: the second term, per output channel, is
 * taken off the bias once per call (vnni_bias). All of it wraps in int32, so the result is
 * the exact sum of the other builds. */

/* Window values [k0, k0 + count) of the tile's pixels as u (gather_window, then + 128 + zp),
 * zero-filled to whole quads: filters longer than FW_K_CHUNK. */
static void gather_quads(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int k0, int count,
                         int16_t *line, uint8_t *tile)
{
    const int padded = (count + 3) / 4 * 4;
    const int offset = p->input_zero_point + 128;
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        if (t < pixels) {
            gather_window(p, x, pixel0 + t, k0, count, line);
        } else {
            memset(line, 0, (size_t)count * sizeof *line);
        }
        for (int i = count; i < padded; ++i) {
            line[i] = 0;
        }
        for (int i = 0; i < padded; ++i) {
            tile[(i >> 2) * 4 * FW_TILE_PIXELS + 4 * t + (i & 3)] = (uint8_t)(line[i] + offset);
        }
    }
}

/* The whole filter of the tile's pixels as u, by kernel rows and columns (any in_c). */
static void gather_quads_full(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, uint8_t *tile)
{
    const int filter = p->kernel_h * p->kernel_w * p->in_c, padded = (filter + 3) / 4 * 4;
    const uint8_t padding = (uint8_t)(p->input_zero_point + 128);
    int y0[FW_TILE_PIXELS], x0[FW_TILE_PIXELS];
    const int8_t *base[FW_TILE_PIXELS];
    tile_origins(p, pixel0, pixels, y0, x0);
    int k = 0;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            tap_bases(p, x, y0, x0, pixels, ky, kx, base);
            for (int c = 0; c < p->in_c; ++c, ++k) {
                uint8_t *quad = tile + (k >> 2) * 4 * FW_TILE_PIXELS + (k & 3);
                for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                    quad[4 * t] = base[t] ? (uint8_t)(base[t][c] + 128) : padding;
                }
            }
        }
    }
    for (; k < padded; ++k) {
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            tile[(k >> 2) * 4 * FW_TILE_PIXELS + 4 * t + (k & 3)] = 0;
        }
    }
}

/* gather_quads_full for in_c % 8 == 0: eight channels (two quads) of the four pixels per step,
 * interleaved into the two [pixel][4] rows with unpack instructions. */
static void gather_quads_c8(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, uint8_t *tile)
{
    const __m128i flip = _mm_set1_epi8((char)0x80);
    const __m128i padding = _mm_set1_epi8((char)p->input_zero_point);
    int y0[FW_TILE_PIXELS], x0[FW_TILE_PIXELS];
    const int8_t *base[FW_TILE_PIXELS];
    tile_origins(p, pixel0, pixels, y0, x0);
    __m128i *out = (__m128i *)tile;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            tap_bases(p, x, y0, x0, pixels, ky, kx, base);
            for (int c = 0; c < p->in_c; c += 8) {
                __m128i v[FW_TILE_PIXELS];
                for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                    v[t] = base[t] ? _mm_loadl_epi64((const __m128i *)(base[t] + c)) : padding;
                }
                const __m128i lo = _mm_unpacklo_epi32(v[0], v[1]), hi = _mm_unpacklo_epi32(v[2], v[3]);
                _mm_storeu_si128(out, _mm_xor_si128(_mm_unpacklo_epi64(lo, hi), flip));
                _mm_storeu_si128(out + 1, _mm_xor_si128(_mm_unpackhi_epi64(lo, hi), flip));
                out += 2;
            }
        }
    }
}

/* acc += the four u8 x s8 products of every int32 lane of u and w. */
static inline __m256i dot_quads(__m256i acc, __m256i u, __m256i w)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, w);
#else
    return _mm256_dpbusd_avx_epi32(acc, u, w);
#endif
}

/* biases[j] -= (128 + zp) * (sum of the weights of channel j), for the `blocks` blocks at w
 * (`quads` quads each): the u offset of the tile, off the bias once per call. */
static void vnni_bias(const fw_conv_params *p, const fw_conv_weight *w, int quads, int blocks, int32_t *biases)
{
    const __m256i ones = _mm256_set1_epi8(1);
    const __m256i offset = _mm256_set1_epi32(128 + p->input_zero_point);
    for (int b = 0; b < blocks; ++b) {
        __m256i sum = _mm256_setzero_si256();
        for (int q = 0; q < quads; ++q) {
            sum = dot_quads(sum, ones, _mm256_loadu_si256((const __m256i *)(w + ((size_t)b * quads + q) * 32)));
        }
        __m256i *bias = (__m256i *)(biases + b * FW_CONV_BLOCK);
        _mm256_storeu_si256(bias, _mm256_sub_epi32(_mm256_loadu_si256(bias), _mm256_mullo_epi32(sum, offset)));
    }
}

#ifdef FW_CONV_VNNI_512
/* Quad steps of two neighbouring blocks as one 512-bit register (sixteen channels): vpdpbusd on
 * 512 bits costs what it costs on 256 on the hosts measured, so each does twice the work. */
static inline __m512i two_blocks(const fw_conv_weight *w0, const fw_conv_weight *w1)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)w0)),
                              _mm256_loadu_si256((const __m256i *)w1), 1);
}

/* Quad q of pixel t of the tile step at xv, broadcast to all sixteen lanes. */
static inline __m512i pixel_quad16(const uint8_t *xv, int t)
{
    int32_t v;
    memcpy(&v, xv + 4 * t, 4);
    return _mm512_set1_epi32(v);
}

/* The sixteen-channel accumulator of pixel t as its two blocks' rows. */
static inline void store_two_blocks(int32_t *acc0, int32_t *acc1, int t, __m512i a)
{
    _mm256_storeu_si256((__m256i *)(acc0 + t * FW_CONV_BLOCK), _mm512_castsi512_si256(a));
    _mm256_storeu_si256((__m256i *)(acc1 + t * FW_CONV_BLOCK), _mm512_extracti64x4_epi64(a, 1));
}

/* tile_gemm of four neighbouring blocks (w, `stride` elements apart) into acc[0..3]: two
 * 512-bit registers of weights per step, eight accumulators. */
static void tile_gemm4_512(int quads, const uint8_t *tile, const fw_conv_weight *w, size_t stride,
                           int32_t (*acc)[FW_TILE_PIXELS * FW_CONV_BLOCK])
{
    __m512i a[FW_TILE_PIXELS], b[FW_TILE_PIXELS]; /* fully unrolled by the compiler: registers */
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        a[t] = b[t] = _mm512_setzero_si512();
    }
    for (int i = 0; i < quads; ++i) {
        const uint8_t *xv = tile + i * 4 * FW_TILE_PIXELS;
        const fw_conv_weight *wi = w + i * 4 * FW_CONV_BLOCK;
        const __m512i v = two_blocks(wi, wi + stride), u = two_blocks(wi + 2 * stride, wi + 3 * stride);
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const __m512i y = pixel_quad16(xv, t);
            a[t] = _mm512_dpbusd_epi32(a[t], y, v);
            b[t] = _mm512_dpbusd_epi32(b[t], y, u);
        }
    }
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        store_two_blocks(acc[0], acc[1], t, a[t]);
        store_two_blocks(acc[2], acc[3], t, b[t]);
    }
}
#endif

#endif /* FW_CONV_VNNI */

#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
/* One tile GEMM step of pixel t at xv (its FW_CONV_K_GROUP tile values, 4 bytes: an int16 pair
 * or a u8 quad), broadcast to all eight lanes. */
static inline __m256i pixel_step(const fw_tile_value *xv, int t)
{
    int32_t v;
    memcpy(&v, xv + FW_CONV_K_GROUP * t, 4);
    return _mm256_set1_epi32(v);
}

/* acc + the step's products of x and w per int32 lane: vpdpbusd (u8 quads) in VNNI builds,
 * vpmaddwd + vpaddd (int16 pairs) otherwise. (Product first, then the accumulator: gcc then
 * adds into the accumulator's register instead of copying every sum back.) */
static inline __m256i step_weights(const fw_conv_weight *w)
{
    /* One tile GEMM step of eight channels' weights: int8 quads (VNNI) or int16 pairs, 32 bytes;
     * int8 pairs (an x86-64 dispatch build's AVX2 variant) widened from 16. */
#if defined(FW_CONV_VNNI) || defined(FW_CONV_WEIGHT_INT16)
    return _mm256_loadu_si256((const __m256i *)w);
#else
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
#endif
}

static inline __m256i step_products(__m256i acc, __m256i x, __m256i w)
{
#ifdef FW_CONV_VNNI
    return dot_quads(acc, x, w);
#else
    return _mm256_add_epi32(_mm256_madd_epi16(x, w), acc);
#endif
}
#endif

/* acc[t * 8 + j] = sum over the `steps` steps i of tile[i][t][e] * w[i][j][e], e < FW_CONV_K_GROUP.
 * (Stores, not accumulates: adding to acc in memory after the loop makes gcc 12 copy every
 * register accumulator on each step.) */
static void tile_gemm(int steps, const fw_tile_value *tile, const fw_conv_weight *w, int32_t *acc)
{
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
    /* 256-bit: one register holds one step of all eight channels (int16 pairs or int8 quads),
     * one accumulator per pixel, the pixel's step broadcast with vpbroadcastd. (AVX-512 VNNI's
     * vpdpwssd on int16 pairs was not faster than vpmaddwd + vpaddd on a Zen 4 host; its
     * vpdpbusd on u8 quads is, twice the products per instruction.) */
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < steps; ++i) {
        const fw_tile_value *xv = tile + i * FW_CONV_K_GROUP * FW_TILE_PIXELS;
        const __m256i wv = step_weights(w + i * FW_CONV_K_GROUP * FW_CONV_BLOCK);
        a0 = step_products(a0, pixel_step(xv, 0), wv);
        a1 = step_products(a1, pixel_step(xv, 1), wv);
        a2 = step_products(a2, pixel_step(xv, 2), wv);
        a3 = step_products(a3, pixel_step(xv, 3), wv);
    }
    store_tile(acc, a0, a1, a2, a3);
#elif defined(FW_CONV_NEON)
    tile_gemm_neon(steps, tile, w, acc);
#elif defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
    __m128i a00 = _mm_setzero_si128(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const __m128i zero = _mm_setzero_si128();
    for (int i = 0; i < steps; ++i) {
        const __m128i xv = _mm_loadu_si128((const __m128i *)(tile + i * 2 * FW_TILE_PIXELS));
        const __m128i w8 = _mm_loadu_si128((const __m128i *)(w + i * 2 * FW_CONV_BLOCK));
        const __m128i sign = _mm_cmpgt_epi8(zero, w8);
        const __m128i wlo = _mm_unpacklo_epi8(w8, sign); /* channels 0..3, two taps each, int16 */
        const __m128i whi = _mm_unpackhi_epi8(w8, sign); /* channels 4..7 */
        /* Product first, then the accumulator: gcc then adds into the accumulator's register
         * instead of copying every sum back (8 fewer moves per step). */
        a00 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0x00), wlo), a00);
        a01 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0x00), whi), a01);
        a10 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0x55), wlo), a10);
        a11 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0x55), whi), a11);
        a20 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0xaa), wlo), a20);
        a21 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0xaa), whi), a21);
        a30 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0xff), wlo), a30);
        a31 = _mm_add_epi32(_mm_madd_epi16(_mm_shuffle_epi32(xv, 0xff), whi), a31);
    }
    __m128i *out = (__m128i *)acc;
    _mm_storeu_si128(out + 0, a00);
    _mm_storeu_si128(out + 1, a01);
    _mm_storeu_si128(out + 2, a10);
    _mm_storeu_si128(out + 3, a11);
    _mm_storeu_si128(out + 4, a20);
    _mm_storeu_si128(out + 5, a21);
    _mm_storeu_si128(out + 6, a30);
    _mm_storeu_si128(out + 7, a31);
#elif defined(FW_RVV)
    /* RVV: a segment load splits a step's eight channel pairs into the even and the odd taps,
     * each widened to int16; every pixel's two values multiply them as scalars into one int32
     * vector per pixel (vwmacc.vx). vl channels per pass: every V CPU (VLEN >= 128) holds all
     * eight in e32m2, so one pass. */
    for (int j0 = 0; j0 < FW_CONV_BLOCK;) {
        const size_t vl = __riscv_vsetvl_e32m2((size_t)(FW_CONV_BLOCK - j0));
        vint32m2_t a0 = __riscv_vmv_v_x_i32m2(0, vl), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < steps; ++i) {
            const int16_t *xv = tile + i * 2 * FW_TILE_PIXELS;
            const vint8mf2x2_t pairs = __riscv_vlseg2e8_v_i8mf2x2(w + i * 2 * FW_CONV_BLOCK + 2 * j0, vl);
            const vint16m1_t even = __riscv_vsext_vf2_i16m1(__riscv_vget_v_i8mf2x2_i8mf2(pairs, 0), vl);
            const vint16m1_t odd = __riscv_vsext_vf2_i16m1(__riscv_vget_v_i8mf2x2_i8mf2(pairs, 1), vl);
            a0 = __riscv_vwmacc_vx_i32m2(__riscv_vwmacc_vx_i32m2(a0, xv[0], even, vl), xv[1], odd, vl);
            a1 = __riscv_vwmacc_vx_i32m2(__riscv_vwmacc_vx_i32m2(a1, xv[2], even, vl), xv[3], odd, vl);
            a2 = __riscv_vwmacc_vx_i32m2(__riscv_vwmacc_vx_i32m2(a2, xv[4], even, vl), xv[5], odd, vl);
            a3 = __riscv_vwmacc_vx_i32m2(__riscv_vwmacc_vx_i32m2(a3, xv[6], even, vl), xv[7], odd, vl);
        }
        __riscv_vse32_v_i32m2(acc + 0 * FW_CONV_BLOCK + j0, a0, vl);
        __riscv_vse32_v_i32m2(acc + 1 * FW_CONV_BLOCK + j0, a1, vl);
        __riscv_vse32_v_i32m2(acc + 2 * FW_CONV_BLOCK + j0, a2, vl);
        __riscv_vse32_v_i32m2(acc + 3 * FW_CONV_BLOCK + j0, a3, vl);
        j0 += (int)vl;
    }
#else
    int32_t a[FW_TILE_PIXELS * FW_CONV_BLOCK];
    for (int j = 0; j < FW_TILE_PIXELS * FW_CONV_BLOCK; ++j) {
        a[j] = 0;
    }
    for (int i = 0; i < steps; ++i) {
        const int16_t *xv = tile + i * 2 * FW_TILE_PIXELS;
        const fw_conv_weight *wv = w + i * 2 * FW_CONV_BLOCK;
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const int32_t x0 = xv[2 * t], x1 = xv[2 * t + 1];
            for (int j = 0; j < FW_CONV_BLOCK; ++j) {
                a[t * FW_CONV_BLOCK + j] += x0 * wv[2 * j] + x1 * wv[2 * j + 1];
            }
        }
    }
    for (int j = 0; j < FW_TILE_PIXELS * FW_CONV_BLOCK; ++j) {
        acc[j] = a[j];
    }
#endif
}

#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
/* tile_gemm of two neighbouring channel blocks at once (w0, w1): every pixel broadcast serves
 * sixteen channels, eight accumulators in registers. */
static void tile_gemm2(int steps, const fw_tile_value *tile, const fw_conv_weight *w0, const fw_conv_weight *w1,
                       int32_t *acc0, int32_t *acc1)
{
    __m256i a[FW_TILE_PIXELS], b[FW_TILE_PIXELS]; /* fully unrolled by the compiler: registers */
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        a[t] = b[t] = _mm256_setzero_si256();
    }
    for (int i = 0; i < steps; ++i) {
        const fw_tile_value *xv = tile + i * FW_CONV_K_GROUP * FW_TILE_PIXELS;
        const __m256i v = step_weights(w0 + i * FW_CONV_K_GROUP * FW_CONV_BLOCK);
        const __m256i u = step_weights(w1 + i * FW_CONV_K_GROUP * FW_CONV_BLOCK);
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const __m256i y = pixel_step(xv, t);
            a[t] = step_products(a[t], y, v);
            b[t] = step_products(b[t], y, u);
        }
    }
    store_tile(acc0, a[0], a[1], a[2], a[3]);
    store_tile(acc1, b[0], b[1], b[2], b[3]);
}
#endif

/* Channel blocks one tile_gemm_blocks call may compute. */
#define FW_GEMM_BLOCKS 4

/* The tile GEMM of the first 1, 2 or 4 (at most `blocks`) of the blocks at w, `stride` elements
 * apart, into acc[0..]: the widest kernel the build has. Returns how many it computed. */
static int tile_gemm_blocks(int steps, const fw_tile_value *tile, const fw_conv_weight *w, size_t stride, int blocks,
                            int32_t (*acc)[FW_TILE_PIXELS * FW_CONV_BLOCK])
{
#ifdef FW_CONV_VNNI_512
    if (blocks >= 4) {
        tile_gemm4_512(steps, tile, w, stride, acc);
        return 4;
    }
#endif
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
    if (blocks >= 2) {
        tile_gemm2(steps, tile, w, w + stride, acc[0], acc[1]);
        return 2;
    }
#endif
    (void)stride;
    (void)blocks;
    tile_gemm(steps, tile, w, acc[0]);
    return 1;
}

/* groups == 1, packed weights. */
static void conv2d_s8_packed(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *w, const int32_t *bias,
                             const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    int16_t line[FW_K_CHUNK + FW_CONV_K_GROUP];
    fw_tile_value tile[FW_K_CHUNK * FW_TILE_PIXELS];
    int32_t acc[FW_GEMM_BLOCKS][FW_TILE_PIXELS * FW_CONV_BLOCK];
    const int filter = p->kernel_h * p->kernel_w * p->in_c;
    const int padded = (filter + FW_CONV_K_GROUP - 1) / FW_CONV_K_GROUP * FW_CONV_K_GROUP;
    const int steps = padded / FW_CONV_K_GROUP; /* tile GEMM steps of the whole filter */
    const int out_c = p->out_c, pixels = p->out_h * p->out_w;
    const int blocks = (out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK;
    const int chunked = padded > FW_K_CHUNK;
    int32_t multipliers[FW_REQUANT_TABLE], shifts[FW_REQUANT_TABLE], biases[FW_REQUANT_TABLE];
    const int tabled = blocks * FW_CONV_BLOCK <= FW_REQUANT_TABLE;
    if (tabled) {
        fw_requant_channels(p, bias, multiplier, shift, 0, blocks * FW_CONV_BLOCK, multipliers, shifts, biases);
#ifdef FW_CONV_VNNI
        vnni_bias(p, w, steps, blocks, biases);
#elif defined(FW_CONV_NEON)
        neon_bias(p, w, steps, blocks, biases);
#endif
    }
    for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
        const int count = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
        if (!chunked) {
#ifdef FW_CONV_VNNI
            if (p->in_c % 8 == 0) {
                gather_quads_c8(p, x, pixel0, count, tile);
            } else if (!gather_tile_one_channel(p, x, pixel0, count, tile)) {
                gather_quads_full(p, x, pixel0, count, tile);
            }
#elif defined(FW_CONV_NEON)
            /* not reached: conv2d_s8_neon takes every filter that fits in one tile */
#else
#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
            if (p->in_c % 8 == 0) {
                gather_tile_sse2(p, x, pixel0, count, tile);
            } else if (!gather_tile_one_channel(p, x, pixel0, count, tile))
#endif
#ifdef FW_RVV
            if (p->in_c % 2 == 0) {
                gather_tile_rvv(p, x, pixel0, count, tile);
            } else
#endif
            {
                gather_tile(p, x, pixel0, count, 0, filter, line, tile);
            }
#endif
        }
        const size_t stride = (size_t)padded * FW_CONV_BLOCK; /* weight elements per block */
        for (int b0 = 0; b0 < blocks;) {
            int done = 1;
            if (!chunked) {
                done = tile_gemm_blocks(steps, tile, w + b0 * stride, stride, blocks - b0, acc);
            } else {
                memset(acc[0], 0, sizeof acc[0]);
                for (int k0 = 0; k0 < filter; k0 += FW_K_CHUNK) {
                    int32_t part[FW_TILE_PIXELS * FW_CONV_BLOCK];
                    const int n = filter - k0 < FW_K_CHUNK ? filter - k0 : FW_K_CHUNK;
#ifdef FW_CONV_VNNI
                    gather_quads(p, x, pixel0, count, k0, n, line, tile);
#elif defined(FW_CONV_NEON)
                    gather_quads_chunk(p, x, pixel0, count, k0, n, line, tile);
#else
                    gather_tile(p, x, pixel0, count, k0, n, line, tile);
#endif
                    tile_gemm((n + FW_CONV_K_GROUP - 1) / FW_CONV_K_GROUP, tile, w + b0 * stride + (size_t)k0 * FW_CONV_BLOCK,
                              part);
                    for (int j = 0; j < FW_TILE_PIXELS * FW_CONV_BLOCK; ++j) {
                        acc[0][j] += part[j];
                    }
                }
            }
            for (int i = 0; i < done; ++i) {
                const int c0 = (b0 + i) * FW_CONV_BLOCK;
                const int channels = out_c - c0 < FW_CONV_BLOCK ? out_c - c0 : FW_CONV_BLOCK;
                const int offset = tabled ? c0 : 0;
                if (!tabled) {
                    fw_requant_channels(p, bias, multiplier, shift, c0, FW_CONV_BLOCK, multipliers, shifts, biases);
#ifdef FW_CONV_VNNI
                    vnni_bias(p, w + (b0 + i) * stride, steps, 1, biases);
#elif defined(FW_CONV_NEON)
                    neon_bias(p, w + (b0 + i) * stride, steps, 1, biases);
#endif
                }
                fw_requant_tile(p, acc[i], FW_CONV_BLOCK, multipliers + offset, shifts + offset, biases + offset,
                                y + (size_t)pixel0 * out_c + c0, (size_t)out_c, count, channels);
            }
            b0 += done;
        }
    }
}

static int32_t dot1(const int8_t *x, const fw_conv_weight *w, int n, int32_t zero_point)
{
    int32_t a = 0;
    for (int i = 0; i < n; ++i) {
        a += (int16_t)(x[i] - zero_point) * w[i];
    }
    return a;
}

/* groups > 1: OHWI weights, one output pixel, output channels [oc0, oc0 + count) of `group`. */
static void conv_pixel(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *w, int oy, int ox, int group, int oc0,
                       int count, int32_t *acc)
{
    const int in_per_group = p->in_c / p->groups;
    const size_t filter = (size_t)p->kernel_h * p->kernel_w * in_per_group;
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
            const fw_conv_weight *wp = w + (size_t)oc0 * filter + ((size_t)ky * p->kernel_w + kx) * in_per_group;
            for (int j = 0; j < count; ++j) {
                acc[j] += dot1(xp, wp + (size_t)j * filter, in_per_group, p->input_zero_point);
            }
        }
    }
}

void fw_conv2d_s8(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *w, const int32_t *bias,
                  const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int out_per_group = p->out_c / p->groups;
    int32_t acc[FW_CHANNEL_BLOCK];
    if (p->groups == 1) {
#ifdef FW_CONV_NEON
        if (conv2d_s8_neon(p, x, w, bias, multiplier, shift, y)) {
            return;
        }
#endif
        conv2d_s8_packed(p, x, w, bias, multiplier, shift, y);
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

#if defined(FW_X86_DISPATCH) && !defined(FW_VARIANT)
/* The x86-64 dispatch entry (fwedge_rt.h): the VNNI variant reads the quads, the AVX2 variant
 * and this file's baseline kernel the pairs (groups > 1: the OHWI copy, never the quads). */
void fw_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *pairs, const int8_t *quads,
                           const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int level = fw_x86_level();
    if (level == FW_X86_AVX512_VNNI && p->groups == 1) {
        fw_conv2d_s8_vnni(p, x, quads, bias, multiplier, shift, y);
    } else if (level >= FW_X86_AVX2) {
        fw_conv2d_s8_avx2(p, x, pairs, bias, multiplier, shift, y);
    } else {
        fw_conv2d_s8(p, x, pairs, bias, multiplier, shift, y);
    }
}
#endif

#if defined(FW_ARM_DISPATCH) && !defined(FW_VARIANT)
/* The aarch64 dispatch entry (fwedge_rt.h): the dotprod variant where the CPU has sdot, this
 * file's ARMv8.0 NEON kernel otherwise; both read the quads (groups > 1 never comes here:
 * model.c calls fw_conv2d_s8 on its OHWI copy). */
void fw_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const int8_t *quads, const int32_t *bias,
                           const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    if (p->groups == 1 && fw_arm_has_dotprod()) {
        fw_conv2d_s8_dotprod(p, x, quads, bias, multiplier, shift, y);
    } else {
        fw_conv2d_s8(p, x, quads, bias, multiplier, shift, y);
    }
}
#endif

#if defined(FW_RISCV_DISPATCH) && !defined(FW_VARIANT)
/* The riscv64 dispatch entry (fwedge_rt.h): both kernels read the pairs. */
void fw_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *pairs, const int32_t *bias,
                           const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    (fw_riscv_level() == FW_RISCV_V ? fw_conv2d_s8_rvv : fw_conv2d_s8)(p, x, pairs, bias, multiplier, shift, y);
}
#endif
