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
 * channel's four bytes into two int16, sadalp adds those into the channel's int32 lane; with dotprod
 * one sdot with ones sums them. Returns, in the ARMv8.0 build, 1 when no weight is -128 (then
 * tile_sums_neon may add two products in int16: see there), else 0. */
static int neon_bias(const fw_conv_params *p, const fw_conv_weight *w, int quads, int blocks, int32_t *biases)
{
    const int32x4_t zero_point = vdupq_n_s32(p->input_zero_point);
    int8x16_t least = vdupq_n_s8(127);
    for (int b = 0; b < blocks; ++b) {
        int32x4_t low = vdupq_n_s32(0), high = low;
        int q = 0;
#ifdef FW_CONV_SDOT
        /* sdot with ones: a channel's four bytes summed into its lane, two steps per load */
        const int8x16_t ones = vdupq_n_s8(1);
        for (; q + 2 <= quads; q += 2) {
            const int8x16x4_t v = vld1q_s8_x4(w + ((size_t)b * quads + q) * 32);
            low = vdotq_s32(vdotq_s32(low, v.val[0], ones), v.val[2], ones);
            high = vdotq_s32(vdotq_s32(high, v.val[1], ones), v.val[3], ones);
        }
#endif
        for (; q < quads; ++q) {
            const int8_t *step = w + ((size_t)b * quads + q) * 32;
            const int8x16_t lo = vld1q_s8(step), hi = vld1q_s8(step + 16);
            low = vpadalq_s16(low, vpaddlq_s8(lo));
            high = vpadalq_s16(high, vpaddlq_s8(hi));
            least = vminq_s8(least, vminq_s8(lo, hi));
        }
        int32_t *bias = biases + b * FW_CONV_BLOCK;
        vst1q_s32(bias, vmlsq_s32(vld1q_s32(bias), low, zero_point));
        vst1q_s32(bias + 4, vmlsq_s32(vld1q_s32(bias + 4), high, zero_point));
    }
#ifdef FW_CONV_SDOT
    (void)least;
    return 0;
#else
    return vminvq_s8(least) > -128;
#endif
}

/* The sums of a tile of four pixels and eight channels in registers: v[t][0] holds channels 0-3
 * of pixel t, v[t][1] channels 4-7. */
typedef struct {
    int32x4_t v[FW_TILE_PIXELS][2];
} fw_tile_sums;

#ifdef FW_CONV_SDOT
/* init (eight channels' biases, or NULL for 0) plus the sums over the quad steps of tile x w
 * (see tile_gemm), sdot by lane: lane t of the step's tile row is pixel t's quad. */
static inline void tile_sums_neon(int steps, const int8_t *tile, const fw_conv_weight *w, const int32_t *init,
                                  int pairs, fw_tile_sums *s)
{
    (void)pairs; /* sdot adds into int32 directly */
    const int32x4_t lo0 = init ? vld1q_s32(init) : vdupq_n_s32(0), hi0 = init ? vld1q_s32(init + 4) : vdupq_n_s32(0);
    int32x4_t a0 = lo0, b0 = hi0, a1 = lo0, b1 = hi0, a2 = lo0, b2 = hi0, a3 = lo0, b3 = hi0;
#define FW_SDOT_STEP1(lo, hi, xv)                                                              \
    do {                                                                                       \
        a0 = vdotq_laneq_s32(a0, lo, xv, 0);                                                   \
        b0 = vdotq_laneq_s32(b0, hi, xv, 0);                                                   \
        a1 = vdotq_laneq_s32(a1, lo, xv, 1);                                                   \
        b1 = vdotq_laneq_s32(b1, hi, xv, 1);                                                   \
        a2 = vdotq_laneq_s32(a2, lo, xv, 2);                                                   \
        b2 = vdotq_laneq_s32(b2, hi, xv, 2);                                                   \
        a3 = vdotq_laneq_s32(a3, lo, xv, 3);                                                   \
        b3 = vdotq_laneq_s32(b3, hi, xv, 3);                                                   \
    } while (0)
    const int8_t *x = tile, *p = w; /* two quad steps per iteration, as tile_sums2_neon */
    for (int i = steps >> 1; i > 0; --i) {
        const int8x16x2_t xv = vld1q_s8_x2(x);
        const int8x16x4_t u = vld1q_s8_x4(p);
        x += 32;
        p += 64;
        FW_SDOT_STEP1(u.val[0], u.val[1], xv.val[0]);
        FW_SDOT_STEP1(u.val[2], u.val[3], xv.val[1]);
    }
    if (steps & 1) {
        FW_SDOT_STEP1(vld1q_s8(p), vld1q_s8(p + 16), vld1q_s8(x));
    }
#undef FW_SDOT_STEP1
    s->v[0][0] = a0;
    s->v[0][1] = b0;
    s->v[1][0] = a1;
    s->v[1][1] = b1;
    s->v[2][0] = a2;
    s->v[2][1] = b2;
    s->v[3][0] = a3;
    s->v[3][1] = b3;
}

