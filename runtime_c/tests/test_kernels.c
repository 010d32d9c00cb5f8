/* Unit tests of the fwedge C runtime: fixed-point helpers, and every kernel against a naive
 * reference written directly from the definitions in fwedge_rt.h (NHWC, TFLite semantics). */
#include <math.h>
#include <string.h>

#include "../fwedge_rt.h"
#include "../requant_neon.h"
#include "fwedge_test.h"

static void test_fixed_point(void)
{
    /* SaturatingRoundingDoublingHighMul: round(a*b/2^31), ties away from zero, saturating. */
    CHECK_EQ_INT(fw_saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN), INT32_MAX, "srdhm saturates");
    CHECK_EQ_INT(fw_saturating_rounding_doubling_high_mul(1 << 30, 1 << 30), 1 << 29, "srdhm 0.5*0.5");
    CHECK_EQ_INT(fw_saturating_rounding_doubling_high_mul(3, 1 << 30), 2, "srdhm 1.5 rounds away");
    /* gemmlowp's nudge for negative products is 1 - 2^30, so negative ties round toward zero. */
    CHECK_EQ_INT(fw_saturating_rounding_doubling_high_mul(-3, 1 << 30), -1, "srdhm -1.5 rounds up");
    CHECK_EQ_INT(fw_saturating_rounding_doubling_high_mul(-1, 1 << 30), 0, "srdhm -0.5 rounds up");
    CHECK_EQ_INT(fw_saturating_rounding_doubling_high_mul(-5, 1 << 29), -1, "srdhm -1.25 rounds to -1");
    /* RoundingDivideByPOT: ties away from zero. */
    CHECK_EQ_INT(fw_rounding_divide_by_pot(5, 1), 3, "rdbp 2.5");
    CHECK_EQ_INT(fw_rounding_divide_by_pot(-5, 1), -3, "rdbp -2.5");
    CHECK_EQ_INT(fw_rounding_divide_by_pot(-4, 1), -2, "rdbp -2");
    CHECK_EQ_INT(fw_rounding_divide_by_pot(7, 2), 2, "rdbp 1.75");
    CHECK_EQ_INT(fw_rounding_divide_by_pot(-7, 2), -2, "rdbp -1.75");
    CHECK_EQ_INT(fw_rounding_divide_by_pot(123, 0), 123, "rdbp exponent 0");
    /* MBQM with multiplier 0.75 * 2^31 and shift -3: x * 0.75 / 8. */
    const int32_t m = 1610612736;
    CHECK_EQ_INT(fw_multiply_by_quantized_multiplier(1000, m, -3), 94, "mbqm 93.75");
    CHECK_EQ_INT(fw_multiply_by_quantized_multiplier(-1000, m, -3), -94, "mbqm -93.75");
    CHECK_EQ_INT(fw_multiply_by_quantized_multiplier(100, m, 2), 300, "mbqm left shift");
}

#if defined(FW_NEON)
/* The NEON requantization forms of requant_neon.h against fw_multiply_by_quantized_multiplier,
 * for every total shift 1..62 (shift 30..-31), multipliers 0, 2^30, 2^31 - 1 and random ones,
 * and accumulators at the int32 extremes as well as random ones. */
static void test_requant_neon(void)
{
    const int32_t edges[8] = {INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX, -(1 << 30), (1 << 30) + 12345};
    int bad_wide = 0, bad_high = 0, bad_tensor = 0, checked = 0;
    for (int shift = 30; shift >= -31; --shift) {
        for (int trial = 0; trial < 8; ++trial) {
            const int32_t m = trial == 0 ? 0 : trial == 1 ? 1 << 30 : trial == 2 ? INT32_MAX : fw_test_rand(1 << 30, INT32_MAX);
            const fw_requant_neon q = fw_requant_neon_setup(m, shift);
            for (int k = 0; k < 16; ++k) {
                int32_t xs[4];
                for (int l = 0; l < 4; ++l) {
                    xs[l] = k < 2 ? edges[4 * k + l] : (int32_t)((uint32_t)fw_test_rand(0, 0xffff) << 16 | (uint32_t)fw_test_rand(0, 0xffff));
                }
                if (k >= 2 && k < 6) { /* accumulator-sized values */
                    for (int l = 0; l < 4; ++l) xs[l] = fw_test_rand(-2000000, 2000000);
                }
                const int32x4_t xv = vld1q_s32(xs), mv = vdupq_n_s32(m);
                int32_t wide[4], high[4], tensor[4];
                vst1q_s32(wide, fw_requant4_neon_wide(xv, mv, vdupq_n_s64(shift - 31), vdupq_n_s64(shift - 31)));
                vst1q_s32(high, fw_requant4_neon_high(xv, mv, vdupq_n_s32(shift)));
                vst1q_s32(tensor, fw_requant_neon_apply(xv, &q));
                for (int l = 0; l < 4; ++l) {
                    const int32_t expected = fw_multiply_by_quantized_multiplier(xs[l], m, shift);
                    bad_wide += wide[l] != expected;
                    bad_high += shift <= -1 && high[l] != expected;
                    bad_tensor += tensor[l] != expected;
                    ++checked;
                }
            }
        }
    }
    CHECK(bad_wide == 0, "NEON requant, 64-bit products: %d of %d lanes differ", bad_wide, checked);
    CHECK(bad_high == 0, "NEON requant, SQDMULH and SRSHL (s >= 32): %d lanes differ", bad_high);
    CHECK(bad_tensor == 0, "NEON requant, per-tensor form: %d of %d lanes differ", bad_tensor, checked);
}
#endif

/* Naive int8 conv: direct definition over logical indices, no blocking. */
static void naive_conv_s8(const fw_conv_params *p, int depthwise, const int8_t *x, const int8_t *w,
                          const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *y)
{
    const int groups = depthwise ? p->in_c : p->groups;
    const int icg = p->in_c / groups, ocg = p->out_c / groups;
    for (int oy = 0; oy < p->out_h; ++oy)
        for (int ox = 0; ox < p->out_w; ++ox)
            for (int oc = 0; oc < p->out_c; ++oc) {
                const int g = oc / ocg;
                int32_t acc = bias[oc];
                for (int ky = 0; ky < p->kernel_h; ++ky)
                    for (int kx = 0; kx < p->kernel_w; ++kx)
                        for (int i = 0; i < icg; ++i) {
                            const int iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                            const int ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                            if (iy < 0 || ix < 0 || iy >= p->in_h || ix >= p->in_w) continue;
                            const int ic = g * icg + i;
                            const int32_t xv = x[(iy * p->in_w + ix) * p->in_c + ic] - p->input_zero_point;
                            int32_t wv;
                            if (depthwise) {
                                wv = w[(ky * p->kernel_w + kx) * p->out_c + oc];
                            } else {
                                wv = w[((oc * p->kernel_h + ky) * p->kernel_w + kx) * icg + i]; /* OHWI */
                            }
                            acc += xv * wv;
                        }
                int32_t v = fw_multiply_by_quantized_multiplier(acc, mult[oc], shift[oc]) + p->output_zero_point;
                y[(oy * p->out_w + ox) * p->out_c + oc] = (int8_t)fw_clamp_s32(v, p->activation_min, p->activation_max);
            }
}

