/* int8 depthwise 2-D convolution (any stride, padding, dilation, channel multiplier), NHWC.
 *
 * Channel multiplier 1 (MobileNet's depthwise layers): tiles of FW_TILE_PIXELS output pixels,
 * channels in blocks of FW_CHANNEL_BLOCK; for every valid tap a contiguous channel loop
 * acc[j] += (x[j] - zp) * w[j] the compiler vectorises (NHWC keeps channels innermost), then
 * the tile is requantized with fw_requant_tile (four pixels of one channel share its multiplier
 * and shift, so SSE2 requantizes them as one vector). With SSE2 and channels a multiple of 8,
 * depthwise_tiles_sse2 instead multiplies two taps at once with pmaddwd and has no bounds checks
 * in its tap loop. Other multipliers: a per-pixel loop. */
#include <string.h>

#include "fwedge_rt.h"
#include "requant_neon.h"

static void depthwise_tiles(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    int32_t acc[FW_TILE_PIXELS * FW_CHANNEL_BLOCK];
    int32_t multipliers[FW_CHANNEL_BLOCK], shifts[FW_CHANNEL_BLOCK], biases[FW_CHANNEL_BLOCK];
    const int channels = p->out_c, pixels = p->out_h * p->out_w;
    const int in_h = p->in_h, in_w = p->in_w, kernel_h = p->kernel_h, kernel_w = p->kernel_w;
    const int16_t zero_point = (int16_t)p->input_zero_point;
    for (int c0 = 0; c0 < channels; c0 += FW_CHANNEL_BLOCK) {
        const int count = channels - c0 < FW_CHANNEL_BLOCK ? channels - c0 : FW_CHANNEL_BLOCK;
        const int rounded = (count + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK * FW_CONV_BLOCK;
        fw_requant_channels(p, bias, multiplier, shift, c0, rounded, multipliers, shifts, biases);
        for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
            const int tile = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
            for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                int32_t *a = acc + t * FW_CHANNEL_BLOCK;
                for (int j = 0; j < rounded; ++j) {
                    a[j] = 0;
                }
                if (t >= tile) {
                    continue;
                }
                const int oy = (pixel0 + t) / p->out_w, ox = (pixel0 + t) - oy * p->out_w;
                for (int ky = 0; ky < kernel_h; ++ky) {
                    const int iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                    if (iy < 0 || iy >= in_h) {
                        continue;
                    }
                    for (int kx = 0; kx < kernel_w; ++kx) {
                        const int ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                        if (ix < 0 || ix >= in_w) {
                            continue;
                        }
                        const int8_t *xc = x + ((size_t)iy * in_w + ix) * channels + c0;
                        const int8_t *wc = w + ((size_t)ky * kernel_w + kx) * channels + c0;
                        for (int j = 0; j < count; ++j) {
                            a[j] += (int16_t)(xc[j] - zero_point) * (int16_t)wc[j];
                        }
                    }
                }
            }
            for (int g = 0; g < rounded; g += FW_CONV_BLOCK) {
                const int n = count - g < FW_CONV_BLOCK ? count - g : FW_CONV_BLOCK;
                fw_requant_tile(p, acc + g, FW_CHANNEL_BLOCK, multipliers + g, shifts + g, biases + g,
                                y + (size_t)pixel0 * channels + c0 + g, (size_t)channels, tile, n);
            }
        }
    }
}

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
/* Taps of a depthwise kernel the SSE2 path takes (kernel_h * kernel_w, rounded up to pairs). */
#define FW_DW_TAPS 26

/* Channel multiplier 1, channels a multiple of 8, at most FW_DW_TAPS taps: the weights of a
 * channel block are widened once per call into tap pairs w2[tap / 2][channel][2] (int16), and
 * for each pixel every valid tap points at its input pixel, every padding tap at a row holding
 * the zero point (so the loop has no bounds checks). The zero point is not subtracted per tap:
 * sum over all taps of (x - zp) * w = sum of x * w - zp * sum of w (padding taps read zp, so
 * they cancel exactly), and zp * sum of w is taken off the bias once per channel. Two taps of
 * eight channels are interleaved as bytes, widened to (x_a, x_b) int16 pairs and
 * multiplied-added with pmaddwd (AVX2: all eight channels' pairs in one register, vpmovsxbw).
 * Pixels whose whole window is inside the input take their tap pointers from one table of
 * offsets computed per call. */