/* One quad step of tile_sums2_neon: tile row xv, the four weight quads w[0..3]. */
#define FW_SDOT_STEP(a, w, xv)                                                                 \
    do {                                                                                       \
        for (int j = 0; j < 4; ++j) {                                                          \
            a[0][j] = vdotq_laneq_s32(a[0][j], w[j], xv, 0);                                   \
            a[1][j] = vdotq_laneq_s32(a[1][j], w[j], xv, 1);                                   \
            a[2][j] = vdotq_laneq_s32(a[2][j], w[j], xv, 2);                                   \
            a[3][j] = vdotq_laneq_s32(a[3][j], w[j], xv, 3);                                   \
        }                                                                                      \
    } while (0)

/* The sixteen accumulators of two blocks' tile (a[pixel][0..1]: w0's channels 0-3, 4-7; [2..3]:
 * w1's) set to the blocks' biases, init0 and init1 (!two: one block, init1 unread, the other two
 * as init0's). `two` is a constant at each call. */
static inline __attribute__((always_inline)) void acc16_init(int32x4_t (*a)[4], const int32_t *init0,
                                                             const int32_t *init1, int two)
{
    const int32x4_t b0 = vld1q_s32(init0), b1 = vld1q_s32(init0 + 4);
    const int32x4_t b2 = two ? vld1q_s32(init1) : b0, b3 = two ? vld1q_s32(init1 + 4) : b1;
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        a[t][0] = b0;
        a[t][1] = b1;
        a[t][2] = b2;
        a[t][3] = b3;
    }
}

/* acc16_init's accumulators out to the two blocks' sums. */
static inline __attribute__((always_inline)) void acc16_split(int32x4_t (*a)[4], fw_tile_sums *s0, fw_tile_sums *s1)
{
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        s0->v[t][0] = a[t][0];
        s0->v[t][1] = a[t][1];
        s1->v[t][0] = a[t][2];
        s1->v[t][1] = a[t][3];
    }
}

/* tile_sums_neon of two neighbouring channel blocks (w0, w1, their biases init0, init1): each
 * tile row serves sixteen channels, sixteen accumulators in registers. Two quad steps per
 * iteration, the three pointers bumped as they are read (post-indexed loads): five loads, 32
 * sdot and the loop's own two instructions. */
static inline void tile_sums2_neon(int steps, const int8_t *tile, const fw_conv_weight *w0, const fw_conv_weight *w1,
                                   const int32_t *init0, const int32_t *init1, fw_tile_sums *s0, fw_tile_sums *s1)
{
    int32x4_t a[FW_TILE_PIXELS][4]; /* pixel, then channels 0-3, 4-7 of w0 and of w1 */
    acc16_init(a, init0, init1, 1);
    const int8_t *x = tile, *p0 = w0, *p1 = w1;
    for (int i = steps >> 1; i > 0; --i) {
        const int8x16x2_t xv = vld1q_s8_x2(x);
        const int8x16x4_t u = vld1q_s8_x4(p0), v = vld1q_s8_x4(p1);
        x += 32;
        p0 += 64;
        p1 += 64;
        const int8x16_t first[4] = {u.val[0], u.val[1], v.val[0], v.val[1]};
        const int8x16_t second[4] = {u.val[2], u.val[3], v.val[2], v.val[3]};
        FW_SDOT_STEP(a, first, xv.val[0]);
        FW_SDOT_STEP(a, second, xv.val[1]);
    }
    if (steps & 1) {
        const int8x16_t xv = vld1q_s8(x);
        const int8x16_t w[4] = {vld1q_s8(p0), vld1q_s8(p0 + 16), vld1q_s8(p1), vld1q_s8(p1 + 16)};
        FW_SDOT_STEP(a, w, xv);
    }
    acc16_split(a, s0, s1);
}

#undef FW_SDOT_STEP

/* sdot by lane `lane` of each pixel's register x0..x3 (its own channel values, four per lane)
 * into the accumulators of w0's two quads (and w1's when `two`). */