static void fill_s8(int8_t *a, int n) { for (int i = 0; i < n; ++i) a[i] = (int8_t)fw_test_rand(-128, 127); }

static int out_size(int in, int k, int s, int pad_total, int d) { return (in + pad_total - d * (k - 1) - 1) / s + 1; }

/* Requantization and weight ranges of test_conv_s8_case (changed by the shift >= 0 case). */
static int conv_shift_lo = -12, conv_shift_hi = -6, conv_weight_max = 127, conv_bias_max = 5000;
/* Extreme data of test_conv_s8_case: 1 sets every fifth weight to -128; 2 takes inputs from
 * {-128, 127} and weights from {-127, 127}, the largest byte products. */
static int conv_extreme = 0;
/* An output zero point for test_conv_s8_case (999: a random one near 0), and whether most
 * outputs may saturate (the zero point's own edges). */
static int conv_output_zp = 999, conv_hot = 0;

static void test_conv_s8_case(int in_h, int in_w, int in_c, int out_c, int k, int stride, int pad, int dil,
                              int groups, int depthwise, const char *name)
{
    static int8_t x[4096], w[16384], y[8192], ref[8192];
    static fw_conv_weight packed[24576];
    static int32_t bias[320], mult[320], shift[320];
    fw_conv_params p;
    memset(&p, 0, sizeof p);
    p.in_h = in_h; p.in_w = in_w; p.in_c = in_c; p.out_c = out_c;
    p.kernel_h = k; p.kernel_w = k; p.stride_h = stride; p.stride_w = stride + (k > 1 ? 0 : 1);
    p.pad_top = pad; p.pad_left = pad; p.dilation_h = dil; p.dilation_w = 1;
    p.groups = depthwise ? in_c : groups;
    p.out_h = out_size(in_h, k, p.stride_h, 2 * pad, dil);
    p.out_w = out_size(in_w, k, p.stride_w, 2 * pad, 1);
    p.input_zero_point = fw_test_rand(-20, 20); p.output_zero_point = fw_test_rand(-10, 10);
    if (conv_output_zp != 999) p.output_zero_point = conv_output_zp;
    p.activation_min = -128; p.activation_max = 127;
    if (!depthwise && groups == 1) p.activation_min = p.output_zero_point; /* fused ReLU */
    const int wsize = depthwise ? k * k * out_c : k * k * (in_c / groups) * out_c;
    fill_s8(x, in_h * in_w * in_c);
    fill_s8(w, wsize);
    for (int i = 0; i < wsize; ++i) w[i] = (int8_t)(w[i] % (conv_weight_max + 1));
    for (int i = 0; i < wsize && conv_extreme == 1; i += 5) w[i] = -128;
    if (conv_extreme == 2) {
        for (int i = 0; i < in_h * in_w * in_c; ++i) x[i] = x[i] < 0 ? -128 : 127;
        for (int i = 0; i < wsize; ++i) w[i] = w[i] < 0 ? -127 : 127;
    }
    for (int c = 0; c < out_c; ++c) {
        bias[c] = fw_test_rand(-conv_bias_max, conv_bias_max);
        mult[c] = fw_test_rand(1 << 30, 0x7fffffff);
        shift[c] = fw_test_rand(conv_shift_lo, conv_shift_hi);
    }
    const int n = p.out_h * p.out_w * out_c;
    memset(y, 0x55, sizeof y);
    if (depthwise) FW_DISPATCH(fw_depthwise_conv2d_s8)(&p, x, w, bias, mult, shift, y);
    else {
        const size_t packed_size = fw_conv2d_s8_packed_size(&p);
        CHECK(packed_size <= sizeof packed / sizeof packed[0], "%s: packed weights need %d elements", name, (int)packed_size);
        memset(packed, 0x55, sizeof packed);
        fw_pack_conv2d_s8_weights(&p, w, packed);
#ifdef FW_X86_DISPATCH
        /* the dispatch build: both layouts, as model.c holds them (the quads packed here, in
         * plain C: the variant's own packer is AVX-512 code) */
        static int8_t quads[24576];
        const int filter = k * k * in_c, padded = (filter + 3) / 4 * 4;
        CHECK((out_c + 7) / 8 * 8 * padded <= (int)sizeof quads, "%s: quad weights too large", name);
        for (int oc = 0; oc < (out_c + 7) / 8 * 8; ++oc) {
            for (int i = 0; i < padded; ++i) {
                quads[((oc / 8) * padded + i / 4 * 4) * 8 + (oc % 8) * 4 + i % 4] =
                    oc < out_c && i < filter ? w[oc * filter + i] : 0;
            }
        }
        FW_CONV2D_S8(&p, x, packed, quads, bias, mult, shift, y);
#else
        FW_CONV2D_S8(&p, x, packed, packed, bias, mult, shift, y);
#endif
    }
    naive_conv_s8(&p, depthwise, x, w, bias, mult, shift, ref);
    int mismatches = 0, saturated = 0;
    for (int i = 0; i < n; ++i) { mismatches += y[i] != ref[i]; saturated += ref[i] == 127 || ref[i] == -128; }
    CHECK(mismatches == 0, "%s: %d of %d outputs differ from the naive reference", name, mismatches, n);
    CHECK(conv_hot || saturated < n / 2, "%s: %d of %d outputs saturated; the test data is too hot", name, saturated, n);
    CHECK(y[n] == 0x55, "%s: wrote past the output", name);
}