static void depthwise_tiles_sse2(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                 const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    int16_t w2[FW_DW_TAPS * FW_CHANNEL_BLOCK];
    int8_t padding[FW_CHANNEL_BLOCK];
    const int8_t *src[FW_DW_TAPS];
    ptrdiff_t offset[FW_DW_TAPS];
    int32_t acc[FW_TILE_PIXELS * FW_CHANNEL_BLOCK];
    int32_t multipliers[FW_CHANNEL_BLOCK], shifts[FW_CHANNEL_BLOCK], biases[FW_CHANNEL_BLOCK];
    const int channels = p->out_c, pixels = p->out_h * p->out_w;
    const int taps = p->kernel_h * p->kernel_w, pairs = (taps + 1) / 2;
    const int32_t zero_point = p->input_zero_point;
    const int span_h = (p->kernel_h - 1) * p->dilation_h, span_w = (p->kernel_w - 1) * p->dilation_w;
    memset(padding, (int8_t)zero_point, sizeof padding);
    for (int i = 0; i < 2 * pairs; ++i) {
        const int ky = i / p->kernel_w, kx = i - ky * p->kernel_w;
        offset[i] = i < taps ? ((ptrdiff_t)ky * p->dilation_h * p->in_w + (ptrdiff_t)kx * p->dilation_w) * channels : 0;
    }
    for (int c0 = 0; c0 < channels; c0 += FW_CHANNEL_BLOCK) {
        const int count = channels - c0 < FW_CHANNEL_BLOCK ? channels - c0 : FW_CHANNEL_BLOCK;
        fw_requant_channels(p, bias, multiplier, shift, c0, count, multipliers, shifts, biases);
        /* Tap pairs of eight channels: the two taps' bytes interleaved and widened to int16
         * (w2), and pmaddwd by ones adds each pair into the channel's weight sum. */
        const __m128i ones = _mm_set1_epi16(1);
        for (int j = 0; j < count; j += 8) {
            __m128i sum_lo = _mm_setzero_si128(), sum_hi = sum_lo;
            for (int i = 0; i < pairs; ++i) {
                const __m128i a = _mm_loadl_epi64((const __m128i *)(w + (size_t)(2 * i) * channels + c0 + j));
                const __m128i b = 2 * i + 1 < taps
                                      ? _mm_loadl_epi64((const __m128i *)(w + (size_t)(2 * i + 1) * channels + c0 + j))
                                      : _mm_setzero_si128();
                const __m128i ab = _mm_unpacklo_epi8(a, b);
                const __m128i lo = _mm_srai_epi16(_mm_unpacklo_epi8(ab, ab), 8); /* channels j..j+3 */
                const __m128i hi = _mm_srai_epi16(_mm_unpackhi_epi8(ab, ab), 8); /* channels j+4..j+7 */
                _mm_storeu_si128((__m128i *)(w2 + (i * FW_CHANNEL_BLOCK + j) * 2), lo);
                _mm_storeu_si128((__m128i *)(w2 + (i * FW_CHANNEL_BLOCK + j) * 2 + 8), hi);
                sum_lo = _mm_add_epi32(sum_lo, _mm_madd_epi16(lo, ones));
                sum_hi = _mm_add_epi32(sum_hi, _mm_madd_epi16(hi, ones));
            }
            int32_t sums[8];
            _mm_storeu_si128((__m128i *)sums, sum_lo);
            _mm_storeu_si128((__m128i *)(sums + 4), sum_hi);
            for (int e = 0; e < 8; ++e) {
                biases[j + e] = (int32_t)((uint32_t)biases[j + e] - (uint32_t)(zero_point * sums[e]));
            }
        }
        for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
            const int tile = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
            for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                const int pixel = pixel0 + (t < tile ? t : 0);
                const int oy = pixel / p->out_w, ox = pixel - oy * p->out_w;
                const int y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
                if (y0 >= 0 && y0 + span_h < p->in_h && x0 >= 0 && x0 + span_w < p->in_w) {
                    const int8_t *base = x + ((size_t)y0 * p->in_w + x0) * channels + c0;
                    for (int i = 0; i < taps; ++i) {
                        src[i] = base + offset[i];
                    }
                    if (taps & 1) {
                        src[taps] = padding;
                    }
                } else {
                    for (int i = 0, ky = 0, kx = 0; i < 2 * pairs; ++i) {
                        const int iy = y0 + ky * p->dilation_h, ix = x0 + kx * p->dilation_w;
                        const int inside = i < taps && iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
                        src[i] = inside ? x + ((size_t)iy * p->in_w + ix) * channels + c0 : padding;
                        if (++kx == p->kernel_w) {
                            kx = 0;
                            ++ky;
                        }
                    }
                }
                int g = 0;
#if defined(__AVX2__)
                for (; g + 16 <= count; g += 16) {
                    /* Sixteen channels: both taps' 16 bytes loaded once, interleaved low and high. */
                    __m256i sum0 = _mm256_setzero_si256(), sum1 = sum0;
                    for (int i = 0; i < pairs; ++i) {
                        const __m128i a = _mm_loadu_si128((const __m128i *)(src[2 * i] + g));
                        const __m128i b = _mm_loadu_si128((const __m128i *)(src[2 * i + 1] + g));
                        const __m256i *wp = (const __m256i *)(w2 + (i * FW_CHANNEL_BLOCK + g) * 2);
                        sum0 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b)),
                                                                  _mm256_loadu_si256(wp)), sum0);
                        sum1 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a, b)),
                                                                  _mm256_loadu_si256(wp + 1)), sum1);
                    }
                    _mm256_storeu_si256((__m256i *)(acc + t * FW_CHANNEL_BLOCK + g), sum0);
                    _mm256_storeu_si256((__m256i *)(acc + t * FW_CHANNEL_BLOCK + g + 8), sum1);
                }
