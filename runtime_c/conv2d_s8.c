/* int8 2-D convolution (any stride, padding, dilation, groups), NHWC input, TFLite requantization.
 *
 * groups == 1 (every conv of a plain CNN, 1x1 pointwise convs included) runs as a small GEMM
 * without an im2col buffer: a tile of FW_TILE_PIXELS output pixels times FW_CONV_BLOCK output
 * channels is accumulated in registers. Per tile, each pixel's receptive field (its input
 * pixel for a 1x1 conv) is gathered once as int16 x - zero_point and stored pair-interleaved,
 * [k / 2][pixel][2]; the weights were packed at export time (fw_pack_conv2d_s8_weights, the
 * same layout the code generator writes) as [out_c / 8][k / 2][8][2] int8, so one 16-byte
 * load holds two filter taps of eight output channels (AVX2 builds: the same values as int16,
 * fw_conv_weight, one 32-byte load per step and no vpmovsxbw). The inner step multiplies a pair of
 * window values of one pixel with the pairs of four channels and adds both products into one
 * int32 lane: x86's pmaddwd (SSE2 intrinsics when the compiler defines __SSE2__), smlal on Arm
 * from the portable loop. Filters longer than FW_K_CHUNK values are gathered and accumulated
 * in chunks, so the stack stays bounded.
 *
 * groups > 1 (grouped, not depthwise) keeps the plain OHWI layout and a per-tap loop. */
#include <string.h>

#include "fwedge_rt.h"


/* Channels whose requantization constants conv2d_s8_packed keeps in a table on the stack
 * (more: per block). */
#define FW_REQUANT_TABLE 256
/* Even: a chunk boundary never splits a pair. FW_TILE_PIXELS * FW_K_CHUNK int16 on the stack. */
#define FW_K_CHUNK 576