static void test_conv_s8(void)
{
    test_conv_s8_case(8, 7, 3, 5, 3, 1, 1, 1, 1, 0, "conv 3x3 pad 1");
    test_conv_s8_case(9, 9, 4, 6, 3, 2, 0, 2, 2, 0, "conv stride 2 dilation 2 groups 2");
    test_conv_s8_case(6, 6, 8, 70, 1, 1, 0, 1, 1, 0, "conv 1x1, 70 channels (two blocks)");
    test_conv_s8_case(5, 6, 1, 3, 5, 1, 2, 1, 1, 0, "conv 5x5 one input channel");
    /* One input channel, rows of 12 and 16 pixels: interior tiles take the 4-byte gather. */
    test_conv_s8_case(9, 12, 1, 8, 3, 1, 1, 1, 1, 0, "conv 3x3 one input channel, interior tiles");
    test_conv_s8_case(10, 16, 1, 16, 5, 1, 2, 1, 1, 0, "conv 5x5 one input channel, interior tiles");
    /* Packed tile GEMM edges: odd filter, channel and pixel tails, a filter longer than one
     * gather chunk (3 * 3 * 130 = 1170 > 576 values). */
    test_conv_s8_case(5, 3, 3, 13, 3, 1, 1, 1, 1, 0, "conv 3x3 odd filter, 13 channels, 15 pixels");
    test_conv_s8_case(5, 5, 130, 9, 3, 1, 1, 1, 1, 0, "conv 3x3 130 channels (chunked filter)");
    test_conv_s8_case(7, 7, 24, 96, 1, 1, 0, 1, 1, 0, "conv 1x1 24 -> 96");
    /* Block counts 3 and 5 (the 4-, 2- and 1-block tile GEMMs of the wide builds), a window
     * gather of 16 channels with borders and stride 2, and more output channels than the
     * requantization table holds (constants per block). */
    test_conv_s8_case(6, 5, 16, 24, 3, 2, 1, 1, 1, 0, "conv 3x3 16 -> 24 stride 2 (three blocks)");
    test_conv_s8_case(7, 7, 8, 40, 3, 1, 1, 1, 1, 0, "conv 3x3 8 -> 40 (five blocks)");
    test_conv_s8_case(4, 4, 8, 264, 1, 1, 0, 1, 1, 0, "conv 1x1 8 -> 264 (past the requantization table)");
    /* Total shifts 31 and 32 (shift 0 and -1): the vector requantization's two shift paths. */
    conv_shift_lo = -1; conv_shift_hi = 0; conv_weight_max = 2; conv_bias_max = 20;
    test_conv_s8_case(6, 6, 2, 16, 1, 1, 0, 1, 1, 0, "conv 1x1, shift 0 and -1");
    /* Total shifts 30..35 side by side in one block: both AVX2 requantization forms, blended. */
    conv_shift_lo = -4; conv_shift_hi = 1; conv_weight_max = 1; conv_bias_max = 4;
    test_conv_s8_case(6, 6, 2, 16, 1, 1, 0, 1, 1, 0, "conv 1x1, shifts -4..1 in one block");
    test_conv_s8_case(6, 6, 16, 16, 3, 1, 1, 1, 0, 1, "depthwise 3x3, shifts -4..1 in one block");
    conv_shift_lo = -12; conv_shift_hi = -6; conv_weight_max = 127; conv_bias_max = 5000;
    test_conv_s8_case(8, 8, 6, 6, 3, 1, 1, 1, 0, 1, "depthwise 3x3");
    test_conv_s8_case(9, 8, 3, 6, 3, 2, 1, 1, 0, 1, "depthwise multiplier 2 stride 2");
    test_conv_s8_case(7, 7, 67, 67, 3, 1, 1, 2, 0, 1, "depthwise 67 channels dilation 2");
    test_conv_s8_case(7, 6, 96, 96, 3, 2, 1, 1, 0, 1, "depthwise 96 channels stride 2 (vector path, two blocks)");
    test_conv_s8_case(6, 6, 16, 16, 5, 1, 2, 1, 0, 1, "depthwise 5x5 16 channels (odd tap count)");
    test_conv_s8_case(5, 7, 24, 24, 3, 1, 1, 1, 0, 1, "depthwise 24 channels (16-channel AVX2 step and an 8-channel tail)");
    /* The NEON path's steps: 16, 8 and single channels, stride and dilation with borders, 1x1,
     * the 49-tap limit, and windows wholly inside the padding. */
    test_conv_s8_case(7, 9, 29, 29, 3, 2, 1, 2, 0, 1, "depthwise 29 channels stride 2 dilation 2 (16 + 8 + 5 channels)");
    test_conv_s8_case(5, 5, 40, 40, 1, 1, 0, 1, 0, 1, "depthwise 1x1 40 channels");
    test_conv_s8_case(9, 9, 16, 16, 7, 1, 3, 1, 0, 1, "depthwise 7x7 (49 taps)");
    test_conv_s8_case(9, 9, 8, 8, 9, 1, 4, 1, 0, 1, "depthwise 9x9 (81 taps, past the NEON limit)");
    test_conv_s8_case(4, 4, 13, 13, 3, 1, 2, 1, 0, 1, "depthwise pad 2: windows wholly in the padding");
    test_conv_s8_case(6, 5, 72, 72, 3, 2, 1, 1, 0, 1, "depthwise 72 channels stride 2 (a block of 64 and one of 8)");
    test_conv_s8_case(3, 5, 264, 264, 3, 1, 1, 1, 0, 1, "depthwise 264 channels (NEON: a block of 256 and one of 8)");
    /* Weights of -128 (their byte products could overflow int16 in pairs; the NEON path widens
     * x - zp instead), and the largest byte products it sums in pairs. */
    conv_extreme = 1;
    test_conv_s8_case(7, 7, 32, 32, 3, 1, 1, 1, 0, 1, "depthwise weights of -128");
    /* The ARMv8.0 conv path adds two steps' byte products in int16 only when no weight is -128. */
    test_conv_s8_case(7, 7, 24, 32, 1, 1, 0, 1, 1, 0, "conv 1x1 24 -> 32, weights of -128");
    test_conv_s8_case(6, 6, 12, 20, 3, 1, 1, 1, 1, 0, "conv 3x3 12 -> 20, weights of -128");
    conv_extreme = 2; conv_shift_lo = -17; conv_shift_hi = -15;
    test_conv_s8_case(7, 7, 32, 32, 3, 1, 1, 1, 0, 1, "depthwise inputs -128 and 127, weights -127 and 127");
    test_conv_s8_case(6, 6, 48, 48, 5, 2, 2, 1, 0, 1, "depthwise 5x5 inputs -128 and 127, weights -127 and 127");
    test_conv_s8_case(7, 7, 24, 32, 1, 1, 0, 1, 1, 0, "conv 1x1 24 -> 32, inputs -128 and 127, weights -127 and 127");
    test_conv_s8_case(6, 7, 20, 24, 3, 1, 1, 1, 1, 0, "conv 3x3 20 -> 24, inputs -128 and 127, weights -127 and 127");
    conv_extreme = 0; conv_shift_lo = -12; conv_shift_hi = -6;
    /* Output zero points at the int8 ends with sums far outside int16 after the rescale: the
     * aarch64 kernels add the zero point on int16 with saturation, which must narrow to the
     * same int8 as the int32 sum; both requantization forms (shifts 0 and -1: the 64-bit
     * products; -3..-1: SQDMULH), full and partial tiles and blocks. */
    conv_hot = 1; conv_shift_lo = -1; conv_shift_hi = 0;
    conv_output_zp = 127;
    test_conv_s8_case(6, 5, 16, 24, 3, 1, 1, 1, 1, 0, "conv 3x3 16 -> 24, output zero point 127, shifts 0 and -1");
    conv_output_zp = -128;
    test_conv_s8_case(6, 5, 16, 24, 3, 1, 1, 1, 1, 0, "conv 3x3 16 -> 24, output zero point -128, shifts 0 and -1");
    conv_shift_lo = -3; conv_shift_hi = -1;
    test_conv_s8_case(7, 7, 24, 13, 1, 1, 0, 1, 1, 0, "conv 1x1 24 -> 13, output zero point -128, shifts -3..-1");
    conv_output_zp = 127;
    test_conv_s8_case(7, 7, 24, 13, 1, 1, 0, 1, 1, 0, "conv 1x1 24 -> 13, output zero point 127, shifts -3..-1");
    conv_hot = 0; conv_output_zp = 999; conv_shift_lo = -12; conv_shift_hi = -6;
}

