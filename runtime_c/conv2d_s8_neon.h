/* The aarch64 part of conv2d_s8.c (included there when FW_CONV_NEON): the groups == 1 tile
 * gather and tile GEMM on NEON.
 *
 * Both aarch64 kernels read the packed weights in the quad layout [out_c / 8][k / 4][8][4] int8
 * (FW_CONV_K_GROUP 4; the same ROM bytes as the x86 VNNI build's): one 32-byte step holds four
 * filter taps of eight output channels, 16 bytes per four channels. The tile holds the raw int8
 * window values, four consecutive filter values of a pixel per int32 lane, [k / 4][pixel][4];
 * the padding is the input zero point (x - zp = 0 there). The GEMM sums x * w (signed by
 * signed), and sum (x - zp) * w = sum x * w - zp * sum w: the second term, per output channel,
 * is taken off the bias once per call (neon_bias). Everything wraps in int32, so the sums are
 * those of the portable loops exactly.
 * - ARMv8.2 dotprod (FW_CONV_SDOT, the dotprod variant): sdot by lane, one instruction per four
 *   channels, four taps and one pixel.
 * - ARMv8.0 (every aarch64 CPU): ld4r broadcasts the four pixels' quads, smull / smull2 multiply
 *   a quad of four channels with a pixel's quad into eight int16 products (|x * w| <= 2^14 fits)
 *   and sadalp adds their neighbouring pairs into int32 lanes; a final addp makes one lane per
 *   channel. */

/* The input pixel (its in_c values) under tap (ky, kx) of each of the tile's windows: `padding`
 * (in_c copies of the zero point) outside the image and for missing pixels, so the gather has
 * no branch per pixel. */
static void tap_rows(const fw_conv_params *p, const int8_t *x, const int *y0, const int *x0, int pixels, int ky,
                     int kx, const int8_t *padding, const int8_t **base)
{
    tap_bases(p, x, y0, x0, pixels, ky, kx, base);
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        base[t] = base[t] ? base[t] : padding;
    }
}

/* The whole filter of the tile's pixels into tile[k / 4][pixel][4], by kernel rows and
 * columns. in_c % 4 == 0: whole quads per tap, 16 channels of the four pixels per st4 (which
 * interleaves the four loads' int32 lanes into exactly the [pixel][4] rows), then 8, then 4;
 * other in_c: byte by byte. Values past the filter are left as they are (their weights are 0).
 * `padding`: at least in_c bytes of the zero point. */
static void gather_quads_neon(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels,
                              const int8_t *padding, int8_t *tile)
{
    const int in_c = p->in_c;
    int y0[FW_TILE_PIXELS], x0[FW_TILE_PIXELS];
    const int8_t *base[FW_TILE_PIXELS];
    tile_origins(p, pixel0, pixels, y0, x0);
    int k = 0;
    for (int ky = 0; ky < p->kernel_h; ++ky) {
        for (int kx = 0; kx < p->kernel_w; ++kx) {
            tap_rows(p, x, y0, x0, pixels, ky, kx, padding, base);
            if (in_c % 4 != 0) {
                for (int c = 0; c < in_c; ++c, ++k) {
                    int8_t *quad = tile + (k >> 2) * 4 * FW_TILE_PIXELS + (k & 3);
                    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                        quad[4 * t] = base[t][c];
                    }
                }
                continue;
            }
            int8_t *out = tile + (size_t)k * FW_TILE_PIXELS;
            int c = 0;
            for (; c + 16 <= in_c; c += 16, out += 64) {
                int32x4x4_t v;
                v.val[0] = vreinterpretq_s32_s8(vld1q_s8(base[0] + c));
                v.val[1] = vreinterpretq_s32_s8(vld1q_s8(base[1] + c));
                v.val[2] = vreinterpretq_s32_s8(vld1q_s8(base[2] + c));
                v.val[3] = vreinterpretq_s32_s8(vld1q_s8(base[3] + c));
                vst4q_s32((int32_t *)out, v);
            }
            for (; c + 8 <= in_c; c += 8, out += 32) {
                int32x2x4_t v;
                v.val[0] = vreinterpret_s32_s8(vld1_s8(base[0] + c));
                v.val[1] = vreinterpret_s32_s8(vld1_s8(base[1] + c));
                v.val[2] = vreinterpret_s32_s8(vld1_s8(base[2] + c));
                v.val[3] = vreinterpret_s32_s8(vld1_s8(base[3] + c));
                vst4_s32((int32_t *)out, v);
            }
            for (; c < in_c; c += 4, out += 16) {
                for (int t = 0; t < FW_TILE_PIXELS; ++t) {
                    memcpy(out + 4 * t, base[t] + c, 4);
                }
            }
            k += in_c;
        }
    }
}