size_t fw_conv2d_s8_packed_size(const fw_conv_params *p)
{
    const size_t filter = (size_t)p->kernel_h * p->kernel_w * (p->in_c / p->groups);
    if (p->groups != 1) {
        return (size_t)p->out_c * filter;
    }
    return (size_t)((p->out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK) * (filter + (filter & 1)) * FW_CONV_BLOCK;
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
    const int padded = filter + (filter & 1);
    const int blocks = (p->out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK;
    for (int b = 0; b < blocks; ++b) {
        for (int k = 0; k < padded; ++k) {
            for (int j = 0; j < FW_CONV_BLOCK; ++j) {
                const int oc = b * FW_CONV_BLOCK + j;
                const int8_t v = oc < p->out_c && k < filter ? ohwi[(size_t)oc * filter + k] : 0;
                packed[((size_t)b * padded + (k & ~1)) * FW_CONV_BLOCK + 2 * j + (k & 1)] = v;
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

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
/* gather_tile of the whole filter for in_c % 8 == 0, eight channels of four pixels at a time:
 * widen to int16, subtract the zero point, and transpose the four pixels' 4 x 4 int32 pairs
 * into the [k / 2][pixel][2] order with unpack instructions. */
static void gather_tile_sse2(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int16_t *tile)
{
    const int in_c = p->in_c;
    const __m128i zero_point = _mm_set1_epi16((int16_t)p->input_zero_point);
    const int8_t *base[FW_TILE_PIXELS];
    int y0[FW_TILE_PIXELS], x0[FW_TILE_PIXELS];
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        const int pixel = pixel0 + (t < pixels ? t : 0);
        const int oy = pixel / p->out_w, ox = pixel - oy * p->out_w;
        y0[t] = oy * p->stride_h - p->pad_top;
        x0[t] = ox * p->stride_w - p->pad_left;
    }
    __m128i *out = (__m128i *)tile;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                const int iy = y0[t] + ky * p->dilation_h, ix = x0[t] + kx * p->dilation_w;
                base[t] = t < pixels && iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w
                              ? x + ((size_t)iy * p->in_w + ix) * in_c
                              : NULL;
            }
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
/* Bytes of the zero-point-padded input patch of a one-channel border tile. */
#define FW_ONE_CHANNEL_PATCH 256

/* One input channel (a first layer on a grey image), stride 1 along x, four pixels of one
 * output row: tap k of the four pixels is four consecutive input bytes, so two taps of the whole
 * tile are two 4-byte loads, interleaved, widened and stored as one [pixel][2] row of the tile.
 * Tiles whose windows reach into the padding read a copy of their input rows padded with the
 * zero point. Returns 0 (nothing written) for any other tile. */
static int gather_tile_one_channel(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int16_t *tile)
{
    if (p->in_c != 1 || p->stride_w != 1 || p->dilation_w != 1 || pixels != FW_TILE_PIXELS) {
        return 0;
    }
    const int oy = pixel0 / p->out_w, ox = pixel0 - oy * p->out_w;
    const int y0 = oy * p->stride_h - p->pad_top, x0 = ox - p->pad_left;
    const int taps = p->kernel_h * p->kernel_w, span = FW_TILE_PIXELS - 1 + p->kernel_w;
    if (ox + FW_TILE_PIXELS > p->out_w) {
        return 0;
    }
    /* Rows of the tile's input patch: straight from x when the windows are inside the image,
     * else copied into `patch` with the zero point in the padding (x - zp = 0 there). */
    int8_t patch[FW_ONE_CHANNEL_PATCH];
    const int8_t *base = x + (ptrdiff_t)y0 * p->in_w + x0;
    ptrdiff_t row_step = (ptrdiff_t)p->dilation_h * p->in_w;
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
        base = patch;
        row_step = span;
    }
    const __m128i zero_point = _mm_set1_epi16((int16_t)p->input_zero_point);
    const __m128i padding = _mm_set1_epi8((char)p->input_zero_point);
    int32_t word;
    for (int k = 0; k < taps; k += 2) {
        const int ky = k / p->kernel_w, kx = k - ky * p->kernel_w;
        memcpy(&word, base + ky * row_step + kx, 4);
        const __m128i a = _mm_cvtsi32_si128(word);
        __m128i b = padding;
        if (k + 1 < taps) {
            const int ky1 = (k + 1) / p->kernel_w, kx1 = k + 1 - ky1 * p->kernel_w;
            memcpy(&word, base + ky1 * row_step + kx1, 4);
            b = _mm_cvtsi32_si128(word);
        }
        const __m128i ab = _mm_unpacklo_epi8(a, b);
        _mm_storeu_si128((__m128i *)(tile + k * FW_TILE_PIXELS),
                         _mm_sub_epi16(_mm_srai_epi16(_mm_unpacklo_epi8(ab, ab), 8), zero_point));
    }
    return 1;
}
#endif

#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
/* Tap pair p (two int16 values) of the tile step at xv, broadcast to all eight lanes. */
static inline __m256i pixel_pair(const int16_t *xv, int p)
{
    int32_t x;
    memcpy(&x, xv + 2 * p, 4);
    return _mm256_set1_epi32(x);
}

/* The four pixels' eight-channel accumulators, pixel after pixel. */
static inline void store_tile(int32_t *acc, __m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 8), a1);
    _mm256_storeu_si256((__m256i *)(acc + 16), a2);
    _mm256_storeu_si256((__m256i *)(acc + 24), a3);
}
#endif

/* acc[t * 8 + j] = sum over `pairs` pairs i of tile[i][t][0] * w[i][j][0] + tile[i][t][1] * w[i][j][1].
 * (Stores, not accumulates: adding to acc in memory after the loop makes gcc 12 copy every
 * register accumulator on each step.) */
static void tile_gemm(int pairs, const int16_t *tile, const fw_conv_weight *w, int32_t *acc)
{
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
    /* 256-bit: one register holds two taps of all eight channels (int16 weights), one
     * accumulator per pixel, the pixel's pair broadcast with vpbroadcastd. (AVX-512 VNNI's
     * vpdpwssd, multiply-add and add in one, was not faster on a Zen 4 host: one dependent
     * chain per accumulator.) */
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < pairs; ++i) {
        const int16_t *xv = tile + i * 2 * FW_TILE_PIXELS;
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + i * 2 * FW_CONV_BLOCK));
        a0 = _mm256_add_epi32(_mm256_madd_epi16(pixel_pair(xv, 0), wv), a0);
        a1 = _mm256_add_epi32(_mm256_madd_epi16(pixel_pair(xv, 1), wv), a1);
        a2 = _mm256_add_epi32(_mm256_madd_epi16(pixel_pair(xv, 2), wv), a2);
        a3 = _mm256_add_epi32(_mm256_madd_epi16(pixel_pair(xv, 3), wv), a3);
    }
    store_tile(acc, a0, a1, a2, a3);