static void test_conv_f32(void)
{
    /* 1 input channel, 2 output channels, 2x2 kernel, pad 1 on a 2x2 input: hand-computed. */
    const float x[4] = {1, 2, 3, 4};
    /* w[ky][kx][ic=0][oc]: oc0 all ones, oc1 = kernel [[1,0],[0,-1]]. */
    const float w[8] = {1, 1, 1, 0, 1, 0, 1, -1};
    const float bias[2] = {0.5f, 0};
    float y[18];
    fw_conv_params p;
    memset(&p, 0, sizeof p);
    p.in_h = 2; p.in_w = 2; p.in_c = 1; p.out_c = 2; p.kernel_h = 2; p.kernel_w = 2;
    p.stride_h = p.stride_w = 1; p.pad_top = p.pad_left = 1; p.dilation_h = p.dilation_w = 1; p.groups = 1;
    p.out_h = 3; p.out_w = 3; p.float_min = -INFINITY; p.float_max = INFINITY;
    fw_conv2d_f32(&p, x, w, bias, y);
    /* center output (1,1) sums all four inputs: 10 + 0.5; oc1 = x[0][0] - x[1][1] = 1 - 4. */
    CHECK(y[(1 * 3 + 1) * 2 + 0] == 10.5f, "conv f32 center oc0: %g", y[8]);
    CHECK(y[(1 * 3 + 1) * 2 + 1] == -3.0f, "conv f32 center oc1: %g", y[9]);
    CHECK(y[0] == 1.5f, "conv f32 corner: %g", y[0]);
    p.float_min = 0.0f; p.float_max = 6.0f;
    fw_conv2d_f32(&p, x, w, bias, y);
    CHECK(y[8] == 6.0f && y[9] == 0.0f, "conv f32 relu6 clamp: %g %g", y[8], y[9]);
    float wd[4] = {1, 1, 1, 1}, yd[18];
    p.groups = 1; p.out_c = 1;
    fw_depthwise_conv2d_f32(&p, x, wd, NULL, yd);
    CHECK(yd[4] == 6.0f, "depthwise f32 center with relu6: %g", yd[4]);
}

static void test_fully_connected(void)
{
    const int8_t x[3] = {10, -20, 30};
    const int8_t w[6] = {1, 2, 3, -1, -2, -3};
    const int32_t bias[2] = {100, -100};
    const int32_t mult[2] = {1 << 30, 1 << 30}; /* 0.5 */
    const int32_t shift[2] = {0, 0};
    int8_t y[2];
    fw_fully_connected_params p = {3, 2, 5, -3, -128, 127, 0, 0};
    fw_fully_connected_s8(&p, x, w, bias, mult, shift, y);
    /* (x - 5) = {5, -25, 25}: dot row0 = 5 - 50 + 75 = 30, + 100 = 130 -> 65 - 3 = 62. */
    CHECK_EQ_INT(y[0], 62, "fc row 0");
    CHECK_EQ_INT(y[1], -68, "fc row 1");
    const float xf[3] = {1, 2, 3}, wf[6] = {1, 1, 1, 0.5f, 0, -1}, bf[2] = {0, 1};
    float yf[2];
    fw_fully_connected_params pf = {3, 2, 0, 0, 0, 0, -INFINITY, INFINITY};
    fw_fully_connected_f32(&pf, xf, wf, bf, yf);
    CHECK(yf[0] == 6.0f && yf[1] == -1.5f, "fc f32: %g %g", yf[0], yf[1]);

    /* 45 inputs (five 8-wide steps and a tail of 5), 10 outputs (two groups of four and two
     * single rows), extreme zero point and weights, against the definition. */
    static int8_t xr[45], wr[450], yr[10];
    static int32_t br[10], mr[10], sr[10];
    fill_s8(xr, 45);
    fill_s8(wr, 450);
    wr[0] = -128;
    xr[0] = 127;
    for (int o = 0; o < 10; ++o) {
        br[o] = fw_test_rand(-5000, 5000);
        mr[o] = fw_test_rand(1 << 30, 0x7fffffff);
        sr[o] = fw_test_rand(-12, -8);
    }
    fw_fully_connected_params pr = {45, 10, -128, 7, -128, 127, 0, 0};
    memset(yr, 0x55, sizeof yr);
    FW_FULLY_CONNECTED_S8(&pr, xr, wr, br, mr, sr, yr); /* the dispatch entry in a dispatch build */
    for (int o = 0; o < 10; ++o) {
        int32_t acc = br[o];
        for (int i = 0; i < 45; ++i) acc += (xr[i] + 128) * wr[o * 45 + i];
        const int32_t v = fw_clamp_s32(fw_multiply_by_quantized_multiplier(acc, mr[o], sr[o]) + 7, -128, 127);
        CHECK_EQ_INT(yr[o], v, "fc 45 x 10 row");
    }
}