#define FW_DIRECT_STEP(vdot, lane, wl0, wh0, wl1, wh1)                                         \
    do {                                                                                       \
        a[0][0] = vdot(a[0][0], wl0, x0, lane);                                                \
        a[0][1] = vdot(a[0][1], wh0, x0, lane);                                                \
        a[1][0] = vdot(a[1][0], wl0, x1, lane);                                                \
        a[1][1] = vdot(a[1][1], wh0, x1, lane);                                                \
        a[2][0] = vdot(a[2][0], wl0, x2, lane);                                                \
        a[2][1] = vdot(a[2][1], wh0, x2, lane);                                                \
        a[3][0] = vdot(a[3][0], wl0, x3, lane);                                                \
        a[3][1] = vdot(a[3][1], wh0, x3, lane);                                                \
        if (two) {                                                                             \
            a[0][2] = vdot(a[0][2], wl1, x0, lane);                                            \
            a[0][3] = vdot(a[0][3], wh1, x0, lane);                                            \
            a[1][2] = vdot(a[1][2], wl1, x1, lane);                                            \
            a[1][3] = vdot(a[1][3], wh1, x1, lane);                                            \
            a[2][2] = vdot(a[2][2], wl1, x2, lane);                                            \
            a[2][3] = vdot(a[2][3], wh1, x2, lane);                                            \
            a[3][2] = vdot(a[3][2], wl1, x3, lane);                                            \
            a[3][3] = vdot(a[3][3], wh1, x3, lane);                                            \
        }                                                                                      \
    } while (0)

/* The sums of tile_sums2_neon (tile_sums_neon's of w0 alone when !two) read straight from four
 * pixels' channel rows (r, rows x_stride bytes apart) instead of a gathered tile: a 1x1 conv of
 * stride 1 without padding, whose window is the pixel's in_c values and whose quad steps are
 * its channels four by four. Lane j of a pixel's 16-byte load is its step q + j, so no
 * transposition is needed; four steps per iteration, then two (8-byte loads), then one. The
 * same int32 terms as the tile's, added in another order: the same wrapped sums. */
static inline __attribute__((always_inline)) void
direct_sums_neon(int steps, const int8_t *r, size_t x_stride, const fw_conv_weight *w0, const fw_conv_weight *w1,
                 const int32_t *init0, const int32_t *init1, int two, fw_tile_sums *s0, fw_tile_sums *s1)
{
    int32x4_t a[FW_TILE_PIXELS][4];
    acc16_init(a, init0, init1, two);
    const int8_t *r0 = r, *r1 = r + x_stride, *r2 = r + 2 * x_stride, *r3 = r + 3 * x_stride;
    const int8_t *p0 = w0, *p1 = two ? w1 : w0;
    for (int i = steps >> 2; i > 0; --i) {
        const int8x16_t x0 = vld1q_s8(r0), x1 = vld1q_s8(r1), x2 = vld1q_s8(r2), x3 = vld1q_s8(r3);
        r0 += 16;
        r1 += 16;
        r2 += 16;
        r3 += 16;
        const int8x16x4_t u = vld1q_s8_x4(p0), v = two ? vld1q_s8_x4(p1) : u;
        FW_DIRECT_STEP(vdotq_laneq_s32, 0, u.val[0], u.val[1], v.val[0], v.val[1]);
        FW_DIRECT_STEP(vdotq_laneq_s32, 1, u.val[2], u.val[3], v.val[2], v.val[3]);
        const int8x16x4_t u2 = vld1q_s8_x4(p0 + 64), v2 = two ? vld1q_s8_x4(p1 + 64) : u2;
        p0 += 128;
        p1 += 128;
        FW_DIRECT_STEP(vdotq_laneq_s32, 2, u2.val[0], u2.val[1], v2.val[0], v2.val[1]);
        FW_DIRECT_STEP(vdotq_laneq_s32, 3, u2.val[2], u2.val[3], v2.val[2], v2.val[3]);
    }
    if (steps & 2) {
        const int8x8_t x0 = vld1_s8(r0), x1 = vld1_s8(r1), x2 = vld1_s8(r2), x3 = vld1_s8(r3);
        r0 += 8;
        r1 += 8;
        r2 += 8;
        r3 += 8;
        const int8x16x4_t u = vld1q_s8_x4(p0), v = two ? vld1q_s8_x4(p1) : u;
        p0 += 64;
        p1 += 64;
        FW_DIRECT_STEP(vdotq_lane_s32, 0, u.val[0], u.val[1], v.val[0], v.val[1]);
        FW_DIRECT_STEP(vdotq_lane_s32, 1, u.val[2], u.val[3], v.val[2], v.val[3]);
    }
    if (steps & 1) {
        int32_t q[FW_TILE_PIXELS];
        memcpy(&q[0], r0, 4);
        memcpy(&q[1], r1, 4);
        memcpy(&q[2], r2, 4);
        memcpy(&q[3], r3, 4);
        const int8x8_t x0 = vreinterpret_s8_s32(vdup_n_s32(q[0])), x1 = vreinterpret_s8_s32(vdup_n_s32(q[1]));
        const int8x8_t x2 = vreinterpret_s8_s32(vdup_n_s32(q[2])), x3 = vreinterpret_s8_s32(vdup_n_s32(q[3]));
        const int8x16_t wl0 = vld1q_s8(p0), wh0 = vld1q_s8(p0 + 16);
        const int8x16_t wl1 = two ? vld1q_s8(p1) : wl0, wh1 = two ? vld1q_s8(p1 + 16) : wh0;
        FW_DIRECT_STEP(vdotq_lane_s32, 0, wl0, wh0, wl1, wh1);
    }
    acc16_split(a, s0, s1);
}