#endif
                for (; g < count; g += 8) {
#if defined(__AVX2__)
                    /* 256-bit: the two taps' bytes interleaved, widened and paired in one register. */
                    __m256i sum = _mm256_setzero_si256();
                    for (int i = 0; i < pairs; ++i) {
                        const __m128i a8 = _mm_loadl_epi64((const __m128i *)(src[2 * i] + g));
                        const __m128i b8 = _mm_loadl_epi64((const __m128i *)(src[2 * i + 1] + g));
                        const __m256i ab = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a8, b8));
                        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w2 + (i * FW_CHANNEL_BLOCK + g) * 2));
                        sum = _mm256_add_epi32(_mm256_madd_epi16(ab, wv), sum);
                    }
                    _mm256_storeu_si256((__m256i *)(acc + t * FW_CHANNEL_BLOCK + g), sum);
#else
                    __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
                    for (int i = 0; i < pairs; ++i) {
                        const __m128i a8 = _mm_loadl_epi64((const __m128i *)(src[2 * i] + g));
                        const __m128i b8 = _mm_loadl_epi64((const __m128i *)(src[2 * i + 1] + g));
                        const __m128i ab = _mm_unpacklo_epi8(a8, b8); /* a0 b0 a1 b1 ... a7 b7 */
                        const __m128i *wp = (const __m128i *)(w2 + (i * FW_CHANNEL_BLOCK + g) * 2);
                        lo = _mm_add_epi32(_mm_madd_epi16(_mm_srai_epi16(_mm_unpacklo_epi8(ab, ab), 8), _mm_loadu_si128(wp)), lo);
                        hi = _mm_add_epi32(_mm_madd_epi16(_mm_srai_epi16(_mm_unpackhi_epi8(ab, ab), 8), _mm_loadu_si128(wp + 1)), hi);
                    }
                    _mm_storeu_si128((__m128i *)(acc + t * FW_CHANNEL_BLOCK + g), lo);
                    _mm_storeu_si128((__m128i *)(acc + t * FW_CHANNEL_BLOCK + g + 4), hi);
#endif
                }
            }
            for (int g = 0; g < count; g += FW_CONV_BLOCK) {
                fw_requant_tile(p, acc + g, FW_CHANNEL_BLOCK, multipliers + g, shifts + g, biases + g,
                                y + (size_t)pixel0 * channels + c0 + g, (size_t)channels, tile, FW_CONV_BLOCK);
            }
        }
    }
}
#endif

#if defined(FW_NEON)
/* Taps of a depthwise kernel the NEON path takes (7x7 and more go to depthwise_tiles). */
#define FW_DW_NEON_TAPS 49
/* Channels per block of the NEON path: the tap pointers of a tile are computed once per block,
 * so every layer up to 256 channels computes them once per tile. */
#define FW_DW_NEON_BLOCK 256

/* fw_multiply_by_quantized_multiplier of the four channels at multiplier/shift (requant_neon.h):
 * SQDMULH and SRSHL by shift when every channel of the call has s = 31 - shift >= 32, the
 * 64-bit products otherwise. */
static inline int32x4_t depthwise_requant4_neon(int32x4_t acc, int32x4_t m, int32x4_t sh, int high)
{
    if (high) {
        return fw_requant4_neon_high(acc, m, sh);
    }
    const int32x4_t neg_s = vsubq_s32(sh, vdupq_n_s32(31));
    return fw_requant4_neon_wide(acc, m, vmovl_s32(vget_low_s32(neg_s)), vmovl_high_s32(neg_s));
}