static void test_elementwise(void)
{
    fw_elementwise_params p;
    memset(&p, 0, sizeof p);
    /* Add with equal scales: inputs rescaled by 0.5, output by 2 / 2^20 -> plain sum. */
    p.size = 4;
    p.input1.divisor = 1; p.input1.modulus = 4; p.input2.divisor = 1; p.input2.modulus = 4;
    p.input1_zero_point = 1; p.input2_zero_point = -1; p.output_zero_point = 3;
    p.left_shift = 20;
    p.input1_multiplier = 1 << 30; p.input1_shift = 0;
    p.input2_multiplier = 1 << 30; p.input2_shift = 0;
    p.output_multiplier = 1 << 30; p.output_shift = -18; /* 0.5 * 2^-18 * 2^... = 2^-20 * 2 */
    p.activation_min = -128; p.activation_max = 127;
    const int8_t a[4] = {1, 11, -100, 127}, b[4] = {-1, 9, -100, 127};
    int8_t y[4];
    FW_DISPATCH(fw_add_s8)(&p, a, b, y);
    CHECK_EQ_INT(y[0], 3, "add zero");
    CHECK_EQ_INT(y[1], 23, "add 10 + 10");
    CHECK_EQ_INT(y[2], -128, "add saturates low");
    CHECK_EQ_INT(y[3], 127, "add saturates high");
    /* Mul with per-channel broadcast of a 2-vector over [2 pixels][2 channels]. */
    p.input2.modulus = 2;
    p.input1_zero_point = 0; p.input2_zero_point = 0; p.output_zero_point = 0;
    p.output_multiplier = 1 << 30; p.output_shift = 0; /* 0.5 */
    const int8_t c[2] = {2, -4};
    FW_DISPATCH(fw_mul_s8)(&p, a, c, y);
    CHECK(y[0] == 1 && y[1] == -22 && y[2] == -100 && y[3] == -128, "mul broadcast: %d %d %d %d", y[0], y[1], y[2], y[3]);
    /* Per-pixel map broadcast: divisor 2 (channels), modulus 2 (pixels). */
    p.input2.divisor = 2;
    FW_DISPATCH(fw_mul_s8)(&p, a, c, y);
    CHECK(y[0] == 1 && y[1] == 11 && y[2] == -128 + 0 * 200 + (y[2] - -128) && y[3] == -128,
          "mul pixel broadcast: %d %d %d %d", y[0], y[1], y[2], y[3]);
    CHECK_EQ_INT(y[2], 127, "mul pixel broadcast -100 * -4 / 2 saturates");
    /* Same-shape ADD over 16-element vector steps plus a tail, random per-tensor parameters,
     * against the definition written out with the scalar fixed-point helpers. */
    {
        static int8_t xa[1003], xb[1003], ya[1004];
        fw_elementwise_params q;
        memset(&q, 0, sizeof q);
        q.size = 1003;
        q.input1.divisor = 1; q.input1.modulus = q.size; q.input2.divisor = 1; q.input2.modulus = q.size;
        fill_s8(xa, q.size);
        fill_s8(xb, q.size);
        int mismatches = 0, saturated = 0;
        for (int round = 0; round < 4; ++round) {
            q.input1_zero_point = fw_test_rand(-30, 30); q.input2_zero_point = fw_test_rand(-30, 30);
            q.output_zero_point = fw_test_rand(-20, 20); q.left_shift = 20;
            q.input1_multiplier = fw_test_rand(1 << 30, 0x7fffffff); q.input1_shift = fw_test_rand(-3, 0);
            q.input2_multiplier = fw_test_rand(1 << 30, 0x7fffffff); q.input2_shift = fw_test_rand(-3, 0);
            q.output_multiplier = fw_test_rand(1 << 30, 0x7fffffff); q.output_shift = fw_test_rand(-21, -19);
            q.activation_min = round == 3 ? q.output_zero_point : -128; q.activation_max = 127;
            ya[q.size] = 0x55;
            FW_DISPATCH(fw_add_s8)(&q, xa, xb, ya);
            for (int i = 0; i < q.size; ++i) {
                const int32_t s1 = fw_multiply_by_quantized_multiplier((xa[i] - q.input1_zero_point) * (1 << 20),
                                                                       q.input1_multiplier, q.input1_shift);
                const int32_t s2 = fw_multiply_by_quantized_multiplier((xb[i] - q.input2_zero_point) * (1 << 20),
                                                                       q.input2_multiplier, q.input2_shift);
                const int32_t v = fw_multiply_by_quantized_multiplier(s1 + s2, q.output_multiplier, q.output_shift) +
                                  q.output_zero_point;
                const int32_t expected = fw_clamp_s32(v, q.activation_min, q.activation_max);
                mismatches += ya[i] != expected;
                saturated += expected == 127 || expected == -128;
            }
            CHECK(ya[q.size] == 0x55, "add 1003 elements: wrote past the output");
        }
        CHECK(mismatches == 0, "add 1003 elements: %d outputs differ from the definition", mismatches);
        CHECK(saturated < 4 * q.size / 2, "add 1003 elements: %d outputs saturated", saturated);
    }
    float af[4] = {1, 2, 3, 4}, bf[2] = {10, 20}, yf[4];
    p.input2.divisor = 1; p.float_min = -INFINITY; p.float_max = INFINITY;
    fw_add_f32(&p, af, bf, yf);
    CHECK(yf[0] == 11 && yf[1] == 22 && yf[2] == 13 && yf[3] == 24, "add f32 broadcast");
    p.float_min = 0; p.float_max = 30;
    fw_mul_f32(&p, af, bf, yf);
    CHECK(yf[0] == 10 && yf[1] == 30 && yf[2] == 30 && yf[3] == 30, "mul f32 clamp: %g %g", yf[1], yf[2]);
}

/* Same-shape MUL and broadcast ADD and MUL (per-channel vector, per-pixel map) against the
 * definitions written with the scalar helpers, random per-tensor parameters. */
static void test_elementwise_random(void)
{
    static int8_t xa[1003], xb[1003], y[1004];
    int bad_mul = 0, bad_add = 0, bad_broadcast_mul = 0, saturated = 0;
    fill_s8(xa, 1003);
    fill_s8(xb, 1003);
    for (int round = 0; round < 6; ++round) {
        fw_elementwise_params q;
        memset(&q, 0, sizeof q);
        /* rounds 0-1 same shape; 2-3 a 17-channel vector over 59 pixels; 4-5 a 59-pixel map over 17 channels */
        q.size = round < 2 ? 1003 : 59 * 17;
        q.input1.divisor = 1; q.input1.modulus = q.size;
        q.input2.divisor = round >= 4 ? 17 : 1; q.input2.modulus = round < 2 ? q.size : round < 4 ? 17 : 59;
        q.input1_zero_point = fw_test_rand(-30, 30); q.input2_zero_point = fw_test_rand(-30, 30);
        q.output_zero_point = fw_test_rand(-20, 20); q.left_shift = 20;
        q.input1_multiplier = fw_test_rand(1 << 30, INT32_MAX); q.input1_shift = fw_test_rand(-3, 0);
        q.input2_multiplier = fw_test_rand(1 << 30, INT32_MAX); q.input2_shift = fw_test_rand(-3, 0);
        q.activation_min = round % 2 ? q.output_zero_point : -128; q.activation_max = 127;
        q.output_multiplier = fw_test_rand(1 << 30, INT32_MAX); q.output_shift = fw_test_rand(-8, -5);
        y[q.size] = 0x55;
        FW_DISPATCH(fw_mul_s8)(&q, xa, xb, y);
        for (int i = 0; i < q.size; ++i) {
            const int j = (i / q.input2.divisor) % q.input2.modulus;
            const int32_t v = fw_multiply_by_quantized_multiplier((xa[i] - q.input1_zero_point) * (xb[j] - q.input2_zero_point),
                                                                  q.output_multiplier, q.output_shift) + q.output_zero_point;
            const int32_t expected = fw_clamp_s32(v, q.activation_min, q.activation_max);
            if (round < 2) bad_mul += y[i] != expected; else bad_broadcast_mul += y[i] != expected;
            saturated += expected == 127 || expected == -128;
        }
        CHECK(y[q.size] == 0x55, "mul round %d wrote past the output", round);
        q.output_multiplier = fw_test_rand(1 << 30, INT32_MAX); q.output_shift = fw_test_rand(-21, -19);
        FW_DISPATCH(fw_add_s8)(&q, xa, xb, y);
        for (int i = 0; i < q.size; ++i) {
            const int j = (i / q.input2.divisor) % q.input2.modulus;
            const int32_t s1 = fw_multiply_by_quantized_multiplier((xa[i] - q.input1_zero_point) * (1 << 20),
                                                                   q.input1_multiplier, q.input1_shift);
            const int32_t s2 = fw_multiply_by_quantized_multiplier((xb[j] - q.input2_zero_point) * (1 << 20),
                                                                   q.input2_multiplier, q.input2_shift);
            const int32_t v = fw_multiply_by_quantized_multiplier(s1 + s2, q.output_multiplier, q.output_shift) +
                              q.output_zero_point;
            bad_add += y[i] != fw_clamp_s32(v, q.activation_min, q.activation_max);
        }
        CHECK(y[q.size] == 0x55, "add round %d wrote past the output", round);
    }
    /* MUL with output total shifts 30 and 31 (a product scale of at least half the output's)
     * on small inputs, so that the outputs do not saturate. */
    for (int shift = 0; shift <= 1; ++shift) {
        static int8_t sa[203], sb[203];
        fw_elementwise_params q;
        memset(&q, 0, sizeof q);
        q.size = 203;
        q.input1.divisor = q.input2.divisor = 1; q.input1.modulus = q.input2.modulus = q.size;
        q.input1_zero_point = fw_test_rand(-3, 3); q.input2_zero_point = fw_test_rand(-3, 3);
        q.output_zero_point = fw_test_rand(-5, 5);
        q.output_multiplier = fw_test_rand(1 << 30, INT32_MAX); q.output_shift = shift;
        q.activation_min = -128; q.activation_max = 127;
        for (int i = 0; i < q.size; ++i) { sa[i] = (int8_t)fw_test_rand(-6, 6); sb[i] = (int8_t)fw_test_rand(-6, 6); }
        FW_DISPATCH(fw_mul_s8)(&q, sa, sb, y);
        for (int i = 0; i < q.size; ++i) {
            const int32_t v = fw_multiply_by_quantized_multiplier((sa[i] - q.input1_zero_point) * (sb[i] - q.input2_zero_point),
                                                                  q.output_multiplier, q.output_shift) + q.output_zero_point;
            bad_mul += y[i] != fw_clamp_s32(v, -128, 127);
        }
    }
    CHECK(bad_mul == 0, "mul 1003 elements: %d outputs differ from the definition", bad_mul);
    CHECK(bad_broadcast_mul == 0, "mul broadcast: %d outputs differ from the definition", bad_broadcast_mul);
    CHECK(bad_add == 0, "add same shape and broadcast: %d outputs differ from the definition", bad_add);
    CHECK(saturated < 3 * 1003, "mul: %d outputs saturated; the test data is too hot", saturated);
}