/* Window values [k0, k0 + count) of the tile's pixels, raw (gather_window, then + zp), the
 * last quad's tail 0: filters longer than FW_K_CHUNK. */
static void gather_quads_chunk(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int k0, int count,
                               int16_t *line, int8_t *tile)
{
    const int padded = (count + 3) / 4 * 4;
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        if (t < pixels) {
            gather_window(p, x, pixel0 + t, k0, count, line);
        } else {
            memset(line, 0, (size_t)count * sizeof *line);
        }
        for (int i = 0; i < padded; ++i) {
            const int v = i < count ? line[i] + p->input_zero_point : 0;
            tile[(i >> 2) * 4 * FW_TILE_PIXELS + 4 * t + (i & 3)] = (int8_t)v;
        }
    }
}

/* One input channel, stride 1 along x, four pixels of one output row (one_channel_rows): tap k
 * of the four pixels is four consecutive input bytes. Four taps' words, one tbl, one tile row.
 * Returns 0 (nothing written) for any other tile. */
static int gather_quads_one_channel(const fw_conv_params *p, const int8_t *x, int pixel0, int pixels, int8_t *tile)
{
    int8_t patch[FW_ONE_CHANNEL_PATCH];
    const int8_t *base;
    ptrdiff_t row_step;
    if (!one_channel_rows(p, x, pixel0, pixels, patch, &base, &row_step)) {
        return 0;
    }
    /* byte 4 * t + e of a tile row is byte t of tap e's word */
    static const uint8_t order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    const uint8x16_t shuffle = vld1q_u8(order);
    const int taps = p->kernel_h * p->kernel_w;
    int ky = 0, kx = 0;
    for (int k = 0; k < taps; k += 4) {
        int32_t words[4] = {0, 0, 0, 0}; /* past the last tap the weights are 0: any value will do */
        for (int e = 0; e < 4 && k + e < taps; ++e) {
            memcpy(&words[e], base + ky * row_step + kx, 4);
            if (++kx == p->kernel_w) {
                kx = 0;
                ++ky;
            }
        }
        vst1q_s8(tile + 4 * k, vreinterpretq_s8_u8(vqtbl1q_u8(vreinterpretq_u8_s32(vld1q_s32(words)), shuffle)));
    }
    return 1;
}

/* biases[j] -= zp * (sum of the weights of channel j), for the `blocks` blocks at w (`quads`
 * quad steps each): the raw tile's offset, off the bias once per call. saddlp pairs a
 * channel's four bytes into two int16, sadalp adds those into the channel's int32 lane. */
static void neon_bias(const fw_conv_params *p, const fw_conv_weight *w, int quads, int blocks, int32_t *biases)
{
    const int32x4_t zero_point = vdupq_n_s32(p->input_zero_point);
    for (int b = 0; b < blocks; ++b) {
        int32x4_t low = vdupq_n_s32(0), high = low;
        for (int q = 0; q < quads; ++q) {
            const int8_t *step = w + ((size_t)b * quads + q) * 32;
            low = vpadalq_s16(low, vpaddlq_s8(vld1q_s8(step)));
            high = vpadalq_s16(high, vpaddlq_s8(vld1q_s8(step + 16)));
        }
        int32_t *bias = biases + b * FW_CONV_BLOCK;
        vst1q_s32(bias, vmlsq_s32(vld1q_s32(bias), low, zero_point));
        vst1q_s32(bias + 4, vmlsq_s32(vld1q_s32(bias + 4), high, zero_point));
    }
}

#ifdef FW_CONV_SDOT
/* acc[t * 8 + j] = sum over the quad steps of tile x w (see tile_gemm), sdot by lane: lane t of
 * the step's tile row is pixel t's quad. */
static void tile_gemm_neon(int steps, const int8_t *tile, const fw_conv_weight *w, int32_t *acc)
{
    int32x4_t a0 = vdupq_n_s32(0), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    for (int i = 0; i < steps; ++i) {
        const int8x16_t xv = vld1q_s8(tile + 16 * i);
        const int8x16_t lo = vld1q_s8(w + 32 * i), hi = vld1q_s8(w + 32 * i + 16);
        a0 = vdotq_laneq_s32(a0, lo, xv, 0);
        b0 = vdotq_laneq_s32(b0, hi, xv, 0);
        a1 = vdotq_laneq_s32(a1, lo, xv, 1);
        b1 = vdotq_laneq_s32(b1, hi, xv, 1);
        a2 = vdotq_laneq_s32(a2, lo, xv, 2);
        b2 = vdotq_laneq_s32(b2, hi, xv, 2);
        a3 = vdotq_laneq_s32(a3, lo, xv, 3);
        b3 = vdotq_laneq_s32(b3, hi, xv, 3);
    }
    vst1q_s32(acc + 0, a0);
    vst1q_s32(acc + 4, b0);
    vst1q_s32(acc + 8, a1);
    vst1q_s32(acc + 12, b1);
    vst1q_s32(acc + 16, a2);
    vst1q_s32(acc + 20, b2);
    vst1q_s32(acc + 24, a3);
    vst1q_s32(acc + 28, b3);
}

