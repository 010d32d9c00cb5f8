"""The quantization room: prepare, calibrate, plan, QDQ writing, accuracy budget, activation dtype."""
from fwedge.quantization.activation_dtype import activation_dtypes, int8_activations, uint8_activations
from fwedge.quantization.qdq import QuantizeOptions, QuantPlan, plan_quantization, quantize_model
from fwedge.quantization.run import (
    CalibrationData, KeptFloat, QuantizeResult, batch_limit, calibrate, calibration_data, collect_stats,
    float_units, load_prepared, ncnn_layers, prepare, quantize,
)

__all__ = [
    "CalibrationData", "KeptFloat", "QuantPlan", "QuantizeOptions", "QuantizeResult", "activation_dtypes",
    "batch_limit", "calibrate", "calibration_data", "collect_stats", "float_units", "int8_activations",
    "load_prepared", "ncnn_layers", "plan_quantization", "prepare", "quantize", "quantize_model",
    "uint8_activations",
]