static void test_pools(void)
{
    /* 3x3 input, 1 channel, 2x2 kernel, stride 2, pad 0 top-left but bottom/right implied. */
    const int8_t x[9] = {1, 2, 3, 4, 5, 6, 7, 8, -9};
    int8_t y[4];
    fw_pool_params p;
    memset(&p, 0, sizeof p);
    p.in_h = 3; p.in_w = 3; p.channels = 1; p.out_h = 2; p.out_w = 2; p.kernel_h = 2; p.kernel_w = 2;
    p.stride_h = p.stride_w = 2; p.dilation_h = p.dilation_w = 1;
    p.activation_min = -128; p.activation_max = 127;
    fw_max_pool_s8(&p, x, y);
    CHECK(y[0] == 5 && y[1] == 6 && y[2] == 8 && y[3] == -9, "max pool: %d %d %d %d", y[0], y[1], y[2], y[3]);
    {
        /* 32 channels (the vector path), 5x5, 3x3 window, stride 2, padding 1, clamp [-20, 100]. */
        static int8_t xs[5 * 5 * 32], ys[3 * 3 * 32 + 1];
        fw_pool_params q;
        memset(&q, 0, sizeof q);
        q.in_h = q.in_w = 5; q.channels = 32; q.out_h = q.out_w = 3; q.kernel_h = q.kernel_w = 3;
        q.stride_h = q.stride_w = 2; q.pad_top = q.pad_left = 1; q.dilation_h = q.dilation_w = 1;
        q.activation_min = -20; q.activation_max = 100;
        fill_s8(xs, 5 * 5 * 32);
        ys[3 * 3 * 32] = 0x55;
        fw_max_pool_s8(&q, xs, ys);
        int bad = 0;
        for (int oy = 0; oy < 3; ++oy) for (int ox = 0; ox < 3; ++ox) for (int c = 0; c < 32; ++c) {
            int m = -128;
            for (int ky = 0; ky < 3; ++ky) for (int kx = 0; kx < 3; ++kx) {
                const int iy = 2 * oy - 1 + ky, ix = 2 * ox - 1 + kx;
                if (iy >= 0 && iy < 5 && ix >= 0 && ix < 5 && xs[(iy * 5 + ix) * 32 + c] > m) m = xs[(iy * 5 + ix) * 32 + c];
            }
            m = m < -20 ? -20 : (m > 100 ? 100 : m);
            bad += ys[(oy * 3 + ox) * 32 + c] != m;
        }
        CHECK(bad == 0, "max pool 32 channels: %d of %d outputs differ", bad, 3 * 3 * 32);
        CHECK(ys[3 * 3 * 32] == 0x55, "max pool 32 channels wrote past the output");
    }
    p.input_zero_point = p.output_zero_point = 1;
    /* Same scale in and out: multipliers[count] = 1 / count as (Q31 multiplier, shift). */
    const int32_t mults[5] = {0, 1 << 30, 1 << 30, 1431655765, 1 << 30};
    const int32_t shifts[5] = {0, 1, 0, -1, -1};
    fw_avg_pool_s8(&p, x, mults, shifts, y);
    /* window {1,2,4,5} - 1 = {0,1,3,4}: 8/4 = 2 -> 3. {3,6}-1 = {2,5}: 3.5 -> 4 -> 5. */
    CHECK(y[0] == 3 && y[1] == 5, "avg pool valid count: %d %d", y[0], y[1]);
    CHECK_EQ_INT(y[3], -9, "avg pool single tap");
    p.count_include_pad = 1;
    fw_avg_pool_s8(&p, x, mults, shifts, y);
    CHECK_EQ_INT(y[1], 3, "avg pool count_include_pad 7/4 -> 2");
    CHECK_EQ_INT(y[3], -1, "avg pool count_include_pad (-10)/4 = -2.5 rounds half up to -2, plus zp 1");
    /* Global average pool: 2x2 pixels, 2 channels, multiplier 0.5 * 2^-1 = 1/4. */
    const int8_t g[8] = {1, -1, 2, -2, 3, -3, 5, -5};
    fw_pool_params gp;
    memset(&gp, 0, sizeof gp);
    gp.in_h = 2; gp.in_w = 2; gp.channels = 2; gp.multiplier = 1 << 30; gp.shift = -1;
    gp.activation_min = -128; gp.activation_max = 127;
    fw_global_avg_pool_s8(&gp, g, y);
    CHECK(y[0] == 3 && y[1] == -3, "global avg pool 11/4: %d %d", y[0], y[1]);
    const float gf[8] = {1, -1, 2, -2, 3, -3, 5, -5};
    float yf[2];
    fw_global_avg_pool_f32(&gp, gf, yf);
    CHECK(yf[0] == 2.75f && yf[1] == -2.75f, "global avg pool f32");
}

/* Max, average and global average pools against their definitions: channel counts with 16-,
 * 8- and single-channel steps, padding, strides, dilation (max), both average divisors, and
 * per-count multipliers whose total shifts are below, at and above 31. */