#undef FW_DIRECT_STEP
#else
/* acc + the products of a pixel's broadcast quad x with a quad w of four channels: smull and
 * smull2 (eight int16 products each: two channels' four taps), sadalp (pairs into int32). */
#define FW_QUAD_PRODUCTS(acc_lo, acc_hi, w, x)                                                   \
    do {                                                                                       \
        acc_lo = vpadalq_s16(acc_lo, vmull_s8(vget_low_s8(w), vget_low_s8(x)));                  \
        acc_hi = vpadalq_s16(acc_hi, vmull_high_s8(w, x));                                       \
    } while (0)

/* acc + the products of two quad steps at once, weights w, u and pixel quads x, z: the two
 * steps' int16 products added in int16 (SMULL, then SMLAL) before the pair add into int32.
 * Exact when no weight is -128: |x * w| <= 128 * 127, two such sums fit int16. */
#define FW_QUAD_PRODUCTS2(acc_lo, acc_hi, w, x, u, z)                                            \
    do {                                                                                       \
        acc_lo = vpadalq_s16(acc_lo, vmlal_s8(vmull_s8(vget_low_s8(w), vget_low_s8(x)), vget_low_s8(u), vget_low_s8(z))); \
        acc_hi = vpadalq_s16(acc_hi, vmlal_high_s8(vmull_high_s8(w, x), u, z));                  \
    } while (0)

/* The sums over the quad steps of tile x w of two of the tile's pixels (tile points at the
 * first one's quad of step 0): per pixel four accumulators of two channels' two pair sums each,
 * folded to one lane per channel at the end, plus init (eight channels' biases, or NULL for 0),
 * to out[pixel][2]. `pairs` (no weight is -128: neon_bias) takes two steps per iteration with
 * FW_QUAD_PRODUCTS2: 12 multiply-adds per pixel and two steps instead of 16. Two pixels at a
 * time, in a function of its own: eight accumulators, the weights and the products fit the
 * registers (with all four pixels' sixteen accumulators the compiler ran out of them and spilled
 * a third of the loop to the stack). */
static __attribute__((noinline)) void pixel_pair_sums_neon(int steps, const int8_t *tile, const fw_conv_weight *w,
                                                           const int32_t *init, int pairs, int32x4_t (*out)[2])
{
    int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int i = 0;
    if (pairs) {
        for (; i + 2 <= steps; i += 2) {
            const int32x4x2_t x = vld2q_dup_s32((const int32_t *)(tile + 16 * i)); /* x.val[t]: pixel t's quad */
            const int32x4x2_t z = vld2q_dup_s32((const int32_t *)(tile + 16 * i + 16));
            const int8x16x4_t v = vld1q_s8_x4(w + 32 * i); /* step i's two halves, then step i + 1's */
            const int8x16_t x0 = vreinterpretq_s8_s32(x.val[0]), z0 = vreinterpretq_s8_s32(z.val[0]);
            const int8x16_t x1 = vreinterpretq_s8_s32(x.val[1]), z1 = vreinterpretq_s8_s32(z.val[1]);
            FW_QUAD_PRODUCTS2(a0, a1, v.val[0], x0, v.val[2], z0);
            FW_QUAD_PRODUCTS2(a2, a3, v.val[1], x0, v.val[3], z0);
            FW_QUAD_PRODUCTS2(b0, b1, v.val[0], x1, v.val[2], z1);
            FW_QUAD_PRODUCTS2(b2, b3, v.val[1], x1, v.val[3], z1);
        }
    }
    for (; i < steps; ++i) {
        const int32x4x2_t x = vld2q_dup_s32((const int32_t *)(tile + 16 * i));
        const int8x16_t lo = vld1q_s8(w + 32 * i), hi = vld1q_s8(w + 32 * i + 16);
        const int8x16_t x0 = vreinterpretq_s8_s32(x.val[0]), x1 = vreinterpretq_s8_s32(x.val[1]);
        FW_QUAD_PRODUCTS(a0, a1, lo, x0);
        FW_QUAD_PRODUCTS(a2, a3, hi, x0);
        FW_QUAD_PRODUCTS(b0, b1, lo, x1);
        FW_QUAD_PRODUCTS(b2, b3, hi, x1);
    }
    const int32x4_t lo0 = init ? vld1q_s32(init) : vdupq_n_s32(0), hi0 = init ? vld1q_s32(init + 4) : vdupq_n_s32(0);
    out[0][0] = vaddq_s32(vpaddq_s32(a0, a1), lo0);
    out[0][1] = vaddq_s32(vpaddq_s32(a2, a3), hi0);
    out[1][0] = vaddq_s32(vpaddq_s32(b0, b1), lo0);
    out[1][1] = vaddq_s32(vpaddq_s32(b2, b3), hi0);
}

