/* fwedge portable C99 inference runtime: int8 and float32 kernels for generated models.
 *
 * Conventions
 * -----------
 * - No malloc and no libc beyond memcpy/memset and nearbyintf (quantize.c). exp, sigmoid and
 *   tanh are computed here (activation_f32.c), not by the C library, whose rounding differs
 *   between architectures: float results are the same bits on every board. Every
 *   buffer is owned by the caller: the generated model.c places tensors in one static arena.
 * - Batch is 1. Four-dimensional activations are stored NHWC (channels innermost), so a pixel's
 *   channels are contiguous and the inner loops run over channels. Lower-rank tensors are
 *   stored in their logical (row-major) order.
 * - Weight layouts:
 *     conv2d int8:       groups == 1: packed for the tile GEMM of conv2d_s8.c (see
 *                        fw_pack_conv2d_s8_weights): [ceil(out_c / 8)][k / 2][8][2] over the
 *                        OHWI filter index k = (ky * kernel_w + kx) * in_c + c, zero-padded to
 *                        an even filter length and a multiple of 8 output channels;
 *                        groups > 1: [out_c][kernel_h][kernel_w][in_c / groups] (OHWI)
 *     conv2d float32:    [groups][kernel_h][kernel_w][in_c / groups][out_c / groups] (inner
 *                        loop over output channels: vectorises without reassociating sums)
 *     depthwise conv2d:  [kernel_h][kernel_w][out_c]   (out_c = in_c * multiplier,
 *                                                      output channel c reads input c / multiplier)
 *     fully connected:   [out_features][in_features]
 * - int8 arithmetic follows the TFLite reference kernels: accumulate (x - input_zero_point) * w
 *   in int32, add the int32 bias, requantize with an int32 multiplier and shift per output
 *   channel (fw_multiply_by_quantized_multiplier: TFLite's single-rounding
 *   MultiplyByQuantizedMultiplier, int64 multiply and one rounding shift), add the output zero point and clamp to
 *   [activation_min, activation_max]. A fused ReLU or ReLU6 is just a narrower clamp range.
 *   Integer results are therefore bit-identical on every architecture.
 * - Element-wise kernels support "modular" broadcasting: input element index for flat output
 *   index i is (i / divisor) % modulus. Same shape: divisor 1, modulus n. Per-channel vector
 *   against an NHWC tensor: divisor 1, modulus C. Per-pixel map ([1,1,H,W]) against
 *   [1,C,H,W]: divisor C, modulus H*W. Scalar: modulus 1.
 *
 * Every kernel lives in its own source file (conv2d_s8.c, depthwise_f32.c, ...), so a
 * generated bundle compiles in only the kernels its model uses.
 */
#ifndef FWEDGE_RT_H
#define FWEDGE_RT_H

#include <stddef.h>
#include <stdint.h>

/* The int8 conv kernels use SSE2 intrinsics when the compiler targets x86 (every x86-64 CPU has
 * SSE2), AVX2 ones when it targets AVX2 (-march=x86-64-v3), and the VNNI dot products
 * (vpdpbusd: four u8 x s8 products and their sum per int32 lane) when it targets AVX-512 VNNI
 * with AVX-512 VL or AVX-VNNI (-march=native on such a CPU); portable C elsewhere or with
 * -DFW_NO_INTRINSICS. */
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
#include <immintrin.h>
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define FW_CONV_VNNI 1
#endif
/* With AVX-512 VNNI the widest conv tile GEMM runs on 512-bit registers; -DFW_NO_AVX512 keeps
 * it on 256 bits (for CPUs that lower their clock for 512-bit work). */
#if defined(FW_CONV_VNNI) && defined(__AVX512F__) && defined(__AVX512VNNI__) && !defined(FW_NO_AVX512)
#define FW_CONV_VNNI_512 1
#endif
#elif defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
#include <emmintrin.h>
#elif defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
/* aarch64: NEON (every ARMv8-A CPU) for the groups == 1 conv tile GEMM, its tile gather, the
 * fully-connected dot products and the requantization; the SDOT dot products (four s8 x s8
 * products and their sum per int32 lane) when the compiler targets ARMv8.2 dotprod (the
 * dotprod variant of an aarch64 dispatch build, or -mcpu=... with dotprod). Both read the conv
 * weights in the quad layout (FW_CONV_K_GROUP 4). */
#include <arm_neon.h>
#define FW_CONV_NEON 1
#if defined(__ARM_FEATURE_DOTPROD)
#define FW_CONV_SDOT 1
#endif
#endif

/* RISC-V: the int8 conv kernels use RVV 1.0 intrinsics (vector-length agnostic: vsetvl sizes
 * every loop) when the compiler targets the V extension (-march=rv64gcv, the rvv variants of a
 * riscv64 dispatch build) and has the v0.12+ intrinsics (__riscv_ names, tuple types: clang 17,
 * gcc 14); portable C elsewhere or with -DFW_NO_INTRINSICS. */
#if defined(__riscv_vector) && defined(__riscv_v_intrinsic) && __riscv_v_intrinsic >= 12000 && \
    !defined(FW_NO_INTRINSICS)
#include <riscv_vector.h>
#define FW_RVV 1
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Output-channel block of the conv / depthwise / fully-connected accumulators (on the stack). */
#define FW_CHANNEL_BLOCK 64

/* ---------------------------------------------------------------------------------------- */
/* Fixed-point requantization (TFLite reference / gemmlowp semantics).                      */
/* ---------------------------------------------------------------------------------------- */

/* round(a * b / 2^31) with ties away from zero, saturating the single overflow case
 * a == b == INT32_MIN (gemmlowp SaturatingRoundingDoublingHighMul). */
static inline int32_t fw_saturating_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    return (int32_t)((ab + nudge) / (1LL << 31));
}

/* x / 2^exponent rounded to nearest, ties away from zero (gemmlowp RoundingDivideByPOT);
 * 0 <= exponent <= 31. Right shift of a negative int32 is arithmetic on every supported target. */