/* tile_gemm_neon of two neighbouring channel blocks (w0, w1): each tile row serves sixteen
 * channels, sixteen accumulators in registers. */
static void tile_gemm2_neon(int steps, const int8_t *tile, const fw_conv_weight *w0, const fw_conv_weight *w1,
                            int32_t *acc0, int32_t *acc1)
{
    int32x4_t a[FW_TILE_PIXELS][4]; /* pixel, then channels 0-3, 4-7 of w0 and of w1 */
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        a[t][0] = a[t][1] = a[t][2] = a[t][3] = vdupq_n_s32(0);
    }
    for (int i = 0; i < steps; ++i) {
        const int8x16_t xv = vld1q_s8(tile + 16 * i);
        const int8x16_t w[4] = {vld1q_s8(w0 + 32 * i), vld1q_s8(w0 + 32 * i + 16), vld1q_s8(w1 + 32 * i),
                                vld1q_s8(w1 + 32 * i + 16)};
        for (int j = 0; j < 4; ++j) {
            a[0][j] = vdotq_laneq_s32(a[0][j], w[j], xv, 0);
            a[1][j] = vdotq_laneq_s32(a[1][j], w[j], xv, 1);
            a[2][j] = vdotq_laneq_s32(a[2][j], w[j], xv, 2);
            a[3][j] = vdotq_laneq_s32(a[3][j], w[j], xv, 3);
        }
    }
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        vst1q_s32(acc0 + t * FW_CONV_BLOCK, a[t][0]);
        vst1q_s32(acc0 + t * FW_CONV_BLOCK + 4, a[t][1]);
        vst1q_s32(acc1 + t * FW_CONV_BLOCK, a[t][2]);
        vst1q_s32(acc1 + t * FW_CONV_BLOCK + 4, a[t][3]);
    }
}
#else
/* acc + the products of a pixel's broadcast quad x with a quad w of four channels: smull and
 * smull2 (eight int16 products each: two channels' four taps), sadalp (pairs into int32). */
#define FW_QUAD_PRODUCTS(acc_lo, acc_hi, w, x)                                                   \
    do {                                                                                       \
        acc_lo = vpadalq_s16(acc_lo, vmull_s8(vget_low_s8(w), vget_low_s8(x)));                  \
        acc_hi = vpadalq_s16(acc_hi, vmull_high_s8(w, x));                                       \
    } while (0)

/* acc[t * 8 + j] = sum over the quad steps of tile x w (see tile_gemm), ARMv8.0: per pixel four
 * accumulators of two channels' two pair sums each, folded to one lane per channel at the end. */
static void tile_gemm_neon(int steps, const int8_t *tile, const fw_conv_weight *w, int32_t *acc)
{
    int32x4_t a[FW_TILE_PIXELS][4]; /* pixel, then channels 0-1, 2-3, 4-5, 6-7 */
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        a[t][0] = a[t][1] = a[t][2] = a[t][3] = vdupq_n_s32(0);
    }
    for (int i = 0; i < steps; ++i) {
        const int32x4x4_t x = vld4q_dup_s32((const int32_t *)(tile + 16 * i)); /* x.val[t]: pixel t's quad */
        const int8x16_t lo = vld1q_s8(w + 32 * i), hi = vld1q_s8(w + 32 * i + 16);
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const int8x16_t xt = vreinterpretq_s8_s32(x.val[t]);
            FW_QUAD_PRODUCTS(a[t][0], a[t][1], lo, xt);
            FW_QUAD_PRODUCTS(a[t][2], a[t][3], hi, xt);
        }
    }
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        vst1q_s32(acc + t * FW_CONV_BLOCK, vpaddq_s32(a[t][0], a[t][1]));
        vst1q_s32(acc + t * FW_CONV_BLOCK + 4, vpaddq_s32(a[t][2], a[t][3]));
    }
}
#undef FW_QUAD_PRODUCTS
#endif