/* The sums over the quad steps of tile x w (see tile_gemm), ARMv8.0, two pixels at a time
 * (pixel_pair_sums_neon), plus init. */
static inline void tile_sums_neon(int steps, const int8_t *tile, const fw_conv_weight *w, const int32_t *init,
                                  int pairs, fw_tile_sums *s)
{
    pixel_pair_sums_neon(steps, tile, w, init, pairs, s->v);
    pixel_pair_sums_neon(steps, tile + 8, w, init, pairs, s->v + 2);
}

#undef FW_QUAD_PRODUCTS2
#undef FW_QUAD_PRODUCTS
#endif

/* acc[t * 8 + j] = the tile's sums (tile_sums_neon): the chunked path, which adds the chunks. */
static void tile_gemm_neon(int steps, const int8_t *tile, const fw_conv_weight *w, int32_t *acc)
{
    fw_tile_sums s;
    tile_sums_neon(steps, tile, w, NULL, 0, &s);
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        vst1q_s32(acc + t * FW_CONV_BLOCK, s.v[t][0]);
        vst1q_s32(acc + t * FW_CONV_BLOCK + 4, s.v[t][1]);
    }
}

/* Requantization constants of one conv call in the form neon_requant_store reads: `high` when
 * every channel has a total shift s >= 32 (SQDMULH, then SRSHL by 31 - s: requant_neon.h),
 * else the 64-bit products for all (SRSHL by -s); the output zero point added on int16 with
 * saturation (exact: a sum that saturates int16 lies outside int8 on the same side, so the
 * int8 narrowing gives the same value) and the clamp on int8. */
typedef struct {
    int high;
    int16x8_t zero_point;
    int8x16_t lo, hi;
} fw_neon_out;

/* Multipliers, shifts (as SRSHL amounts, see fw_neon_out) and biases (zp * the weight sums taken
 * off: the tile holds raw values) of output channels [c0, c0 + 8 * count) at w; returns
 * neon_bias's flag (no weight of these channels is -128). */
static int neon_constants(const fw_conv_params *p, const fw_conv_weight *w, int steps, int c0, int count, int high,
                          const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int32_t *m,
                          int32_t *sh, int32_t *b)
{
    fw_requant_channels(p, bias, multiplier, shift, c0, count * FW_CONV_BLOCK, m, sh, b);
    const int pairs = neon_bias(p, w, steps, count, b);
    for (int j = 0; j < count * FW_CONV_BLOCK; ++j) {
        sh[j] = high ? 31 - sh[j] : -sh[j];
    }
    return pairs;
}

/* The tile's sums (their bias included: tile_sums_neon's init), requantized (fw_neon_out), and its first `pixels` rows' first
 * `channels` values stored to y, rows y_stride bytes apart: TFLite's rounding exactly, as
 * fw_requant_tile. */
static inline void neon_requant_store(const fw_tile_sums *s, const int32_t *m, const int32_t *sh, const fw_neon_out *o,
                                      int8_t *y, size_t y_stride, int pixels, int channels)
{
    const int32x4_t m0 = vld1q_s32(m), m1 = vld1q_s32(m + 4), sh0 = vld1q_s32(sh), sh1 = vld1q_s32(sh + 4);
    int16x8_t r[FW_TILE_PIXELS];
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        int32x4_t x0 = s->v[t][0], x1 = s->v[t][1];
        if (o->high) {
            x0 = fw_requant4_neon_high(x0, m0, sh0);
            x1 = fw_requant4_neon_high(x1, m1, sh1);
        } else {
            x0 = fw_requant4_neon_wide(x0, m0, vmovl_s32(vget_low_s32(sh0)), vmovl_high_s32(sh0));
            x1 = fw_requant4_neon_wide(x1, m1, vmovl_s32(vget_low_s32(sh1)), vmovl_high_s32(sh1));
        }
        r[t] = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(x0), x1), o->zero_point);
    }
    const int8x16_t rows01 = vminq_s8(vmaxq_s8(vqmovn_high_s16(vqmovn_s16(r[0]), r[1]), o->lo), o->hi);
    const int8x16_t rows23 = vminq_s8(vmaxq_s8(vqmovn_high_s16(vqmovn_s16(r[2]), r[3]), o->lo), o->hi);
    if (channels == FW_CONV_BLOCK && pixels == FW_TILE_PIXELS) {
        vst1_s8(y, vget_low_s8(rows01));
        vst1_s8(y + y_stride, vget_high_s8(rows01));
        vst1_s8(y + 2 * y_stride, vget_low_s8(rows23));
        vst1_s8(y + 3 * y_stride, vget_high_s8(rows23));
        return;
    }
    int8_t out[FW_TILE_PIXELS * FW_CONV_BLOCK];
    vst1q_s8(out, rows01);
    vst1q_s8(out + 16, rows23);
    for (int t = 0; t < pixels; ++t) {
        memcpy(y + t * y_stride, out + t * FW_CONV_BLOCK, (size_t)channels);
    }
}

