"""The quantization room: float model -> QuantTable -> plan -> QDQ model, with budget and activation dtype.

Modules, in the order data flows (each imports only those before it):
plan (QuantPlan, layer groups, KeptFloat), request (QuantizeRequest), prepare (the prepared float
model), calibrate (calibration set, statistics, QuantTable), qdq (QDQ writing), activation_dtype
(int8 <-> uint8 activation pairs), budget (the pure accuracy-budget search), run (one quantize run).
"""
from fwedge.quantization.activation_dtype import activation_dtypes, int8_activations, uint8_activations
from fwedge.quantization.budget import BudgetResult, BudgetStep, search_budget
from fwedge.quantization.calibrate import CalibrationData, calibrate, calibration_data, collect_stats, ncnn_layers
from fwedge.quantization.plan import (
    BiasSlot, ConstantSlot, KeptFloat, LayerGroup, QuantizeOptions, QuantPlan, RequantEdge, WeightSlot,
    candidate_tensors, float_units, layer_groups, name_nodes, plan_quantization, weight_axis,
)
from fwedge.quantization.prepare import batch_limit, load_prepared, prepare
from fwedge.quantization.qdq import dequantized_name, quantize_model, quantize_weight
from fwedge.quantization.request import (
    DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES, BudgetSpec, QuantizeRequest,
)
from fwedge.quantization.run import QuantizeResult, quantize, run_quantization

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_NUM_SAMPLES", "BiasSlot", "BudgetResult", "BudgetSpec", "BudgetStep",
    "CalibrationData", "ConstantSlot", "KeptFloat", "LayerGroup", "QuantPlan", "QuantizeOptions",
    "QuantizeRequest", "QuantizeResult", "RequantEdge", "WeightSlot", "activation_dtypes", "batch_limit",
    "calibrate", "calibration_data", "candidate_tensors", "collect_stats", "dequantized_name", "float_units",
    "int8_activations", "layer_groups", "load_prepared", "name_nodes", "ncnn_layers", "plan_quantization",
    "prepare", "quantize", "quantize_model", "quantize_weight", "run_quantization", "search_budget",
    "uint8_activations",
]