/* The output side of a depthwise call: zero point, clamp, and `high` (every channel takes the
 * SQDMULH form, see depthwise_requant4_neon). */
typedef struct {
    int32x4_t zero_point;
    int8x16_t lo, hi;
    int high;
} fw_dw_out;

/* Pixel t's sixteen sums a requantized by the form `high` (a constant where it is inlined) and
 * stored at y. */
static inline __attribute__((always_inline)) void depthwise_store16_neon(const int32x4_t a[4], const int32x4_t m[4],
                                                                         const int32x4_t sh[4], const fw_dw_out *o,
                                                                         int high, int8_t *y)
{
    int32x4_t v[4];
    for (int j = 0; j < 4; ++j) {
        v[j] = depthwise_requant4_neon(a[j], m[j], sh[j], high);
    }
    vst1q_s8(y, fw_narrow16_neon(v, o->zero_point, o->lo, o->hi));
}

/* Sixteen channels at c of the tile's `tile` pixels, weights without -128, start to end: the
 * sums from init (sixteen int32: the bias less zp * the weight sums) plus x * w over the taps,
 * two taps summed in int16 (SMULL, SMLAL of bytes: |x * w| <= 128 * 127, two fit) and widened
 * into int32 (SADDW), then requantized with multipliers m and shifts sh (sixteen each) and
 * stored, pixel t at y + t * y_stride. The sixteen sums stay in registers from the first tap to
 * the store (no round trip through memory), the form chosen once. */
/* Where the tile's pixel t reads tap i: its own pointer src[t][i] (a tile at the border), or, in a
 * tile whose every window is inside the input, its window's start base[t] plus the tap's offset,
 * shared by the four pixels (one offset load per tap, the four bases in registers). */
typedef struct {
    const int8_t *(*src)[FW_DW_NEON_TAPS];
    const int8_t *const *base;
    const ptrdiff_t *offset;
} fw_dw_taps;

#define FW_DW_TAP(k, interior, t, i) ((interior) ? (k)->base[t] + (k)->offset[i] : (k)->src[t][i])

static inline __attribute__((always_inline)) void depthwise16_neon(int taps, const fw_dw_taps *k, int interior,
                                                                   int c, const int8_t *wb, size_t channels,
                                                                   const int32_t *init, const int32_t *m,
                                                                   const int32_t *sh, const fw_dw_out *o, int8_t *y,
                                                                   size_t y_stride, int tile)
{
    int32x4_t a[FW_TILE_PIXELS][4];
    for (int j = 0; j < 4; ++j) {
        const int32x4_t b = vld1q_s32(init + 4 * j);
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            a[t][j] = b;
        }
    }
    int i = 0;
    for (; i + 2 <= taps; i += 2) {
        const int8x16_t w0 = vld1q_s8(wb + (size_t)i * channels + c);
        const int8x16_t w1 = vld1q_s8(wb + (size_t)(i + 1) * channels + c);
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const int8x16_t x0 = vld1q_s8(FW_DW_TAP(k, interior, t, i) + c);
            const int8x16_t x1 = vld1q_s8(FW_DW_TAP(k, interior, t, i + 1) + c);
            int16x8_t lo = vmull_s8(vget_low_s8(x0), vget_low_s8(w0)), hi = vmull_high_s8(x0, w0);
            lo = vmlal_s8(lo, vget_low_s8(x1), vget_low_s8(w1));
            hi = vmlal_high_s8(hi, x1, w1);
            a[t][0] = vaddw_s16(a[t][0], vget_low_s16(lo));
            a[t][1] = vaddw_high_s16(a[t][1], lo);
            a[t][2] = vaddw_s16(a[t][2], vget_low_s16(hi));
            a[t][3] = vaddw_high_s16(a[t][3], hi);
        }
    }
    if (i < taps) {
        const int8x16_t w0 = vld1q_s8(wb + (size_t)i * channels + c);
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const int8x16_t x0 = vld1q_s8(FW_DW_TAP(k, interior, t, i) + c);
            const int16x8_t lo = vmull_s8(vget_low_s8(x0), vget_low_s8(w0)), hi = vmull_high_s8(x0, w0);
            a[t][0] = vaddw_s16(a[t][0], vget_low_s16(lo));
            a[t][1] = vaddw_high_s16(a[t][1], lo);
            a[t][2] = vaddw_s16(a[t][2], vget_low_s16(hi));
            a[t][3] = vaddw_high_s16(a[t][3], hi);
        }
    }
    const int32x4_t mv[4] = {vld1q_s32(m), vld1q_s32(m + 4), vld1q_s32(m + 8), vld1q_s32(m + 12)};
    const int32x4_t shv[4] = {vld1q_s32(sh), vld1q_s32(sh + 4), vld1q_s32(sh + 8), vld1q_s32(sh + 12)};
    /* constant indices only: a[t] with a variable t would keep the sums in memory */