/* Pixel t of two neighbouring blocks' sums (s0: channels 0-7, s1: 8-15) requantized, sixteen
 * int8 in one register: the values neon_requant_store gives, lane for lane. */
static inline __attribute__((always_inline)) int8x16_t
neon_requant_pixel16(const fw_tile_sums *s0, const fw_tile_sums *s1, int t, const int32x4x4_t *m, const int32x4x4_t *sh,
                     const fw_neon_out *o, int high)
{
    int32x4_t x[4] = {s0->v[t][0], s0->v[t][1], s1->v[t][0], s1->v[t][1]};
    for (int j = 0; j < 4; ++j) {
        x[j] = high ? fw_requant4_neon_high(x[j], m->val[j], sh->val[j])
                       : fw_requant4_neon_wide(x[j], m->val[j], vmovl_s32(vget_low_s32(sh->val[j])),
                                               vmovl_high_s32(sh->val[j]));
    }
    const int16x8_t r0 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(x[0]), x[1]), o->zero_point);
    const int16x8_t r1 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(x[2]), x[3]), o->zero_point);
    return vminq_s8(vmaxq_s8(vqmovn_high_s16(vqmovn_s16(r0), r1), o->lo), o->hi);
}

/* Each pixel of a whole tile of two neighbouring blocks' sums requantized (constants m, sh) and
 * its sixteen channels stored with one instruction, rows y_stride bytes apart. */
static inline __attribute__((always_inline)) void neon_store16(const fw_tile_sums *s0, const fw_tile_sums *s1,
                                                               const int32_t *m, const int32_t *sh,
                                                               const fw_neon_out *o, int high, int8_t *y,
                                                               size_t y_stride)
{
    const int32x4x4_t mv = vld1q_s32_x4(m), shv = vld1q_s32_x4(sh);
    vst1q_s8(y, neon_requant_pixel16(s0, s1, 0, &mv, &shv, o, high));
    vst1q_s8(y + y_stride, neon_requant_pixel16(s0, s1, 1, &mv, &shv, o, high));
    vst1q_s8(y + 2 * y_stride, neon_requant_pixel16(s0, s1, 2, &mv, &shv, o, high));
    vst1q_s8(y + 3 * y_stride, neon_requant_pixel16(s0, s1, 3, &mv, &shv, o, high));
}

/* A whole tile of two neighbouring channel blocks (sixteen channels, w0 and w1, their biases b0,
 * b1, constants m and sh): the sums (with sdot in registers, tile_sums2_neon; else
 * tile_sums_neon of each block, `pairs` as there), then each pixel's sixteen channels
 * requantized and stored with one instruction. `high` is o->high, a constant at each call, so
 * the form is chosen once and not per pixel. */
static inline __attribute__((always_inline)) void
conv_tile16_neon(int steps, const int8_t *tile, const fw_conv_weight *w0, const fw_conv_weight *w1, const int32_t *b0,
                 const int32_t *b1, const int32_t *m, const int32_t *sh, const fw_neon_out *o, int high, int pairs,
                 int8_t *y, size_t y_stride)
{
    fw_tile_sums s0, s1;
#ifdef FW_CONV_SDOT
    (void)pairs;
    tile_sums2_neon(steps, tile, w0, w1, b0, b1, &s0, &s1);
#else
    tile_sums_neon(steps, tile, w0, b0, pairs, &s0);
    tile_sums_neon(steps, tile, w1, b1, pairs, &s1);
#endif
    neon_store16(&s0, &s1, m, sh, o, high, y, y_stride);
}

/* Every whole pair of channel blocks of a whole tile, constants for all channels in m, sh and b
 * (the tabled case): conv_tile16_neon after conv_tile16_neon, in a function of its own whose
 * few live values stay in registers (in the caller's loop they were reloaded from the stack on
 * every pair). Returns the blocks done, an even number. */
