/* float32 activations: clamp (ReLU, ReLU6), hardswish, hardsigmoid, sigmoid, tanh, leaky ReLU, softmax. */
#include <math.h>

#include "fwedge_rt.h"

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
        y[i] = 1.0f / (1.0f + expf(-x[i]));
    }
}

void fw_tanh_f32(int size, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = tanhf(x[i]);
    }
}

void fw_leaky_relu_f32(int size, float alpha, const float *x, float *y)
{
    for (int i = 0; i < size; ++i) {
        y[i] = x[i] >= 0.0f ? x[i] : alpha * x[i];
    }
}

void fw_softmax_f32(int outer, int depth, const float *x, float *y)
{
    for (int r = 0; r < outer; ++r) {
        const float *xr = x + (size_t)r * depth;
        float *yr = y + (size_t)r * depth;
        float peak = xr[0];
        for (int i = 1; i < depth; ++i) {
            peak = xr[i] > peak ? xr[i] : peak;
        }
        float total = 0.0f;
        for (int i = 0; i < depth; ++i) {
            yr[i] = expf(xr[i] - peak);
            total += yr[i];
        }
        for (int i = 0; i < depth; ++i) {
            yr[i] /= total;
        }
    }
}
