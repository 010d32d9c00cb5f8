/* float32 activations: clamp (ReLU, ReLU6), hardswish, hardsigmoid, sigmoid, silu, tanh, leaky ReLU, sqrt, square, softmax,
 * layer norm.
 *
 * exp, sigmoid and tanh use no libm: each architecture's C library rounds expf and tanhf its
 * own way (musl and glibc differ by 1 ULP on some inputs), so a bundle would give other bits on
 * every board. fw_exp_f64 below uses only IEEE double +, -, * and / (the build sets
 * -ffp-contract=off, so nothing is fused), which round the same way on every architecture. Its
 * relative error is below 1e-14, so the float results are correctly rounded except within
 * 1e-14 of a rounding boundary, and the same bits everywhere. */
#include <stdint.h>
#include <string.h>

#include "fwedge_rt.h"

/* exp(x) for the range that matters to a float result: 0 below -746, +inf above 710, NaN kept. */
static double fw_exp_f64(double x)
{
    /* ln 2 split so that k * LN2_HI is exact for |k| < 2^20 (fdlibm's constants). */
    const double LN2_HI = 6.93147180369123816490e-01;
    const double LN2_LO = 1.90821492927058770002e-10;
    const double INV_LN2 = 1.44269504088896338700e+00;
    const double ROUND = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    if (x != x) {
        return x;
    }
    if (x > 709.0) {
        const uint64_t inf_bits = 0x7ff0000000000000u;
        double inf;
        memcpy(&inf, &inf_bits, sizeof inf);
        return inf;
    }
    if (x < -745.0) {
        return 0.0;
    }
    double k = (x * INV_LN2 + ROUND) - ROUND; /* nearest integer to x / ln 2 */
    double r = (x - k * LN2_HI) - k * LN2_LO; /* |r| <= ln(2) / 2 */
    /* Taylor series to r^12 / 12!: the next term is below 2e-16 of the result. */
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* Multiply by 2^k in two steps so that neither factor leaves the normal double range. */
    int n = (int)k;
    int half = n / 2;
    uint64_t bits_a = (uint64_t)(half + 1023) << 52;
    uint64_t bits_b = (uint64_t)(n - half + 1023) << 52;
    double a, b;
    memcpy(&a, &bits_a, sizeof a);
    memcpy(&b, &bits_b, sizeof b);
    return p * a * b;
}

float fw_expf(float x)
{
    return (float)fw_exp_f64((double)x);
}

void fw_clamp_f32_array(int size, float lo, float hi, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = fw_clamp_f32(x[i], lo, hi);
    }
}

void fw_hardswish_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = x[i] * fw_clamp_f32(x[i] / 6.0f + 0.5f, 0.0f, 1.0f);
    }
}

void fw_hardsigmoid_f32(int size, float alpha, float beta, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = fw_clamp_f32(alpha * x[i] + beta, 0.0f, 1.0f);
    }
}

void fw_sigmoid_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = (float)(1.0 / (1.0 + fw_exp_f64(-(double)x[i])));
    }
}

void fw_silu_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        const double v = (double)x[i];
        y[i] = (float)(v * (1.0 / (1.0 + fw_exp_f64(-v))));
    }
}

static float fw_tanh_one(float value)
{
    double x = (double)value;
    double ax = x < 0.0 ? -x : x;
    double t;
    if (!(ax == ax)) {
        return value;
    }
    if (ax < 0.0009765625) { /* |x| < 2^-10: x - x^3/3 + 2x^5/15, the next term is below 1e-19 x */
        double x2 = x * x;
        return (float)(x + x * x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0)));
    }
    if (ax > 10.0) { /* tanh(10) rounds to 1 in float */
        t = 1.0;
    } else {
        t = 1.0 - 2.0 / (fw_exp_f64(2.0 * ax) + 1.0);
    }
    return (float)(x < 0.0 ? -t : t);
}

void fw_tanh_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = fw_tanh_one(x[i]);
    }
}

void fw_sqrt_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = __builtin_sqrtf(x[i]); /* the sqrt instruction: correctly rounded, NaN below 0 */
    }
}

void fw_square_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = x[i] * x[i];
    }
}

void fw_leaky_relu_f32(int size, float alpha, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = x[i] >= 0.0f ? x[i] : alpha * x[i];
    }
}

void fw_prelu_f32(int pixels, int channels, const float *slope, const float *x, float *y)
{
    for (int p = 0; p < pixels; ++p) {
        const float *in = x + (size_t)p * channels;
        float *out = y + (size_t)p * channels;
        for (int c = 0; c < channels; ++c) {
            out[c] = in[c] >= 0.0f ? in[c] : slope[c] * in[c];
        }
    }
}

void fw_softmax_f32(int outer, int depth, int inner, const float *x, float *y)
{
    for (int r = 0; r < outer * inner; ++r) {
        const size_t start = (size_t)(r / inner) * depth * inner + (size_t)(r % inner);
        const float *xr = x + start;
        float *yr = y + start;
        float peak = xr[0];
        for (int i = 1; i < depth; ++i) {
            peak = xr[(size_t)i * inner] > peak ? xr[(size_t)i * inner] : peak;
        }
        float total = 0.0f;
        for (int i = 0; i < depth; ++i) {
            yr[(size_t)i * inner] = fw_expf(xr[(size_t)i * inner] - peak);
            total += yr[(size_t)i * inner];
        }
        for (int i = 0; i < depth; ++i) {
            yr[(size_t)i * inner] /= total;
        }
    }
}

void fw_layer_norm_f32(int rows, int depth, float epsilon, const float *gamma, const float *beta,
                       const float *x, float *y)
{
    for (int r = 0; r < rows; ++r) {
        const float *row = x + (size_t)r * depth;
        float *out = y + (size_t)r * depth;
        double sum = 0.0;
        for (int i = 0; i < depth; ++i) {
            sum += row[i];
        }
        const float mean = (float)(sum / depth);
        double squares = 0.0;
        for (int i = 0; i < depth; ++i) {
            const double d = (double)(row[i] - mean);
            squares += d * d;
        }
        const float var = (float)(squares / depth);
        const float inv = 1.0f / __builtin_sqrtf(var + epsilon); /* correctly rounded sqrt */
        for (int i = 0; i < depth; ++i) {
            out[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
        }
    }
}