static void test_pools_random(void)
{
    static int8_t x[9 * 11 * 45], y[9 * 11 * 45 + 1];
    static const int channel_counts[3] = {45, 16, 7};
    int max_bad = 0, avg_bad = 0, avg_saturated = 0, avg_total = 0;
    for (int round = 0; round < 6; ++round) {
        fw_pool_params p;
        memset(&p, 0, sizeof p);
        p.in_h = 9; p.in_w = 11; p.channels = channel_counts[round % 3];
        p.kernel_h = 3; p.kernel_w = round < 3 ? 3 : 2;
        p.stride_h = 1 + round % 2; p.stride_w = 2 - round % 2;
        p.pad_top = round % 2; p.pad_left = 1;
        p.dilation_h = 1 + (round == 4); p.dilation_w = 1;
        p.count_include_pad = round % 2;
        p.out_h = out_size(p.in_h, p.kernel_h, p.stride_h, 2 * p.pad_top, p.dilation_h);
        p.out_w = out_size(p.in_w, p.kernel_w, p.stride_w, 2 * p.pad_left, p.dilation_w);
        p.input_zero_point = fw_test_rand(-20, 20); p.output_zero_point = fw_test_rand(-10, 10);
        p.activation_min = round == 5 ? p.output_zero_point : -100; p.activation_max = round == 2 ? 60 : 127;
        const int C = p.channels, n = p.out_h * p.out_w * C;
        fill_s8(x, p.in_h * p.in_w * C);
        y[n] = 0x55;
        fw_max_pool_s8(&p, x, y);
        for (int oy = 0; oy < p.out_h; ++oy) for (int ox = 0; ox < p.out_w; ++ox) for (int c = 0; c < C; ++c) {
            int m = -128;
            for (int ky = 0; ky < p.kernel_h; ++ky) for (int kx = 0; kx < p.kernel_w; ++kx) {
                const int iy = oy * p.stride_h - p.pad_top + ky * p.dilation_h, ix = ox * p.stride_w - p.pad_left + kx;
                if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w && x[(iy * p.in_w + ix) * C + c] > m) m = x[(iy * p.in_w + ix) * C + c];
            }
            max_bad += y[(oy * p.out_w + ox) * C + c] != fw_clamp_s32(m, p.activation_min, p.activation_max);
        }
        CHECK(y[n] == 0x55, "max pool round %d wrote past the output", round);
        /* average pool: dilation 1, one multiplier per count */
        p.dilation_h = 1;
        p.out_h = out_size(p.in_h, p.kernel_h, p.stride_h, 2 * p.pad_top, 1);
        int32_t mults[10], shifts[10];
        for (int k = 0; k < 10; ++k) { /* about 1 / k, total shifts 30 (k = 1), 31 (k = 2) and above */
            mults[k] = fw_test_rand(1 << 30, INT32_MAX);
            shifts[k] = k <= 1 ? 1 : k == 2 ? 0 : (k > 4 ? -3 : -2) + fw_test_rand(0, 1);
        }
        const int n_avg = p.out_h * p.out_w * C;
        y[n_avg] = 0x55;
        fw_avg_pool_s8(&p, x, mults, shifts, y);
        for (int oy = 0; oy < p.out_h; ++oy) for (int ox = 0; ox < p.out_w; ++ox) for (int c = 0; c < C; ++c) {
            int32_t acc = 0, taps = 0;
            for (int ky = 0; ky < p.kernel_h; ++ky) for (int kx = 0; kx < p.kernel_w; ++kx) {
                const int iy = oy * p.stride_h - p.pad_top + ky, ix = ox * p.stride_w - p.pad_left + kx;
                if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) { acc += x[(iy * p.in_w + ix) * C + c] - p.input_zero_point; ++taps; }
            }
            const int count = p.count_include_pad ? p.kernel_h * p.kernel_w : taps;
            const int32_t v = fw_multiply_by_quantized_multiplier(acc, mults[count], shifts[count]) + p.output_zero_point;
            const int32_t expected = fw_clamp_s32(v, p.activation_min, p.activation_max);
            avg_bad += y[(oy * p.out_w + ox) * C + c] != expected;
            avg_saturated += expected == p.activation_min || expected == p.activation_max;
            ++avg_total;
        }
        CHECK(y[n_avg] == 0x55, "avg pool round %d wrote past the output", round);
    }
    CHECK(max_bad == 0, "max pool, random shapes: %d outputs differ from the definition", max_bad);
    CHECK(avg_bad == 0, "avg pool, random shapes: %d outputs differ from the definition", avg_bad);
    CHECK(avg_saturated < avg_total / 2, "avg pool, random shapes: %d of %d outputs clamped", avg_saturated, avg_total);
    /* Global average pool over 300 pixels (more than one int16 run of 256) and 45 channels. */
    {
        static int8_t g[300 * 45];
        int8_t gy[46];
        int bad = 0;
        for (int round = 0; round < 3; ++round) {
            fw_pool_params gp;
            memset(&gp, 0, sizeof gp);
            gp.in_h = round == 2 ? 3 : 15; gp.in_w = round == 2 ? 3 : 20; gp.channels = round == 1 ? 32 : 45;
            gp.input_zero_point = fw_test_rand(-20, 20); gp.output_zero_point = fw_test_rand(-10, 10);
            gp.multiplier = fw_test_rand(1 << 30, INT32_MAX); gp.shift = round == 2 ? fw_test_rand(-2, 1) : -8;
            gp.activation_min = -128; gp.activation_max = 127;
            const int pixels = gp.in_h * gp.in_w;
            fill_s8(g, pixels * gp.channels);
            gy[gp.channels] = 0x55;
            fw_global_avg_pool_s8(&gp, g, gy);
            for (int c = 0; c < gp.channels; ++c) {
                int32_t acc = 0;
                for (int i = 0; i < pixels; ++i) acc += g[i * gp.channels + c] - gp.input_zero_point;
                const int32_t v = fw_multiply_by_quantized_multiplier(acc, gp.multiplier, gp.shift) + gp.output_zero_point;
                bad += gy[c] != fw_clamp_s32(v, -128, 127);
            }
            CHECK(gy[gp.channels] == 0x55, "global avg pool round %d wrote past the output", round);
        }
        CHECK(bad == 0, "global avg pool, random shapes: %d outputs differ from the definition", bad);
    }
}

static void test_quantize_and_lut(void)
{
    const float x[8] = {0.5f, 1.5f, -0.5f, -1.5f, 2.49f, 1e30f, -INFINITY, 0.0f};
    int8_t q[8];
    fw_quantize_f32_s8(8, 1.0f, 0, x, q);
    CHECK(q[0] == 0 && q[1] == 2 && q[2] == 0 && q[3] == -2, "quantize half to even: %d %d %d %d", q[0], q[1], q[2], q[3]);
    CHECK(q[4] == 2 && q[5] == 127 && q[6] == -128 && q[7] == 0, "quantize clamp: %d %d %d", q[4], q[5], q[6]);
    float d[2];
    const int8_t dq[2] = {-128, 127};
    fw_dequantize_s8_f32(2, 0.5f, -3, dq, d);
    CHECK(d[0] == -62.5f && d[1] == 65.0f, "dequantize: %g %g", d[0], d[1]);
    int8_t table[256], y[4];
    for (int i = 0; i < 256; ++i) table[i] = (int8_t)(127 - i);
    const int8_t lx[4] = {-128, -1, 0, 127};
    fw_lut_s8(4, table, lx, y);
    CHECK(y[0] == 127 && y[1] == 0 && y[2] == -1 && y[3] == -128, "lut indexing");
    fw_requantize_s8(4, 0, 10, 1 << 30, 1, lx, y); /* x * 1.0 + 10 */
    CHECK(y[0] == -118 && y[3] == 127, "requantize: %d %d", y[0], y[3]);
}