static __attribute__((noinline)) int conv_tile_pairs_neon(int steps, const int8_t *tile, const fw_conv_weight *w,
                                                          size_t stride, int out_c, const int32_t *m, const int32_t *sh,
                                                          const int32_t *b, const fw_neon_out *o, int pairs, int8_t *y)
{
    const int n = out_c / (2 * FW_CONV_BLOCK) * 2;
    const size_t y_stride = (size_t)out_c;
    if (o->high) {
        for (int c0 = 0; c0 < n * FW_CONV_BLOCK; c0 += 2 * FW_CONV_BLOCK, w += 2 * stride) {
            conv_tile16_neon(steps, tile, w, w + stride, b + c0, b + c0 + FW_CONV_BLOCK, m + c0, sh + c0, o, 1, pairs,
                             y + c0, y_stride);
        }
    } else {
        for (int c0 = 0; c0 < n * FW_CONV_BLOCK; c0 += 2 * FW_CONV_BLOCK, w += 2 * stride) {
            conv_tile16_neon(steps, tile, w, w + stride, b + c0, b + c0 + FW_CONV_BLOCK, m + c0, sh + c0, o, 0, pairs,
                             y + c0, y_stride);
        }
    }
    return n;
}

#ifdef FW_CONV_SDOT
/* A whole tile of a 1x1 conv of stride 1 without padding (conv2d_s8_neon's `direct`), every
 * block, constants for all channels in m, sh and b: the sums read from the pixels' rows at r
 * (direct_sums_neon, no gather), two blocks at a time, then a last odd block. */
