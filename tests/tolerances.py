"""Every numeric tolerance the tests use, in one place."""

# fp32 targets against onnxruntime fp32: relative tolerance (plus a tiny absolute floor for
# values near zero).
FP32_RTOL = 1e-5
FP32_ATOL = 1e-5

# The float C build against onnxruntime fp32 (different summation order, no fused multiply-add
# guarantees): absolute tolerance on logits.
C_FP32_ATOL = 1e-4

# int8 targets against onnxruntime running the same QDQ model: at most this many quantization
# steps on any output element; the count of off-by-one elements is reported, not hidden.
INT8_MAX_STEPS = 1

# Task metric: accuracy of an int8 target against the int8 ONNX (ORT) reference, percentage points.
INT8_TARGET_ACCURACY_PP = 0.2

# Quantized against float: best calibration method's accuracy drop, percentage points.
INT8_VS_FLOAT_ACCURACY_PP = 0.3

# A deep int8 model (PP-OCR cls, ~60 int8 layers) on a target against ORT running the same QDQ
# model: one-step differences amplify layer by layer, so compare top-1 decisions, not steps.
DEEP_INT8_TOP1_AGREEMENT = 0.9

# Quantized against float on a 1000-image subset of a test set (the test command's check): the
# best method's accuracy drop, percentage points. Looser than the 10k figure because one
# flipped prediction is 0.1 pp here.
INT8_SUBSET_ACCURACY_PP = 0.5