static void test_softmax(void)
{
    int32_t table[256];
    for (int d = 0; d < 256; ++d) table[d] = (int32_t)lrint(exp(-0.1 * d) * (1 << 24));
    const int8_t x[3] = {10, 10, -100};
    int8_t y[3];
    /* output scale 1/256, zp -128: real = 2^-30 * 256 = 2^-22 -> multiplier 2^30, shift -21. */
    fw_softmax_s8(1, 3, 1, table, 1 << 30, -21, -128, x, y);
    CHECK(y[0] == 0 && y[1] == 0, "softmax two equal maxima give 0.5: %d %d", y[0], y[1]);
    CHECK_EQ_INT(y[2], -128, "softmax tiny probability");
    const float xf[3] = {1, 1, 1};
    float yf[3];
    fw_softmax_f32(1, 3, 1, xf, yf);
    CHECK(fabsf(yf[0] - 1.0f / 3) < 1e-7f, "softmax f32 uniform: %g", yf[0]);
}

/* batch_matmul: two heads of [3 x 4] x [4 x 2], A read transposed through its strides (stored
 * [k][head][row]), against a naive loop over the definition in fwedge_rt.h. */
static void test_batch_matmul(void)
{
    int8_t a[24], b[16], y[12];
    for (int i = 0; i < 24; ++i) a[i] = (int8_t)(i * 37 % 251 - 125);
    for (int i = 0; i < 16; ++i) b[i] = (int8_t)(i * 53 % 241 - 120);
    /* a: (g, i, k) at k * 6 + g * 3 + i; b: (g, k, j) contiguous [g][k][j]; y: [g][i][j]. */
    fw_batch_matmul_params p = {2, 3, 4, 2, {3, 1, 6}, {8, 2, 1}, {6, 2, 1}, -5, 7, 3,
                                1 << 30, -8, -128, 127, 0, 0};
    fw_batch_matmul_s8(&p, a, b, y);
    int mismatches = 0;
    for (int g = 0; g < 2; ++g)
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 2; ++j) {
                int32_t acc = 0;
                for (int k = 0; k < 4; ++k) acc += (a[k * 6 + g * 3 + i] + 5) * (b[g * 8 + k * 2 + j] - 7);
                int32_t v = fw_clamp_s32(fw_multiply_by_quantized_multiplier(acc, 1 << 30, -8) + 3, -128, 127);
                mismatches += y[g * 6 + i * 2 + j] != v;
            }
    CHECK_EQ_INT(mismatches, 0, "batch_matmul s8 against the definition");
    float af[24], bf[16], yf[12];
    for (int i = 0; i < 24; ++i) af[i] = (float)a[i] / 64;
    for (int i = 0; i < 16; ++i) bf[i] = (float)b[i] / 64;
    p.float_min = -INFINITY;
    p.float_max = INFINITY;
    fw_batch_matmul_f32(&p, af, bf, yf);
    float expected = 0.0f;
    for (int k = 0; k < 4; ++k) expected += af[k * 6 + 3 + 2] * bf[8 + k * 2 + 1];
    CHECK(yf[6 + 2 * 2 + 1] == expected, "batch_matmul f32 (1, 2, 1): %g, expected %g", yf[11], expected);
}

/* Softmax over depth elements `inner` apart gives what the contiguous rows give. */
static void test_softmax_strided(void)
{
    int32_t table[256];
    for (int d = 0; d < 256; ++d) table[d] = (int32_t)lrint(exp(-0.05 * d) * (1 << 24));
    int8_t rows[12], interleaved[12], y_rows[12], y_interleaved[12];
    for (int i = 0; i < 12; ++i) rows[i] = (int8_t)(i * 29 % 200 - 100);
    for (int r = 0; r < 3; ++r)
        for (int d = 0; d < 4; ++d) interleaved[d * 3 + r] = rows[r * 4 + d];
    fw_softmax_s8(3, 4, 1, table, 1 << 30, -21, -128, rows, y_rows);
    fw_softmax_s8(1, 4, 3, table, 1 << 30, -21, -128, interleaved, y_interleaved);
    int mismatches = 0;
    for (int r = 0; r < 3; ++r)
        for (int d = 0; d < 4; ++d) mismatches += y_interleaved[d * 3 + r] != y_rows[r * 4 + d];
    CHECK_EQ_INT(mismatches, 0, "softmax s8 with inner 3 against contiguous rows");
}

static void test_data_movement(void)
{
    /* Channel concat of [2 px][1 ch] and [2 px][2 ch]. */
    const int8_t a[2] = {1, 2}, b[4] = {10, 11, 20, 21};
    const void *inputs[2] = {a, b};
    const int inner[2] = {1, 2};
    int8_t y[6];
    fw_concat(2, 2, inner, inputs, 1, y);
    CHECK(y[0] == 1 && y[1] == 10 && y[2] == 11 && y[3] == 2 && y[4] == 20 && y[5] == 21, "concat channels");
    /* Pad a 1x2x1 float tensor by one on top and left to 2x3x1 with value -1. */
    const float x[2] = {5, 6};
    float py[6];
    const float value = -1.0f;
    fw_pad_nhwc(1, 2, 1, 2, 3, 1, 1, 1, 0, &value, 4, x, py);
    CHECK(py[0] == -1 && py[3] == -1 && py[4] == 5 && py[5] == 6 && py[2] == -1, "pad nhwc");
    const int16_t m[6] = {1, 2, 3, 4, 5, 6};
    int16_t t[6];
    fw_transpose2d(2, 3, 2, m, t);
    CHECK(t[0] == 1 && t[1] == 4 && t[2] == 2 && t[5] == 6, "transpose 2x3");
}

int main(void)
{
#ifdef FW_RUNTIME_DISPATCH
    printf("dispatch build: the %s kernels run\n", fw_kernels_name());
#endif
#if defined(FW_NEON)
    printf("aarch64 build: the neon kernels run\n");
#endif
#ifdef FW_RISCV_DISPATCH
    printf("riscv64 dispatch build: the %s kernels run\n", fw_riscv_level_name(fw_riscv_level()));
#endif
    test_fixed_point();
    test_batch_matmul();
    test_softmax_strided();
#if defined(FW_NEON)
    test_requant_neon();
#endif
    test_conv_s8();
    test_conv_f32();
    test_fully_connected();
    test_elementwise();
    test_elementwise_random();
    test_pools();
    test_pools_random();
    test_quantize_and_lut();
    test_softmax();
    test_data_movement();
    return fw_test_finish();
}