#define FW_DW_STORE(high)                                                                      \
    do {                                                                                       \
        depthwise_store16_neon(a[0], mv, shv, o, high, y);                                     \
        if (tile > 1) {                                                                        \
            depthwise_store16_neon(a[1], mv, shv, o, high, y + y_stride);                      \
        }                                                                                      \
        if (tile > 2) {                                                                        \
            depthwise_store16_neon(a[2], mv, shv, o, high, y + 2 * y_stride);                  \
        }                                                                                      \
        if (tile > 3) {                                                                        \
            depthwise_store16_neon(a[3], mv, shv, o, high, y + 3 * y_stride);                  \
        }                                                                                      \
    } while (0)
    if (o->high) {
        FW_DW_STORE(1);
    } else {
        FW_DW_STORE(0);
    }
#undef FW_DW_STORE
}

/* depthwise16_neon over the first `count` channels (a multiple of 16) of the tile's block: one
 * call per tile, in a function of its own, so the sums keep the registers the caller's loop
 * state would take (inlined, they were stored to the stack on every tap pair). */
static __attribute__((noinline)) void depthwise_block16_neon(int taps, const fw_dw_taps *k, int count,
                                                             const int8_t *wb, size_t channels, const int32_t *init,
                                                             const int32_t *m, const int32_t *sh, const fw_dw_out *o,
                                                             int8_t *y, int tile)
{
    for (int c = 0; c < count; c += 16) {
        depthwise16_neon(taps, k, 0, c, wb, channels, init + c, m + c, sh + c, o, y + c, channels, tile);
    }
}

/* The same for a tile of whole windows (fw_dw_taps: bases and offsets). */
static __attribute__((noinline)) void depthwise_inner16_neon(int taps, const fw_dw_taps *k, int count,
                                                             const int8_t *wb, size_t channels, const int32_t *init,
                                                             const int32_t *m, const int32_t *sh, const fw_dw_out *o,
                                                             int8_t *y, int tile)
{
    const int8_t *const base[FW_TILE_PIXELS] = {k->base[0], k->base[1], k->base[2], k->base[3]};
    const fw_dw_taps local = {NULL, base, k->offset};
    for (int c = 0; c < count; c += 16) {
        depthwise16_neon(taps, &local, 1, c, wb, channels, init + c, m + c, sh + c, o, y + c, channels, tile);
    }
}

/* The tap pointers of an output pixel whose window, at input row y0 and column x0, crosses the
 * border: a tap inside points at its input pixel (x at the block's first channel), one outside
 * at `padding`. Rows and columns are checked once each, not once per tap. */
static void depthwise_border_taps(const fw_conv_params *p, const int8_t *x, int y0, int x0, const int8_t *padding,
                                  const int8_t **src)
{
    const int8_t *row[FW_DW_NEON_TAPS];
    ptrdiff_t column[FW_DW_NEON_TAPS];
    const size_t channels = (size_t)p->out_c;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        const int iy = y0 + ky * p->dilation_h;
        row[ky] = iy >= 0 && iy < p->in_h ? x + (size_t)iy * p->in_w * channels : NULL;
    }
    for (int kx = 0; kx < p->kernel_w; ++kx) {
        const int ix = x0 + kx * p->dilation_w;
        column[kx] = ix >= 0 && ix < p->in_w ? (ptrdiff_t)ix * (ptrdiff_t)channels : -1;
    }
    for (int ky = 0, i = 0; ky < p->kernel_h; ++ky) {
        for (int kx = 0; kx < p->kernel_w; ++kx, ++i) {
            src[i] = row[ky] && column[kx] >= 0 ? row[ky] + column[kx] : padding;
        }
    }
}

/* A layer whose every window is inside the input (no padding: model.c gives aarch64's padded
 * depthwise convs a padded copy, targets/c_pad.py) and whose channels are whole sixteens of one
 * block, with the byte products: depthwise_inner16_neon on each tile, the tiles' window starts
 * walking the output rows (one add per pixel) instead of the general loop's division and border
 * tests per pixel. */