static inline int32_t fw_rounding_divide_by_pot(int32_t x, int exponent)
{
    int32_t mask = (int32_t)((1LL << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * multiplier * 2^shift / 2^31: TFLite MultiplyByQuantizedMultiplier in its single-rounding
 * form (TFLITE_SINGLE_ROUNDING=1): (x * multiplier + 2^(30 - shift)) >> (31 - shift) in int64,
 * one rounding, half up. multiplier is in [2^30, 2^31) (or 0), shift in [-31, 30] (positive:
 * left). The gemmlowp form (SRDHM, then RoundingDivideByPOT) rounds twice and lands one step
 * off onnxruntime in ~0.1 % of outputs (53.4992 -> 3424/64 = 53.5 -> 54); this is the
 * semantics of fwedge.interp.multiply_by_quantized_multiplier, which the C runtime matches. */
static inline int32_t fw_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift)
{
    const int total_shift = 31 - shift;
    const int64_t round = (int64_t)1 << (total_shift - 1);
    return (int32_t)(((int64_t)x * (int64_t)multiplier + round) >> total_shift);
}

static inline int32_t fw_clamp_s32(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static inline float fw_clamp_f32(float v, float lo, float hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* ---------------------------------------------------------------------------------------- */
/* Convolutions (conv2d_s8.c, conv2d_f32.c, depthwise_s8.c, depthwise_f32.c)                */
/* ---------------------------------------------------------------------------------------- */

/* The per-channel constants the aarch64 NEON int8 kernels would compute from the weights,
 * multipliers, shifts and biases on every call, computed once by fwedge at export
 * (targets/c_prepared.py; the same values, so the same output bytes). conv2d, over
 * ceil(out_c / FW_CONV_BLOCK) * FW_CONV_BLOCK channels (channel j >= out_c repeats out_c - 1,
 * with no weights): multiplier[j]; shift[j] as the SRSHL amount (shift when `high`, shift - 31
 * otherwise); bias[j] less zp * the sum of channel j's weights. depthwise, over out_c: bias less
 * zp * the sum of the channel's taps, multiplier and shift as given. high: every channel has
 * shift <= -1 and multiplier >= 0; no_min_weight: no weight is -128. */
typedef struct {
    const int32_t *multiplier, *shift, *bias;
    int high;
    int no_min_weight;
} fw_conv_prepared;

/* Geometry and quantization of a 2-D convolution. Padding on the bottom/right is implied by
 * the output size. For float kernels the zero points are ignored and the clamp range is
 * float_min/float_max. prepared: NULL, or the constants above (read by the aarch64 NEON
 * kernels only; any other kernel computes what it needs). */
typedef struct {
    int in_h, in_w, in_c;
    int out_h, out_w, out_c;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_top, pad_left;
    int dilation_h, dilation_w;
    int groups;              /* conv2d only; depthwise: out_c / in_c is the channel multiplier */
    int32_t input_zero_point;
    int32_t output_zero_point;
    int32_t activation_min, activation_max; /* int8 clamp, e.g. [-128, 127] or fused ReLU */
    float float_min, float_max;            /* float clamp, e.g. [-INFINITY, INFINITY] or [0, 6] */
    const fw_conv_prepared *prepared;
} fw_conv_params;

/* Output channels per block of packed int8 conv weights. */
#define FW_CONV_BLOCK 8

/* Element type of the (int8-valued) weights fw_conv2d_s8 reads: int16 in AVX2 builds without
 * VNNI, which load a tile GEMM step's weights without widening them (vpmovsxbw) and hold twice
 * the bytes of conv weights in ROM for it; int8 everywhere else (VNNI, portable and SSE2 builds,
 * other architectures, and every kernel of an x86-64 dispatch build, whose AVX2 variant widens
 * them). The generated model.c declares its conv weights with this type, so one source serves
 * all. */
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS) && !defined(FW_CONV_VNNI) && !defined(FW_X86_DISPATCH)
#define FW_CONV_WEIGHT_INT16 1
typedef int16_t fw_conv_weight;
#else
typedef int8_t fw_conv_weight;
#endif

/* Consecutive filter values of one output channel that one int32 lane of the groups == 1 tile
 * GEMM sums: 4 in VNNI builds (vpdpbusd) and aarch64 NEON builds (SDOT, or smull + sadalp on
 * ARMv8.0: one ROM copy serves both aarch64 kernels), 2 elsewhere (pmaddwd pairs). The packed
 * weight layout depends on it; model.c holds both layouts and compiles in the one this build
 * reads. */
#if defined(FW_CONV_VNNI) || defined(FW_CONV_NEON)
#define FW_CONV_K_GROUP 4
#else
#define FW_CONV_K_GROUP 2
#endif

/* Elements of the int8 weights of conv p in the layout fw_conv2d_s8 reads. */
size_t fw_conv2d_s8_packed_size(const fw_conv_params *p);
/* OHWI int8 weights [out_c][kh][kw][in_c/groups] -> the layout fw_conv2d_s8 reads (groups == 1:
 * [ceil(out_c / 8)][k / G][8][G] with G = FW_CONV_K_GROUP, zero-padded to whole groups; groups
 * > 1: a copy), as fw_conv_weight. The code generator writes the same layouts at export time. */
void fw_pack_conv2d_s8_weights(const fw_conv_params *p, const int8_t *ohwi, fw_conv_weight *packed);

/* y = requant(conv(x - zp, w) + bias). int8 w: packed (fw_pack_conv2d_s8_weights); float w:
 * [groups][kh][kw][in_c/groups][out_c/groups].
 * bias may be NULL. multiplier/shift: one pair per output channel. */
void fw_conv2d_s8(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *w, const int32_t *bias,
                  const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_conv2d_f32(const fw_conv_params *p, const float *x, const float *w, const float *bias, float *y);

/* Depthwise: w: [kh][kw][out_c], output channel c reads input channel c / (out_c / in_c). */
void fw_depthwise_conv2d_s8(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_depthwise_conv2d_f32(const fw_conv_params *p, const float *x, const float *w, const float *bias,
                             float *y);

/* ---------------------------------------------------------------------------------------- */
/* Fully connected (fully_connected_s8.c, fully_connected_f32.c)                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
    int in_features, out_features;
    int32_t input_zero_point;
    int32_t output_zero_point;
    int32_t activation_min, activation_max;
    float float_min, float_max;
} fw_fully_connected_params;

/* y[o] = requant(sum_i (x[i] - zp) * w[o][i] + bias[o]); multiplier/shift per output feature. */
void fw_fully_connected_s8(const fw_fully_connected_params *p, const int8_t *x, const int8_t *w,
                           const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_fully_connected_f32(const fw_fully_connected_params *p, const float *x, const float *w,
                            const float *bias, float *y);

/* ---------------------------------------------------------------------------------------- */
/* Matrix product of two activations (batch_matmul_s8.c, batch_matmul_f32.c)                 */
/* ---------------------------------------------------------------------------------------- */

/* Y[g][i][j] = sum_k A[g][i][k] * B[g][k][j] for g < batches, i < rows, j < cols, k < depth;
 * element (g, i, k) of A is at a[g * a_strides[0] + i * a_strides[1] + k * a_strides[2]], B's
 * (g, k, j) and Y's (g, i, j) likewise: any stored layout (4-D tensors are NHWC). */
typedef struct {
    int batches, rows, depth, cols;
    int a_strides[3], b_strides[3], y_strides[3];
    int32_t a_zero_point, b_zero_point, output_zero_point;
    int32_t multiplier, shift;
    int32_t activation_min, activation_max;
    float float_min, float_max;
} fw_batch_matmul_params;

/* int8: y = clamp(zp_y + requant(sum (a - zp_a) * (b - zp_b), multiplier, shift), act_min, act_max). */
void fw_batch_matmul_s8(const fw_batch_matmul_params *p, const int8_t *a, const int8_t *b, int8_t *y);
void fw_batch_matmul_f32(const fw_batch_matmul_params *p, const float *a, const float *b, float *y);

/* ---------------------------------------------------------------------------------------- */
/* Element-wise add and mul (elementwise_s8.c, elementwise_f32.c)                            */
/* ---------------------------------------------------------------------------------------- */

/* Broadcast of one input over the flat output index (see the conventions above). */
typedef struct {
    int divisor;
    int modulus;
} fw_broadcast;

/* TFLite reference int8 ADD: both inputs are shifted left by left_shift (20), rescaled to a
 * common scale with their own multiplier/shift, summed, and rescaled to the output.
 * MUL uses only output_multiplier/output_shift on (x1 - zp1) * (x2 - zp2). */
typedef struct {
    int size;                 /* output elements */
    fw_broadcast input1, input2;
    int32_t input1_zero_point, input2_zero_point, output_zero_point;
    int32_t left_shift;
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t activation_min, activation_max;
    float float_min, float_max;
} fw_elementwise_params;

void fw_add_s8(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_mul_s8(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_add_f32(const fw_elementwise_params *p, const float *x1, const float *x2, float *y);
void fw_mul_f32(const fw_elementwise_params *p, const float *x1, const float *x2, float *y);
/* y = x1 / x2, IEEE division (ONNX Div by a divisor whose reciprocal is inexact). */
void fw_div_f32(const fw_elementwise_params *p, const float *x1, const float *x2, float *y);

/* ---------------------------------------------------------------------------------------- */
/* Pools (pool_s8.c, pool_f32.c)                                                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
    int in_h, in_w, channels;
    int out_h, out_w;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_top, pad_left;
    int dilation_h, dilation_w;   /* max pool only; average pool uses 1 */
    int count_include_pad;        /* average pool divisor: 1 = kernel area, 0 = valid taps */
    int32_t input_zero_point, output_zero_point;
    int32_t activation_min, activation_max;
    int32_t multiplier, shift;    /* int8 global average pool only (see below) */
    float float_min, float_max;
} fw_pool_params;

/* Max pool: the largest valid tap (padding never wins), clamped to the activation range.
 * Average pool (int8): acc = sum over the counted window of (x - zp_in); count = taps inside the
 * input (kernel area when count_include_pad); y = clamp(zp_out + requant(acc, multipliers[count],
 * shifts[count])), where the tables (kernel_h * kernel_w + 1 entries) hold
 * scale_in / (scale_out * count) for every possible count. */

void fw_max_pool_s8(const fw_pool_params *p, const int8_t *x, int8_t *y);
void fw_avg_pool_s8(const fw_pool_params *p, const int8_t *x, const int32_t *multipliers, const int32_t *shifts,
                    int8_t *y);
void fw_max_pool_f32(const fw_pool_params *p, const float *x, float *y);
void fw_avg_pool_f32(const fw_pool_params *p, const float *x, float *y);

/* Global average pool over H*W of an NHWC tensor: int8 output is
 * requant(sum(x - zp_in), multiplier, shift) + zp_out, where multiplier/shift encode
 * scale_in / (scale_out * H * W). */
void fw_global_avg_pool_s8(const fw_pool_params *p, const int8_t *x, int8_t *y);
void fw_global_avg_pool_f32(const fw_pool_params *p, const float *x, float *y);

/* ---------------------------------------------------------------------------------------- */
/* Activations (lut_s8.c, activation_f32.c, softmax_s8.c)                                  */
/* ---------------------------------------------------------------------------------------- */

/* y[i] = table[x[i] + 128]: any int8 -> int8 function (sigmoid, hardswish, ...) whose
 * 256-entry table the code generator computes with the reference's exact arithmetic. */
void fw_lut_s8(int size, const int8_t *table, const int8_t *x, int8_t *y);
/* Channels-last data (NHWC, or N x C): y[p][c] = tables[c * 256 + x[p][c] + 128], one table per
 * channel (PRelu with a slope per channel). */
void fw_lut_channels_s8(int pixels, int channels, const int8_t *tables, const int8_t *x, int8_t *y);
/* Clamp (standalone ReLU / ReLU6 with unchanged quantization). */
void fw_clamp_s8(int size, int32_t lo, int32_t hi, const int8_t *x, int8_t *y);

void fw_clamp_f32_array(int size, float lo, float hi, const float *x, float *y);
void fw_hardswish_f32(int size, const float *x, float *y);
/* y = clamp(alpha * x + beta, 0, 1) (ONNX HardSigmoid). */
void fw_hardsigmoid_f32(int size, float alpha, float beta, const float *x, float *y);
/* exp(x) rounded to float, the same bits on every architecture (no libm). */
float fw_expf(float x);
/* y = 1 / (1 + exp(-x)) (ONNX Sigmoid), computed in double and rounded once. */
void fw_sigmoid_f32(int size, const float *x, float *y);
/* y = x * sigmoid(x) (ONNX Sigmoid -> Mul(x, sigmoid), SiLU), computed in double and rounded once. */
void fw_silu_f32(int size, const float *x, float *y);
/* y = tanh(x) (ONNX Tanh), computed in double and rounded once. */
void fw_tanh_f32(int size, const float *x, float *y);
/* y = x >= 0 ? x : alpha * x (ONNX LeakyRelu). */
void fw_leaky_relu_f32(int size, float alpha, const float *x, float *y);
/* y = sqrt(x) (ONNX Sqrt): IEEE sqrt is correctly rounded, the same bits on every architecture. */
void fw_sqrt_f32(int size, const float *x, float *y);
/* y = x * x (ONNX Pow with the exponent 2). */
void fw_square_f32(int size, const float *x, float *y);
/* Channels-last data: y[p][c] = x >= 0 ? x : slope[c] * x (ONNX PRelu). */
void fw_prelu_f32(int pixels, int channels, const float *slope, const float *x, float *y);
/* LayerNormalization of `rows` rows of `depth` floats: (x - mean) / sqrt(var + epsilon) * gamma + beta. */
void fw_layer_norm_f32(int rows, int depth, float epsilon, const float *gamma, const float *beta,
                       const float *x, float *y);
/* Softmax over `depth` elements `inner` apart, of outer * inner rows: row (o, i) holds
 * x[(o * depth + d) * inner + i] for d < depth: any stored axis, inner the product of the axes
 * stored after it (1: the innermost axis; a 4-D tensor's W axis in NHWC storage: C). */
void fw_softmax_f32(int outer, int depth, int inner, const float *x, float *y);
/* int8 softmax over the rows of fw_softmax_f32 (softmax_s8.c): d = max - x,
 * e = exp_table[d] (Q24 of exp(-scale * d)), p = (e * 2^30 + S / 2) / S with S = sum(e) in
 * int64, y = clamp(zp + requant(p, multiplier, shift), -128, 127). */
void fw_softmax_s8(int outer, int depth, int inner, const int32_t *exp_table, int32_t multiplier, int32_t shift,
                   int32_t output_zero_point, const int8_t *x, int8_t *y);

/* ---------------------------------------------------------------------------------------- */
/* Quantize / dequantize (quantize.c)                                                        */
/* ---------------------------------------------------------------------------------------- */

/* y = clamp(round_half_even(x / scale) + zero_point, -128, 127) (ONNX QuantizeLinear). */
void fw_quantize_f32_s8(int size, float scale, int32_t zero_point, const float *x, int8_t *y);
/* y = (x - zero_point) * scale (ONNX DequantizeLinear). */
void fw_dequantize_s8_f32(int size, float scale, int32_t zero_point, const int8_t *x, float *y);
/* int8 -> int8 with a new scale / zero point: requant(x - zp_in) + zp_out, clamped. */
void fw_requantize_s8(int size, int32_t input_zero_point, int32_t output_zero_point, int32_t multiplier,
                      int32_t shift, const int8_t *x, int8_t *y);

/* ---------------------------------------------------------------------------------------- */
/* Data movement, any element size (data.c)                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Concatenate along the axis that splits each tensor into `outer` rows: input k contributes
 * inner_sizes[k] elements per row. For the NHWC channel axis outer = H*W, inner = C_k. */
void fw_concat(int count, int outer, const int *inner_sizes, const void *const *inputs, int element_size,
               void *y);
/* Constant pad of a 4-D NHWC tensor: pads = {top, left, channel_front} before and the
 * output shape; the value is written as `element_size` bytes from `value`. */
void fw_pad_nhwc(int in_h, int in_w, int in_c, int out_h, int out_w, int out_c, int pad_top, int pad_left,
                 int pad_channel, const void *value, int element_size, const void *x, void *y);
/* Nearest resize of an NHWC tensor: output pixel (oy, ox) is input pixel (rows[oy], cols[ox]),
 * the tables computed by fwedge from the model's Resize rule (fwedge/ops/resize.py). */
void fw_resize_nearest_nhwc(int in_w, int channels, int out_h, int out_w, const int32_t *rows, const int32_t *cols,
                            int element_size, const void *x, void *y);
/* Bilinear resize of an NHWC tensor: output pixel (oy, ox) interpolates input rows rows[2oy],
 * rows[2oy+1] (weights row_weights[2oy], row_weights[2oy+1]) and columns cols[2ox], cols[2ox+1]
 * (col_weights alike), the tables computed by fwedge from the model's Resize rule. The int8 form
 * dequantizes, interpolates in float and quantizes, as onnxruntime's QDQ Resize. */
void fw_resize_linear_f32_nhwc(int in_w, int channels, int out_h, int out_w, const int32_t *rows,
                               const float *row_weights, const int32_t *cols, const float *col_weights,
                               const float *x, float *y);
void fw_resize_linear_s8_nhwc(int in_w, int channels, int out_h, int out_w, const int32_t *rows,
                              const float *row_weights, const int32_t *cols, const float *col_weights, float x_scale,
                              int32_t x_zero_point, float y_scale, int32_t y_zero_point, const int8_t *x, int8_t *y);
/* Permute a tensor: output element (a, b, c, d) of dims[4] (stored order) is input element
 * a*strides[0] + b*strides[1] + c*strides[2] + d*strides[3] (Transpose, fwedge/ops/shape.py). */
void fw_permute4(const int *dims, const int *strides, int element_size, const void *x, void *y);
/* Gather with one source table per stored axis (batch 1; the stored dims padded to three):
 * y[i][j][k] = x[t0[i]][t1[j]][t2[k]] over an input of in_d1 x in_d2 inner dims. Slice, Split and
 * Gather on constant indices (fwedge/ops/take.py). `inner_run` says t2 is t2[0] + k, copied whole. */
void fw_take3(int in_d1, int in_d2, int out_d0, int out_d1, int out_d2, const int32_t *t0, const int32_t *t1,
              const int32_t *t2, int inner_run, int element_size, const void *x, void *y);
/* DepthToSpace of an NHWC tensor [in_h][in_w][block*block*out_c] to [in_h*block][in_w*block][out_c]:
 * output (y*block + dy, x*block + dx, c) is input (y, x, (dy*block + dx)*out_c + c) when dcr is 1
 * (ONNX mode DCR), input (y, x, c*block*block + dy*block + dx) when dcr is 0 (mode CRD). */
void fw_depth_to_space_nhwc(int in_h, int in_w, int out_c, int block, int dcr, int element_size, const void *x,
                            void *y);
/* The one-hot embedding (fwedge/ops/embedding.py): y[i] = table[clamp(index[i] + 1, 0, rows - 1)],
 * each row `depth` elements of `element_size` bytes; rows 0 and rows - 1 are the no-match rows. */
void fw_embedding(int count, int rows, int depth, int element_size, const int32_t *index, const void *table, void *y);
/* Transpose a [a][b] matrix of `element_size` elements to [b][a] (NHWC <-> NCHW with
 * a = H*W, b = C, and back). */
void fw_transpose2d(int a, int b, int element_size, const void *x, void *y);

/* ---------------------------------------------------------------------------------------- */
/* Run-time kernel dispatch                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* The default bundle of an architecture that has kernel variants (targets/c_build.py DISPATCH)
 * is built with that architecture's FW_<ARCH>_DISPATCH define: baseline kernels that run on any
 * CPU of the architecture, plus some kernels compiled again for wider instruction sets
 * (runtime_c/variants/<kernel>_<suffix>.c), picked per call by *_dispatch entries from what the
 * CPU and the OS support. Every path gives the same bytes. fw_kernels_name() names the set this
 * CPU runs; the harness prints it ("fwedge-kernels <name>") before timed runs. */
#if defined(FW_X86_DISPATCH) || defined(FW_ARM_DISPATCH) || defined(FW_RISCV_DISPATCH)
#define FW_RUNTIME_DISPATCH 1
#endif
#ifdef FW_RUNTIME_DISPATCH
const char *fw_kernels_name(void);
#endif

/* riscv64 (the default riscv64 bundle) */

/* Built with -DFW_RISCV_DISPATCH, a bundle is the portable rv64gc baseline plus the int8 conv,
 * depthwise and add/mul kernels compiled again with the V extension (RVV 1.0;
 * variants/<kernel>_rvv.c, FW_RVV_CFLAGS: zig cc spells it -mcpu=baseline_rv64+v). The *_rvv
 * kernels are vector-length agnostic (every loop sized by vsetvl), so one binary serves any
 * VLEN. fw_riscv_level() picks them when the kernel reports V (data.c); the binary runs on any
 * rv64gc CPU, and every path gives the same bytes. Both conv paths read the pair layout. */
#define FW_RVV_CFLAGS "-march=rv64gcv"
enum { FW_RISCV_BASELINE = 0, FW_RISCV_V = 1 };
#ifdef FW_RISCV_DISPATCH
int fw_riscv_level(void);
const char *fw_riscv_level_name(int level);
void fw_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *pairs, const int32_t *bias,
                           const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_conv2d_s8_rvv(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *pairs, const int32_t *bias,
                      const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_depthwise_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                     const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_depthwise_conv2d_s8_rvv(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_add_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_add_s8_rvv(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_mul_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_mul_s8_rvv(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
#define FW_DISPATCH(name) name##_dispatch
#define FW_CONV2D_S8(p, x, pairs, quads, bias, multiplier, shift, y) \
    fw_conv2d_s8_dispatch(p, x, pairs, bias, multiplier, shift, y)
#endif

/* x86-64 (the default x86_64 bundle) */

/* Built with -DFW_X86_DISPATCH (fwedge does so for x86_64 bundles without -m flags), a bundle is
 * the portable x86-64 baseline plus the int8 conv, depthwise and add/mul kernels compiled again
 * for x86-64-v3 (AVX2; variants/<kernel>_avx2.c, FW_AVX2_CFLAGS) and for AVX-512 VNNI
 * (variants/<kernel>_vnni.c, FW_VNNI_CFLAGS). The generated model calls the *_dispatch entries
 * (FW_DISPATCH, FW_CONV2D_S8), which run the widest variant fw_x86_level() finds the CPU and the
 * OS support, the baseline kernels otherwise: the binary runs on any x86-64 CPU, and every path
 * gives the same bytes. The conv dispatch takes the packed weights in both layouts (pairs for
 * the baseline and AVX2, quads for VNNI). Other builds call the kernels directly. */
#define FW_AVX2_CFLAGS "-march=x86-64-v3"
#define FW_VNNI_CFLAGS "-march=x86-64-v4 -mavx512vnni"
enum { FW_X86_BASELINE = 0, FW_X86_AVX2 = 1, FW_X86_AVX512_VNNI = 2 };
#ifdef FW_X86_DISPATCH
int fw_x86_level(void);
const char *fw_x86_level_name(int level);
void fw_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const fw_conv_weight *pairs, const int8_t *quads,
                           const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_conv2d_s8_vnni(const fw_conv_params *p, const int8_t *x, const int8_t *quads, const int32_t *bias,
                       const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_conv2d_s8_avx2(const fw_conv_params *p, const int8_t *x, const int8_t *pairs, const int32_t *bias,
                       const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_depthwise_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                     const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_depthwise_conv2d_s8_vnni(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                 const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_depthwise_conv2d_s8_avx2(const fw_conv_params *p, const int8_t *x, const int8_t *w, const int32_t *bias,
                                 const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_add_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_add_s8_vnni(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_add_s8_avx2(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_mul_s8_dispatch(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_mul_s8_vnni(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
void fw_mul_s8_avx2(const fw_elementwise_params *p, const int8_t *x1, const int8_t *x2, int8_t *y);
#define FW_DISPATCH(name) name##_dispatch
#define FW_CONV2D_S8(p, x, pairs, quads, bias, multiplier, shift, y) \
    fw_conv2d_s8_dispatch(p, x, pairs, quads, bias, multiplier, shift, y)
#elif defined(FW_ARM_DISPATCH)
/* aarch64 (the default aarch64 bundle): built with -DFW_ARM_DISPATCH, the int8 conv and fully
 * connected kernels are also compiled for ARMv8 with dotprod (variants/conv2d_s8_dotprod.c,
 * variants/fully_connected_s8_dotprod.c, FW_DOTPROD_CFLAGS: their dot products on sdot);
 * fw_conv2d_s8_dispatch and fw_fully_connected_s8_dispatch run them when the kernel reports the
 * CPU's dotprod instructions (getauxval(AT_HWCAP) & HWCAP_ASIMDDP), the baseline ARMv8.0 NEON
 * kernels otherwise. Both conv kernels read the same quad layout of the weights, one copy in
 * ROM. fw_kernels_name(): "dotprod" or "baseline". Other kernels are called directly. */
#define FW_DOTPROD_CFLAGS "-mcpu=generic+dotprod"
int fw_arm_has_dotprod(void);
void fw_conv2d_s8_dispatch(const fw_conv_params *p, const int8_t *x, const int8_t *quads, const int32_t *bias,
                           const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_conv2d_s8_dotprod(const fw_conv_params *p, const int8_t *x, const int8_t *quads, const int32_t *bias,
                          const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_fully_connected_s8_dispatch(const fw_fully_connected_params *p, const int8_t *x, const int8_t *w,
                                    const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y);
void fw_fully_connected_s8_dotprod(const fw_fully_connected_params *p, const int8_t *x, const int8_t *w,
                                   const int32_t *bias, const int32_t *multiplier, const int32_t *shift, int8_t *y);
#define FW_DISPATCH(name) name
#define FW_CONV2D_S8(p, x, pairs, quads, bias, multiplier, shift, y) \
    fw_conv2d_s8_dispatch(p, x, quads, bias, multiplier, shift, y)
#define FW_FULLY_CONNECTED_S8 fw_fully_connected_s8_dispatch
#elif !defined(FW_DISPATCH) /* no dispatch build of another architecture either */
#define FW_DISPATCH(name) name
#if FW_CONV_K_GROUP == 4
#define FW_CONV2D_S8(p, x, pairs, quads, bias, multiplier, shift, y) fw_conv2d_s8(p, x, quads, bias, multiplier, shift, y)
#else
#define FW_CONV2D_S8(p, x, pairs, quads, bias, multiplier, shift, y) fw_conv2d_s8(p, x, pairs, bias, multiplier, shift, y)
#endif
#endif
/* The int8 fully connected layer the generated model calls: dispatched on aarch64 only. */
#ifndef FW_FULLY_CONNECTED_S8
#define FW_FULLY_CONNECTED_S8 fw_fully_connected_s8
#endif

/* ---------------------------------------------------------------------------------------- */
/* Vector requantization shared by conv2d_s8.c and depthwise_s8.c                            */
/* ---------------------------------------------------------------------------------------- */

/* Output pixels per tile of the int8 conv kernels. */
#define FW_TILE_PIXELS 4

#if defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
/* fw_multiply_by_quantized_multiplier of four int32 lanes by one multiplier m (>= 0) and one
 * total shift s = 31 - shift in [1, 62], exactly. The products come from the unsigned pmuludq;
 * for x < 0 the unsigned product is x * m + 2^32 * m.
 * s >= 33 (every layer whose scale is below 1/4): the rounding constant 2^(s - 1) is a multiple
 * of 2^32, so the result is (high word of x * m + 2^(s - 33)) >> (s - 32), all in 32 bits: the
 * high words of the unsigned products minus m where x < 0, plus 2^(s - 33), shifted
 * arithmetically. Otherwise the signed product and 2^(s - 1) are summed in 64 bits and bits
 * [s, s + 31] taken. */
static inline __m128i fw_requant4(__m128i x, __m128i m, __m128i round, int s)
{
    const __m128i high = _mm_set_epi32(-1, 0, -1, 0);
    __m128i p02 = _mm_mul_epu32(x, m);
    __m128i p13 = _mm_mul_epu32(_mm_srli_epi64(x, 32), m);
    const __m128i correction = _mm_and_si128(_mm_srai_epi32(x, 31), m);
    if (s >= 33) {
        const __m128i words = _mm_or_si128(_mm_srli_epi64(p02, 32), _mm_and_si128(p13, high));
        const __m128i rounded = _mm_add_epi32(_mm_sub_epi32(words, correction), _mm_set1_epi32(1 << (s - 33)));
        return _mm_sra_epi32(rounded, _mm_cvtsi32_si128(s - 32));
    }
    p02 = _mm_add_epi64(_mm_sub_epi64(p02, _mm_slli_epi64(correction, 32)), round);
    p13 = _mm_add_epi64(_mm_sub_epi64(p13, _mm_and_si128(correction, high)), round);
    if (s == 32) {
        const __m128i words = _mm_or_si128(_mm_srli_epi64(p02, 32), _mm_and_si128(p13, high));
        return words;
    }
    p02 = _mm_srl_epi64(p02, _mm_cvtsi32_si128(s));
    p13 = _mm_srl_epi64(p13, _mm_cvtsi32_si128(s));
    return _mm_or_si128(_mm_andnot_si128(high, p02), _mm_slli_epi64(p13, 32));
}

#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
/* Constants of fw_requant8 for eight lanes' multipliers m and total shifts s in [1, 62]. */
typedef struct {
    __m256i m, m13, round, count;          /* s >= 33 */
    __m256i narrow, s02, s13, round02, round13; /* s <= 32 */
    int any_narrow;
} fw_requant8_t;

static inline fw_requant8_t fw_requant8_setup(__m256i m, __m256i s)
{
    fw_requant8_t q;
    const __m256i thirty_three = _mm256_set1_epi32(33), one = _mm256_set1_epi64x(1);
    q.m = m;
    q.m13 = _mm256_srli_epi64(m, 32);
    q.round = _mm256_sllv_epi32(_mm256_set1_epi32(1), _mm256_sub_epi32(s, thirty_three));
    q.count = _mm256_sub_epi32(s, _mm256_set1_epi32(32));
    q.narrow = _mm256_cmpgt_epi32(thirty_three, s);
    q.any_narrow = _mm256_movemask_epi8(q.narrow) != 0;
    q.s02 = _mm256_and_si256(s, _mm256_set1_epi64x(0xffffffff));
    q.s13 = _mm256_srli_epi64(s, 32);
    q.round02 = _mm256_sllv_epi64(one, _mm256_sub_epi64(q.s02, one));
    q.round13 = _mm256_sllv_epi64(one, _mm256_sub_epi64(q.s13, one));
    return q;
}

/* fw_multiply_by_quantized_multiplier of eight int32 lanes, each with its own multiplier and
 * total shift (fw_requant8_setup), exactly; signed products of vpmuldq. Lanes with s >= 33: the
 * high words plus 2^(s - 33) shifted with vpsravd (see fw_requant4). Lanes with s <= 32 (a
 * scale of 1/4 or more), when there are any: the 64-bit products plus 2^(s - 1) shifted right
 * by s with vpsrlvq (bits [s, s + 31] are those of an arithmetic shift when s <= 32), blended
 * in. */
static inline __m256i fw_requant8(__m256i x, const fw_requant8_t *q)
{
    const __m256i p02 = _mm256_mul_epi32(x, q->m);
    const __m256i p13 = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), q->m13);
    const __m256i words = _mm256_blend_epi32(_mm256_srli_epi64(p02, 32), p13, 0xaa);
    __m256i v = _mm256_srav_epi32(_mm256_add_epi32(words, q->round), q->count);
    if (q->any_narrow) {
        const __m256i lo = _mm256_srlv_epi64(_mm256_add_epi64(p02, q->round02), q->s02);
        const __m256i hi = _mm256_srlv_epi64(_mm256_add_epi64(p13, q->round13), q->s13);
        v = _mm256_blendv_epi8(v, _mm256_blend_epi32(lo, _mm256_slli_epi64(hi, 32), 0xaa), q->narrow);
    }
    return v;
}
#endif

/* Transpose four vectors of four int32 lanes in place. */
static inline void fw_transpose4(__m128i *r0, __m128i *r1, __m128i *r2, __m128i *r3)
{
    const __m128i t0 = _mm_unpacklo_epi32(*r0, *r1), t1 = _mm_unpacklo_epi32(*r2, *r3);
    const __m128i t2 = _mm_unpackhi_epi32(*r0, *r1), t3 = _mm_unpackhi_epi32(*r2, *r3);
    *r0 = _mm_unpacklo_epi64(t0, t1);
    *r1 = _mm_unpackhi_epi64(t0, t1);
    *r2 = _mm_unpacklo_epi64(t2, t3);
    *r3 = _mm_unpackhi_epi64(t2, t3);
}
#endif

#if defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
/* fw_multiply_by_quantized_multiplier of four int32 lanes x with their own multipliers m (>= 0)
 * and total shifts s = 31 - shift in [1, 62], exactly, two ways:
 * - any s: the 64-bit products (smull) shifted right by s with rounding (srshl by -s adds
 *   2^(s - 1) in the instruction's own wider precision, no overflow), their low words (xtn: the
 *   C cast) kept;
 * - wide (every lane s >= 32, every layer whose scale is below 1/2): h = floor(x * m / 2^31) by
 *   sqdmulh (it saturates only for x = m = INT32_MIN, and m >= 0), then h rounded right by
 *   d = s - 31 >= 1 (srshl by -d). Exact: with x * m = 2^31 h + r, 0 <= r < 2^31,
 *   (x * m + 2^(s - 1)) >> s = (2^31 (h + 2^(d - 1)) + r) >> (31 + d) = (h + 2^(d - 1)) >> d,
 *   r < 2^31 never carrying into bit 31 + d. (s = 31 would need the rounding sqrdmulh
 *   instead: it takes the first form.)
 * minus_s holds -s (first form) or -(s - 31) (wide). */
static inline int32x4_t fw_requant4_neon(int32x4_t x, int32x4_t m, int32x4_t minus_s, int wide)
{
    if (wide) {
        return vrshlq_s32(vqdmulhq_s32(x, m), minus_s);
    }
    const int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(x), vget_low_s32(m)), vmovl_s32(vget_low_s32(minus_s)));
    const int64x2_t hi = vrshlq_s64(vmull_high_s32(x, m), vmovl_high_s32(minus_s));
    return vmovn_high_s64(vmovn_s64(lo), hi);
}
#endif

/* Requantization constants of output channels [c0, c0 + count), computed once per call as
 * arrays (multiplier, total shift 31 - shift in [1, 62], bias or 0); channels past out_c repeat
 * the last one. */
static inline void fw_requant_channels(const fw_conv_params *p, const int32_t *bias, const int32_t *multiplier,
                                       const int32_t *shift, int c0, int count, int32_t *multiplier_out,
                                       int32_t *total_shift_out, int32_t *bias_out)
{
    for (int j = 0; j < count; ++j) {
        const int oc = c0 + j < p->out_c ? c0 + j : p->out_c - 1;
        multiplier_out[j] = multiplier[oc];
        total_shift_out[j] = 31 - shift[oc];
        bias_out[j] = bias ? bias[oc] : 0;
    }
}

/* Requantize a tile acc[FW_TILE_PIXELS][stride] (the first FW_CONV_BLOCK values of each row,
 * plus bias) of FW_CONV_BLOCK channels with multipliers m and total shifts s, clamped to the
 * activation range, and store its first `pixels` rows' first `channels` values to y, rows
 * y_stride bytes apart (NHWC: the output channel count). A full block is stored straight from
 * the registers: a round trip through a tile on the stack (a wide store read back as 8-byte
 * rows) stalls store forwarding.
 * AVX2: one pixel's eight channels per register (fw_requant8).
 * SSE2: the four pixels of one channel share its multiplier and shift, so each 4x4 quarter of
 * the tile is transposed to channel-major, requantized four lanes at a time (fw_requant4),
 * transposed back and packed to int8 with the clamp on int16. */
static inline void fw_requant_tile(const fw_conv_params *p, const int32_t *acc, int stride, const int32_t *m,
                                   const int32_t *s, const int32_t *bias, int8_t *y, size_t y_stride, int pixels,
                                   int channels)
{
    int8_t out[FW_TILE_PIXELS * FW_CONV_BLOCK]; /* a partial block, before its copy to y */
#if defined(__AVX2__) && !defined(FW_NO_INTRINSICS)
    {
        const fw_requant8_t q = fw_requant8_setup(_mm256_loadu_si256((const __m256i *)m),
                                                  _mm256_loadu_si256((const __m256i *)s));
        const __m256i bv = _mm256_loadu_si256((const __m256i *)bias);
        const __m256i zero_point = _mm256_set1_epi32(p->output_zero_point);
        __m256i r[FW_TILE_PIXELS];
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const __m256i x = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(acc + t * stride)), bv);
            r[t] = _mm256_add_epi32(fw_requant8(x, &q), zero_point);
        }
        const __m256i lo = _mm256_set1_epi16((int16_t)p->activation_min);
        const __m256i hi = _mm256_set1_epi16((int16_t)p->activation_max);
        const __m256i a = _mm256_min_epi16(_mm256_max_epi16(_mm256_packs_epi32(r[0], r[1]), lo), hi);
        const __m256i b = _mm256_min_epi16(_mm256_max_epi16(_mm256_packs_epi32(r[2], r[3]), lo), hi);
        /* dwords now hold four channels of one pixel: [0a 1a 2a 3a | 0b 1b 2b 3b] */
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b),
                                                          _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        if (channels == FW_CONV_BLOCK) {
            const __m128i rows01 = _mm256_castsi256_si128(bytes), rows23 = _mm256_extracti128_si256(bytes, 1);
            const __m128i rows[FW_TILE_PIXELS] = {rows01, _mm_unpackhi_epi64(rows01, rows01), rows23,
                                                  _mm_unpackhi_epi64(rows23, rows23)};
            for (int t = 0; t < pixels; ++t) {
                _mm_storel_epi64((__m128i *)(y + t * y_stride), rows[t]);
            }
            return;
        }
        _mm256_storeu_si256((__m256i *)out, bytes);
    }
#elif defined(__SSE2__) && !defined(FW_NO_INTRINSICS)
    const __m128i zero_point = _mm_set1_epi32(p->output_zero_point);
    const __m128i lo = _mm_set1_epi16((int16_t)p->activation_min), hi = _mm_set1_epi16((int16_t)p->activation_max);
    __m128i r[FW_TILE_PIXELS][2];
    for (int half = 0; half < 2; ++half) {
        const __m128i bv = _mm_loadu_si128((const __m128i *)(bias + 4 * half));
        __m128i v[4];
        for (int t = 0; t < 4; ++t) {
            v[t] = _mm_add_epi32(_mm_loadu_si128((const __m128i *)(acc + t * stride + 4 * half)), bv);
        }
        fw_transpose4(&v[0], &v[1], &v[2], &v[3]);
        for (int j = 0; j < 4; ++j) {
            const int c = 4 * half + j;
            v[j] = _mm_add_epi32(fw_requant4(v[j], _mm_set1_epi32(m[c]), _mm_set1_epi64x((int64_t)1 << (s[c] - 1)),
                                             s[c]),
                                 zero_point);
        }
        fw_transpose4(&v[0], &v[1], &v[2], &v[3]);
        for (int t = 0; t < 4; ++t) {
            r[t][half] = v[t];
        }
    }
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        __m128i v16 = _mm_packs_epi32(r[t][0], r[t][1]);
        v16 = _mm_min_epi16(_mm_max_epi16(v16, lo), hi);
        if (channels == FW_CONV_BLOCK) {
            if (t < pixels) {
                _mm_storel_epi64((__m128i *)(y + t * y_stride), _mm_packs_epi16(v16, v16));
            }
        } else {
            _mm_storel_epi64((__m128i *)(out + t * FW_CONV_BLOCK), _mm_packs_epi16(v16, v16));
        }
    }
    if (channels == FW_CONV_BLOCK) {
        return;
    }
#elif defined(__aarch64__) && !defined(FW_NO_INTRINSICS)
    {
        /* aarch64: one pixel's eight channels as two registers (fw_requant4_neon); saturating
         * narrows to int16 and int8, then the clamp on int8 (the activation range lies inside
         * int8, so saturating first changes nothing); two pixels per 16-byte register. */
        const int32x4_t s0 = vld1q_s32(s), s1 = vld1q_s32(s + 4);
        const int wide = vminvq_s32(vminq_s32(s0, s1)) >= 32;
        const int32x4_t thirty_one = vdupq_n_s32(wide ? 31 : 0);
        const int32x4_t m0 = vld1q_s32(m), m1 = vld1q_s32(m + 4);
        const int32x4_t minus_s0 = vsubq_s32(thirty_one, s0), minus_s1 = vsubq_s32(thirty_one, s1);
        const int32x4_t b0 = vld1q_s32(bias), b1 = vld1q_s32(bias + 4);
        const int32x4_t zero_point = vdupq_n_s32(p->output_zero_point);
        int16x8_t r[FW_TILE_PIXELS];
        for (int t = 0; t < FW_TILE_PIXELS; ++t) {
            const int32x4_t x0 = vaddq_s32(vld1q_s32(acc + t * stride), b0);
            const int32x4_t x1 = vaddq_s32(vld1q_s32(acc + t * stride + 4), b1);
            const int32x4_t v0 = vaddq_s32(fw_requant4_neon(x0, m0, minus_s0, wide), zero_point);
            const int32x4_t v1 = vaddq_s32(fw_requant4_neon(x1, m1, minus_s1, wide), zero_point);
            r[t] = vqmovn_high_s32(vqmovn_s32(v0), v1);
        }
        const int8x16_t lo = vdupq_n_s8((int8_t)p->activation_min), hi = vdupq_n_s8((int8_t)p->activation_max);
        const int8x16_t rows01 = vminq_s8(vmaxq_s8(vqmovn_high_s16(vqmovn_s16(r[0]), r[1]), lo), hi);
        const int8x16_t rows23 = vminq_s8(vmaxq_s8(vqmovn_high_s16(vqmovn_s16(r[2]), r[3]), lo), hi);
        if (channels == FW_CONV_BLOCK) {
            const int8x8_t rows[FW_TILE_PIXELS] = {vget_low_s8(rows01), vget_high_s8(rows01), vget_low_s8(rows23),
                                                   vget_high_s8(rows23)};
            for (int t = 0; t < pixels; ++t) {
                vst1_s8(y + t * y_stride, rows[t]);
            }
            return;
        }
        vst1q_s8(out, rows01);
        vst1q_s8(out + 16, rows23);
    }
#else
    const int32_t zero_point = p->output_zero_point, lo = p->activation_min, hi = p->activation_max;
    for (int t = 0; t < FW_TILE_PIXELS; ++t) {
        for (int j = 0; j < FW_CONV_BLOCK; ++j) {
            const int64_t product = (int64_t)(acc[t * stride + j] + bias[j]) * m[j];
            const int32_t v = (int32_t)((product + ((int64_t)1 << (s[j] - 1))) >> s[j]);
            out[t * FW_CONV_BLOCK + j] = (int8_t)fw_clamp_s32(v + zero_point, lo, hi);
        }
    }
#endif
#ifdef FW_RVV
    /* one vector copy per pixel: the byte loop becomes a call of libc's memcpy for 8 bytes */
    const size_t vl = __riscv_vsetvl_e8m1((size_t)channels);
    for (int t = 0; t < pixels; ++t) {
        __riscv_vse8_v_i8m1(y + t * y_stride, __riscv_vle8_v_i8m1(out + t * FW_CONV_BLOCK, vl), vl);
    }
#else
    for (int t = 0; t < pixels; ++t) {
        for (int j = 0; j < channels; ++j) {
            y[t * y_stride + j] = out[t * FW_CONV_BLOCK + j];
        }
    }
#endif
}

#ifdef __cplusplus
}
#endif

#endif /* FWEDGE_RT_H */