#elif defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
    __m128i a00 = _mm_setzero_si128(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const __m128i zero = _mm_setzero_si128();
    for (int i = 0; i < pairs; ++i) {
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
#else
    int32_t a[FW_TILE_PIXELS * FW_CONV_BLOCK];
    for (int j = 0; j < FW_TILE_PIXELS * FW_CONV_BLOCK; ++j) {
        a[j] = 0;
    }
    for (int i = 0; i < pairs; ++i) {
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
static void tile_gemm2(int pairs, const int16_t *tile, const fw_conv_weight *w0, const fw_conv_weight *w1, int32_t *acc0,
                       int32_t *acc1)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int i = 0; i < pairs; ++i) {
        const int16_t *xv = tile + i * 2 * FW_TILE_PIXELS;
        const __m256i v = _mm256_loadu_si256((const __m256i *)(w0 + i * 2 * FW_CONV_BLOCK));
        const __m256i u = _mm256_loadu_si256((const __m256i *)(w1 + i * 2 * FW_CONV_BLOCK));
        const __m256i y0 = pixel_pair(xv, 0), y1 = pixel_pair(xv, 1);
        const __m256i y2 = pixel_pair(xv, 2), y3 = pixel_pair(xv, 3);
        a0 = _mm256_add_epi32(_mm256_madd_epi16(y0, v), a0);
        b0 = _mm256_add_epi32(_mm256_madd_epi16(y0, u), b0);
        a1 = _mm256_add_epi32(_mm256_madd_epi16(y1, v), a1);
        b1 = _mm256_add_epi32(_mm256_madd_epi16(y1, u), b1);
        a2 = _mm256_add_epi32(_mm256_madd_epi16(y2, v), a2);
        b2 = _mm256_add_epi32(_mm256_madd_epi16(y2, u), b2);
        a3 = _mm256_add_epi32(_mm256_madd_epi16(y3, v), a3);
        b3 = _mm256_add_epi32(_mm256_madd_epi16(y3, u), b3);
    }
    store_tile(acc0, a0, a1, a2, a3);
    store_tile(acc1, b0, b1, b2, b3);
}
#endif

/* groups == 1, packed weights. */
static void conv2d_s8_packed(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *w, const int32_t *bias,
                             const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    int16_t line[FW_K_CHUNK + 1];
    int16_t tile[FW_K_CHUNK * FW_TILE_PIXELS];
    int32_t acc[FW_TILE_PIXELS * FW_CONV_BLOCK];
    int8_t out[FW_TILE_PIXELS * FW_CONV_BLOCK];
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
    int32_t next[FW_TILE_PIXELS * FW_CONV_BLOCK];
    int pending = 0;
#endif
    const int filter = p->kernel_h * p->kernel_w * p->in_c;
    const int padded = filter + (filter & 1);
    const int out_c = p->out_c, pixels = p->out_h * p->out_w;
    const int blocks = (out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK;
    const int chunked = padded > FW_K_CHUNK;
    int32_t multipliers[FW_REQUANT_TABLE], shifts[FW_REQUANT_TABLE], biases[FW_REQUANT_TABLE];
    const int tabled = blocks * FW_CONV_BLOCK <= FW_REQUANT_TABLE;
    if (tabled) {
        fw_requant_channels(p, bias, multiplier, shift, 0, blocks * FW_CONV_BLOCK, multipliers, shifts, biases);
    }
    for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
        const int count = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
        if (!chunked) {
#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
            if (p->in_c % 8 == 0) {
                gather_tile_sse2(p, x, pixel0, count, tile);
            } else if (!gather_tile_one_channel(p, x, pixel0, count, tile))
#endif
            {
                gather_tile(p, x, pixel0, count, 0, filter, line, tile);
            }
        }
        for (int b = 0; b < blocks; ++b) {
            const fw_conv_weight *wb = w + (size_t)b * padded * FW_CONV_BLOCK;
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
            if (!chunked && b + 1 < blocks) {
                /* Two blocks at once; the second block's tile is requantized on the next pass. */
                if (!pending) {
                    tile_gemm2(padded / 2, tile, wb, wb + (size_t)padded * FW_CONV_BLOCK, acc, next);
                    pending = 1;
                } else {
                    memcpy(acc, next, sizeof acc);
                    pending = 0;
                }
            } else if (pending) {
                memcpy(acc, next, sizeof acc);
                pending = 0;
            } else
#endif
            if (!chunked) {
                tile_gemm(padded / 2, tile, wb, acc);
            } else {
                memset(acc, 0, sizeof acc);
                for (int k0 = 0; k0 < filter; k0 += FW_K_CHUNK) {
                    int32_t part[FW_TILE_PIXELS * FW_CONV_BLOCK];
                    const int n = filter - k0 < FW_K_CHUNK ? filter - k0 : FW_K_CHUNK;
                    gather_tile(p, x, pixel0, count, k0, n, line, tile);
                    tile_gemm((n + 1) / 2, tile, wb + (size_t)k0 * FW_CONV_BLOCK, part);
                    for (int j = 0; j < FW_TILE_PIXELS * FW_CONV_BLOCK; ++j) {
                        acc[j] += part[j];
                    }
                }
            }
            const int c0 = b * FW_CONV_BLOCK;
            const int channels = out_c - c0 < FW_CONV_BLOCK ? out_c - c0 : FW_CONV_BLOCK;
            const int offset = tabled ? c0 : 0;
            if (!tabled) {
                fw_requant_channels(p, bias, multiplier, shift, c0, FW_CONV_BLOCK, multipliers, shifts, biases);
            }
            fw_requant_tile(p, acc, FW_CONV_BLOCK, multipliers + offset, shifts + offset, biases + offset, out);
            for (int t = 0; t < count; ++t) {
                int8_t *yp = y + (size_t)(pixel0 + t) * out_c + c0;
                if (channels == FW_CONV_BLOCK) {
                    memcpy(yp, out + t * FW_CONV_BLOCK, FW_CONV_BLOCK);
                } else {
                    memcpy(yp, out + t * FW_CONV_BLOCK, (size_t)channels);
                }
            }
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
