"""Calibration: streaming statistics and range methods (minmax, percentile, kl, mse)."""
from fwedge.calibration import kl, minmax, mse, percentile  # noqa: F401  (fill METHODS)
from fwedge.calibration.collect import CalibrationStats, collect, compute
from fwedge.calibration.histogram import Histogram
from fwedge.calibration.options import METHODS, Method, MethodOptions
from fwedge.calibration.table import QuantTable, TensorQuant, params_from_range

__all__ = [
    "CalibrationStats", "Histogram", "METHODS", "Method", "MethodOptions", "QuantTable",
    "TensorQuant", "collect", "compute", "params_from_range",
]