static __attribute__((noinline)) void depthwise_whole_neon(const fw_conv_params *p, const int8_t *x, const int8_t *w,
                                                           const int32_t *init, const int32_t *multiplier,
                                                           const int32_t *shift, const fw_dw_out *out,
                                                           const ptrdiff_t *offset, int8_t *y)
{
    const int channels = p->out_c, taps = p->kernel_h * p->kernel_w, pixels = p->out_h * p->out_w;
    const ptrdiff_t step = (ptrdiff_t)p->stride_w * channels, row_step = (ptrdiff_t)p->stride_h * p->in_w * channels;
    const int8_t *row = x;
    int ox = 0;
    for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
        const int tile = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
        const int8_t *base[FW_TILE_PIXELS];
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            if (t >= tile) {
                base[t] = base[0];
                continue;
            }
            base[t] = row + ox * step;
            if (++ox == p->out_w) {
                ox = 0;
                row += row_step;
            }
        }
        const fw_dw_taps k = {NULL, base, offset};
        depthwise_inner16_neon(taps, &k, channels, w, (size_t)channels, init, multiplier, shift, out,
                               y + (size_t)pixel0 * channels, tile);
    }
}

/* Channel multiplier 1, at most FW_DW_NEON_TAPS taps. Tiles of FW_TILE_PIXELS output pixels
 * and channel blocks of FW_DW_NEON_BLOCK: every tap of every pixel of the tile points at its
 * input pixel, or at a row holding the input zero point when it falls in the padding (x - zp is
 * then 0, so padding adds nothing, exactly as a skipped tap). Per sixteen channels and tap, the
 * weights are loaded and widened once and serve the tile's four pixels: (x - zp) widened to
 * int16 (SSUBL), multiplied and accumulated into int32 with SMLAL/SMLAL2, sixteen accumulators
 * in registers; when no weight is -128 (the common case) the byte products instead, sixteen
 * channels at a time in depthwise_block16_neon, one call per tile. An eight-channel step and a
 * scalar loop take the block's last channels. */
