"""The quantization room: prepare, calibrate, plan, QDQ writing, accuracy budget, activation dtype."""
from fwedge.quantization.activation_dtype import activation_dtypes, int8_activations, uint8_activations
from fwedge.quantization.plan import (
    BiasSlot, ConstantSlot, KeptFloat, LayerGroup, QuantizeOptions, QuantPlan, RequantEdge, WeightSlot,
    candidate_tensors, float_units, layer_groups, name_nodes, plan_quantization, weight_axis,
)
from fwedge.quantization.qdq import dequantized_name, quantize_model, quantize_weight
from fwedge.quantization.run import (
    CalibrationData, QuantizeResult, batch_limit, calibrate, calibration_data, collect_stats, load_prepared,
    ncnn_layers, prepare, quantize,
)

__all__ = [
    "BiasSlot", "CalibrationData", "ConstantSlot", "KeptFloat", "LayerGroup", "QuantPlan", "QuantizeOptions",
    "QuantizeResult", "RequantEdge", "WeightSlot", "activation_dtypes", "batch_limit", "calibrate",
    "calibration_data", "candidate_tensors", "collect_stats", "dequantized_name", "float_units",
    "int8_activations", "layer_groups", "load_prepared", "name_nodes", "ncnn_layers", "plan_quantization",
    "prepare", "quantize", "quantize_model", "quantize_weight", "uint8_activations", "weight_axis",
]