static __attribute__((noinline)) void conv_direct_tile_neon(int steps, const int8_t *r, size_t x_stride,
                                                            const fw_conv_weight *w, size_t stride, int out_c,
                                                            const int32_t *m, const int32_t *sh, const int32_t *b,
                                                            const fw_neon_out *o, int8_t *y)
{
    const int n = out_c / (2 * FW_CONV_BLOCK) * 2, blocks = (out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK;
    const size_t y_stride = (size_t)out_c;
    fw_tile_sums s0, s1;
    if (o->high) {
        for (int c0 = 0; c0 < n * FW_CONV_BLOCK; c0 += 2 * FW_CONV_BLOCK, w += 2 * stride) {
            direct_sums_neon(steps, r, x_stride, w, w + stride, b + c0, b + c0 + FW_CONV_BLOCK, 1, &s0, &s1);
            neon_store16(&s0, &s1, m + c0, sh + c0, o, 1, y + c0, y_stride);
        }
    } else {
        for (int c0 = 0; c0 < n * FW_CONV_BLOCK; c0 += 2 * FW_CONV_BLOCK, w += 2 * stride) {
            direct_sums_neon(steps, r, x_stride, w, w + stride, b + c0, b + c0 + FW_CONV_BLOCK, 1, &s0, &s1);
            neon_store16(&s0, &s1, m + c0, sh + c0, o, 0, y + c0, y_stride);
        }
    }
    for (int block = n; block < blocks; ++block, w += stride) {
        const int c0 = block * FW_CONV_BLOCK;
        direct_sums_neon(steps, r, x_stride, w, NULL, b + c0, NULL, 0, &s0, &s1);
        neon_requant_store(&s0, m + c0, sh + c0, o, y + c0, y_stride, FW_TILE_PIXELS,
                           out_c - c0 < FW_CONV_BLOCK ? out_c - c0 : FW_CONV_BLOCK);
    }
}
#endif

/* groups == 1 with the whole filter in one tile (at most FW_K_CHUNK values): per tile of
 * FW_TILE_PIXELS pixels one gather, then per two channel blocks the sums, requantized and
 * stored sixteen channels a pixel (conv_tile16_neon; a partial tile or a last odd block by
 * neon_requant_store). Returns 0 (nothing
 * done) for longer filters. */
static int conv2d_s8_neon(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *w, const int32_t *bias,
                          const int32_t *multiplier, const int32_t *shift, int8_t *y)
{
    const int padded = (p->kernel_h * p->kernel_w * p->in_c + 3) / 4 * 4, steps = padded / 4;
    if (padded > FW_K_CHUNK) {
        return 0;
    }
    int8_t tile[FW_K_CHUNK * FW_TILE_PIXELS], padding[FW_K_CHUNK];
    int32_t m[FW_REQUANT_TABLE], sh[FW_REQUANT_TABLE], b[FW_REQUANT_TABLE];
    const int out_c = p->out_c, pixels = p->out_h * p->out_w, blocks = (out_c + FW_CONV_BLOCK - 1) / FW_CONV_BLOCK;
    const int tabled = blocks * FW_CONV_BLOCK <= FW_REQUANT_TABLE;
    const size_t stride = (size_t)padded * FW_CONV_BLOCK; /* weight elements per block */
    fw_neon_out o;
    o.zero_point = vdupq_n_s16((int16_t)p->output_zero_point);
    o.lo = vdupq_n_s8((int8_t)fw_clamp_s32(p->activation_min, -128, 127));
    o.hi = vdupq_n_s8((int8_t)fw_clamp_s32(p->activation_max, -128, 127));
    memset(padding, p->input_zero_point, (size_t)p->in_c);
    int pairs = 0;
    /* the whole layer's constants (tabled): computed at export (fw_conv_prepared), else here;
     * untabled, m, sh and b hold one or two blocks' at a time */
    const int32_t *mt = m, *sht = sh, *bt = b;
    if (tabled && p->prepared) {
        const fw_conv_prepared *prepared = p->prepared;
        o.high = prepared->high;
        mt = prepared->multiplier;
        sht = prepared->shift;
        bt = prepared->bias;
#ifndef FW_CONV_SDOT
        pairs = prepared->no_min_weight;
#endif
    } else {
        o.high = 1;
        for (int c = 0; c < out_c; ++c) {
            o.high &= shift[c] <= -1 && multiplier[c] >= 0;
        }
        if (tabled) {
            pairs = neon_constants(p, w, steps, 0, blocks, o.high, bias, multiplier, shift, m, sh, b);
        }
    }
#ifdef FW_CONV_SDOT
    /* a 1x1 conv of stride 1 without padding: a pixel's window is its own row of in_c values */
    const int direct = tabled && p->kernel_h == 1 && p->kernel_w == 1 && p->stride_h == 1 && p->stride_w == 1 &&
                       p->pad_top == 0 && p->pad_left == 0 && p->out_h == p->in_h && p->out_w == p->in_w &&
                       p->in_c % 4 == 0;
#endif
    for (int pixel0 = 0; pixel0 < pixels; pixel0 += FW_TILE_PIXELS) {
        const int count = pixels - pixel0 < FW_TILE_PIXELS ? pixels - pixel0 : FW_TILE_PIXELS;
#ifdef FW_CONV_SDOT
        if (direct && pixels >= FW_TILE_PIXELS) {
            /* a last partial tile is the layer's last four pixels: the ones the tile before wrote
             * again are the same bytes (the input is not the output: both live at this op) */
            const int first = count == FW_TILE_PIXELS ? pixel0 : pixels - FW_TILE_PIXELS;
            conv_direct_tile_neon(steps, x + (size_t)first * p->in_c, (size_t)p->in_c, w, stride, out_c, mt, sht, bt,
                                  &o, y + (size_t)first * out_c);
            continue;
        }
#endif
        if (!gather_quads_one_channel(p, x, pixel0, count, tile)) {
            gather_quads_neon(p, x, pixel0, count, padding, tile);
        }
        int b0 = 0;
        if (tabled && count == FW_TILE_PIXELS) {
            b0 = conv_tile_pairs_neon(steps, tile, w, stride, out_c, mt, sht, bt, &o, pairs, y + (size_t)pixel0 * out_c);
        }
        while (b0 < blocks) {
            fw_tile_sums s[2];
            const int done = b0 + 1 < blocks ? 2 : 1;
            const int base = tabled ? b0 * FW_CONV_BLOCK : 0; /* the blocks' constants in mt, sht, bt */
            if (!tabled) {
                pairs = neon_constants(p, w + b0 * stride, steps, b0 * FW_CONV_BLOCK, done, o.high, bias, multiplier,
                                       shift, m, sh, b);
            }
            const fw_conv_weight *w0 = w + b0 * stride, *w1 = w0 + stride;
            if (done == 2 && count == FW_TILE_PIXELS && out_c - b0 * FW_CONV_BLOCK >= 2 * FW_CONV_BLOCK) {
                int8_t *out = y + (size_t)pixel0 * out_c + b0 * FW_CONV_BLOCK;
                if (o.high) {
                    conv_tile16_neon(steps, tile, w0, w1, bt + base, bt + base + FW_CONV_BLOCK, mt + base, sht + base, &o,
                                     1, pairs, out, (size_t)out_c);
                } else {
                    conv_tile16_neon(steps, tile, w0, w1, bt + base, bt + base + FW_CONV_BLOCK, mt + base, sht + base, &o,
                                     0, pairs, out, (size_t)out_c);
                }
                b0 += done;
                continue;
            }
#ifdef FW_CONV_SDOT
            if (done == 2) {
                tile_sums2_neon(steps, tile, w0, w1, bt + base, bt + base + FW_CONV_BLOCK, &s[0], &s[1]);
            } else
#endif
            {
                tile_sums_neon(steps, tile, w0, bt + base, pairs, &s[0]);
                if (done == 2) {
                    tile_sums_neon(steps, tile, w1, bt + base + FW_CONV_BLOCK, pairs, &s[1]);
                }
            }
            for (int i = 0; i < done; ++i) {
                const int c0 = (b0 + i) * FW_CONV_BLOCK, offset = base + i * FW_CONV_BLOCK;
                neon_requant_store(&s[i], mt + offset, sht + offset, &o, y + (size_t)pixel0 * out_c + c0, (size_t)out_c,
                                   count, out_c - c0 < FW_CONV_BLOCK ? out_c - c0 : FW_CONV_BLOCK);
            }
            b0 += done;
        }
    }
    return 1;
}