static void depthwise_tiles_neon(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                 const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    int8_t padding[FW_DW_NEON_BLOCK];
    const int8_t *src[FW_TILE_PIXELS][FW_DW_NEON_TAPS];
    ptrdiff_t offset[FW_DW_NEON_TAPS];
    const int channels = p->out_c, pixels = p->out_h * p->out_w, taps = p->kernel_h * p->kernel_w;
    const int in_h = p->in_h, in_w = p->in_w, kernel_w = p->kernel_w;
    const int span_h = (p->kernel_h - 1) * p->dilation_h, span_w = (p->kernel_w - 1) * p->dilation_w;
    const int32_t zero_point = p->input_zero_point, output_zero_point = p->output_zero_point;
    const int32_t lo = fw_clamp_s32(p->activation_min, -128, 127), hi = fw_clamp_s32(p->activation_max, -128, 127);
    const int8x16_t zp8 = vdupq_n_s8((int8_t)zero_point);
    const int32x4_t zpo = vdupq_n_s32(output_zero_point);
    const int8x16_t lo8 = vdupq_n_s8((int8_t)lo), hi8 = vdupq_n_s8((int8_t)hi);
    /* computed at export (fw_conv_prepared: the flags and the biases less zp * the tap sums), else here */
    const fw_conv_prepared *prepared = p->prepared;
    int high = 1, byte_products = 1;
    if (prepared) {
        high = prepared->high;
        byte_products = prepared->no_min_weight;
    } else {
        for (int c = 0; c < channels; ++c) {
            high &= shift[c] <= -1 && multiplier[c] >= 0;
        }
        for (int i = 0; i < taps * channels; ++i) {
            byte_products &= w[i] != -128;
        }
    }
    const fw_dw_out out = {zpo, lo8, hi8, high};
    const int whole_layer = p->pad_top == 0 && p->pad_left == 0 && (p->out_h - 1) * p->stride_h + span_h < in_h &&
                            (p->out_w - 1) * p->stride_w + span_w < in_w;
    int32_t adjusted[FW_DW_NEON_BLOCK];
    memset(padding, (int8_t)zero_point, sizeof padding);
    for (int i = 0; i < taps; ++i) {
        const int ky = i / kernel_w, kx = i - ky * kernel_w;
        offset[i] = ((ptrdiff_t)ky * p->dilation_h * in_w + (ptrdiff_t)kx * p->dilation_w) * channels;
    }
    for (int c0 = 0; c0 < channels; c0 += FW_DW_NEON_BLOCK) {
        const int count = channels - c0 < FW_DW_NEON_BLOCK ? channels - c0 : FW_DW_NEON_BLOCK;
        const int8_t *wb = w + c0;
        const int32_t *mb = multiplier + c0, *sb = shift + c0;
        const int32_t *init = prepared ? prepared->bias + c0 : adjusted;
        if (byte_products && !prepared) {
            /* bias - zp * (sum of the channel's weights): the byte products sum x * w over every
             * tap, padding taps reading zp included, which is sum (x - zp) * w plus zp * sum w. */
            int j = 0;
            for (; j + 16 <= count; j += 16) {
                /* sixteen channels' sums on int16 (at most 49 * 128 in size), then widened */
                int16x8_t lo = vdupq_n_s16(0), hi = lo;
                for (int i = 0; i < taps; ++i) {
                    const int8x16_t wv = vld1q_s8(wb + (size_t)i * channels + j);
                    lo = vaddw_s8(lo, vget_low_s8(wv));
                    hi = vaddw_high_s8(hi, wv);
                }
                const int32x4_t sums[4] = {vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)),
                                           vmovl_high_s16(hi)};
                for (int q = 0; q < 4; ++q) {
                    const int32x4_t b = bias ? vld1q_s32(bias + c0 + j + 4 * q) : vdupq_n_s32(0);
                    /* wraps as the scalar form's uint32 arithmetic */
                    vst1q_s32(adjusted + j + 4 * q, vmlsq_n_s32(b, sums[q], zero_point));
                }
            }
            for (; j < count; ++j) {
                int32_t sum = 0;
                for (int i = 0; i < taps; ++i) {
                    sum += wb[(size_t)i * channels + j];
                }
                adjusted[j] = (int32_t)((uint32_t)(bias ? bias[c0 + j] : 0) - (uint32_t)zero_point * (uint32_t)sum);
            }
        }
        if (byte_products && whole_layer && count == channels && count % 16 == 0) {
            depthwise_whole_neon(p, x, wb, init, mb, sb, &out, offset, y);
            continue;
        }
        for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
            const int tile = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
            const int8_t *base[FW_TILE_PIXELS];
            int corner[FW_TILE_PIXELS][2], whole = 1;
            for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                const int pixel = pixel0 + (t < tile ? t : 0);
                const int oy = pixel / p->out_w, ox = pixel - oy * p->out_w;
                const int y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
                const int inside = y0 >= 0 && y0 + span_h < in_h && x0 >= 0 && x0 + span_w < in_w;
                base[t] = inside ? x + ((size_t)y0 * in_w + x0) * channels + c0 : NULL;
                corner[t][0] = y0;
                corner[t][1] = x0;
                whole &= inside;
            }
            const fw_dw_taps k = {src, base, offset};
            int8_t *yb = y + (size_t)pixel0 * channels + c0;
            int c = 0;
            if (whole && byte_products) {
                c = count / 16 * 16;
                depthwise_inner16_neon(taps, &k, c, wb, (size_t)channels, init, mb, sb, &out, yb, tile);
                if (c == count) {
                    continue;
                }
            }
            for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                if (base[t]) {
                    for (int i = 0; i < taps; ++i) {
                        src[t][i] = base[t] + offset[i];
                    }
                } else {
                    depthwise_border_taps(p, x + c0, corner[t][0], corner[t][1], padding, src[t]);
                }
            }
            if (byte_products && !whole) {
                c = count / 16 * 16;
                depthwise_block16_neon(taps, &k, c, wb, (size_t)channels, init, mb, sb, &out, yb, tile);
            }
            for (; c + 16 <= count; c += 16) {
                int32x4_t acc[FW_TILE_PIXELS][4];
                for (int j = 0; j < 4; ++j) {
                    const int32x4_t b = bias ? vld1q_s32(bias + c0 + c + 4 * j) : vdupq_n_s32(0);
                    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                        acc[t][j] = b;
                    }
                }
                /* weights of -128: x - zp widened to int16 */
                for (int i = 0; i < taps; ++i) {
                    const int8x16_t wv = vld1q_s8(wb + (size_t)i * channels + c);
                    const int16x8_t wl = vmovl_s8(vget_low_s8(wv)), wh = vmovl_high_s8(wv);
                    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                        const int8x16_t xv = vld1q_s8(src[t][i] + c);
                        const int16x8_t xl = vsubl_s8(vget_low_s8(xv), vget_low_s8(zp8));
                        const int16x8_t xh = vsubl_high_s8(xv, zp8);
                        acc[t][0] = vmlal_s16(acc[t][0], vget_low_s16(xl), vget_low_s16(wl));
                        acc[t][1] = vmlal_high_s16(acc[t][1], xl, wl);
                        acc[t][2] = vmlal_s16(acc[t][2], vget_low_s16(xh), vget_low_s16(wh));
                        acc[t][3] = vmlal_high_s16(acc[t][3], xh, wh);
                    }
                }
                int32x4_t m[4], sh[4];
                for (int j = 0; j < 4; ++j) {
                    m[j] = vld1q_s32(mb + c + 4 * j);
                    sh[j] = vld1q_s32(sb + c + 4 * j);
                }
                for (int t = 0; t < tile; ++t) {
                    int32x4_t v[4];
                    for (int j = 0; j < 4; ++j) {
                        v[j] = depthwise_requant4_neon(acc[t][j], m[j], sh[j], high);
                    }
                    vst1q_s8(yb + (size_t)t * channels + c, fw_narrow16_neon(v, zpo, lo8, hi8));
                }
            }
            for (; c + 8 <= count; c += 8) {
                int32x4_t acc[FW_TILE_PIXELS][2];
                for (int j = 0; j < 2; ++j) {
                    const int32x4_t b = bias ? vld1q_s32(bias + c0 + c + 4 * j) : vdupq_n_s32(0);
                    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                        acc[t][j] = b;
                    }
                }
                for (int i = 0; i < taps; ++i) {
                    const int16x8_t wl = vmovl_s8(vld1_s8(wb + (size_t)i * channels + c));
                    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                        const int16x8_t xl = vsubl_s8(vld1_s8(src[t][i] + c), vget_low_s8(zp8));
                        acc[t][0] = vmlal_s16(acc[t][0], vget_low_s16(xl), vget_low_s16(wl));
                        acc[t][1] = vmlal_high_s16(acc[t][1], xl, wl);
                    }
                }
                for (int t = 0; t < tile; ++t) {
                    const int32x4_t v0 = depthwise_requant4_neon(acc[t][0], vld1q_s32(mb + c), vld1q_s32(sb + c), high);
                    const int32x4_t v1 =
                        depthwise_requant4_neon(acc[t][1], vld1q_s32(mb + c + 4), vld1q_s32(sb + c + 4), high);
                    vst1_s8(yb + (size_t)t * channels + c, fw_narrow8_neon(v0, v1, zpo, vget_low_s8(lo8), vget_low_s8(hi8)));
                }
            }
            for (; c < count; ++c) {
                for (int t = 0; t < tile; ++t) {
                    int32_t a = bias ? bias[c0 + c] : 0;
                    for (int i = 0; i < taps; ++i) {
                        a += (int16_t)(src[t][i][c] - zero_point) * (int16_t)wb[(size_t)i * channels + c];
                    }
                    const int32_t v = fw_multiply_by_quantized_multiplier(a, mb[c], sb[c]) + output_zero_point;
                    yb[(size_t)t * channels + c] = (int8_t)fw_clamp_s32(v, lo, hi);
                }
            }
        }
    }
}
#endif

void fw_depthwise_conv2d_s8(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int channel_multiplier = p->out_c / p->in_c;
    const int32_t zero_point = p->input_zero_point;
    int32_t acc[FW_CHANNEL_BLOCK];
#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
    if (channel_multiplier == 1 && p->out_c % 8 == 0 && p->kernel_h * p->kernel_w <= FW_DW_TAPS) {
        depthwise_tiles_sse2(p, x, w, bias, multiplier, shift, y);
        return;
    }
#endif
#if defined(FW_NEON)
    if (channel_multiplier == 1 && p->kernel_h * p->kernel_w <= FW_DW_NEON_TAPS) {
        depthwise_tiles_neon(p, x, w, bias, multiplier, shift, y);
        return;
    }
#endif
    if (channel_multiplier == 1) {
        depthwise_tiles(p, x, w, bias, multiplier, shift, y);
        return;
    }
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
                        for (int j = 0; j < count; ++j) {
                            const int16_t xv = (int16_t)(xp[(oc0 + j) / channel_multiplier] - zero_point);
                            acc[j] += (int32_t)(xv * (int16_t)wp[j]);
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

#if defined(FW_X86_DISPATCH) && !defined(FW_VARIANT)
/* The x86-64 dispatch entry (fwedge_rt.h). */
void fw_depthwise_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                     const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int level = fw_x86_level();
    (level == FW_X86_AVX512_VNNI ? fw_depthwise_conv2d_s8_vnni
     : level == FW_X86_AVX2      ? fw_depthwise_conv2d_s8_avx2
                                 : fw_depthwise_conv2d_s8)(p, x, w, bias, multiplier, shift, y);
}
#endif

#if defined(FW_RISCV_DISPATCH) && !defined(FW_VARIANT)
/* The riscv64 dispatch entry (fwedge_rt.h). */
void fw_depthwise_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                     const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    (fw_riscv_level() == FW_RISCV_V ? fw_depthwise_conv2d_s8_rvv : fw_depthwise_conv2d_s8)(p, x, w, bias, multiplier,
                                                                                          shift, y);
}
#endif
