"""QuantizeRequest: everything one quantize run takes, typed, defaulted and checked once."""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field, replace

import onnx

from fwedge.calibration import Method, MethodOptions, QuantTable
from fwedge.data import Dataset, Preprocess
from fwedge.errors import QuantizeRequestError
from fwedge.quantization.plan import QuantizeOptions

DEFAULT_NUM_SAMPLES = 512
DEFAULT_BATCH_SIZE = 64
DEFAULT_BINS = 2048
DEFAULT_EVAL_SAMPLES = 1000
MIN_BINS = 8  # calibration.collect refuses fewer
BUDGET_BATCH_SIZE = 256  # evaluation batches of the accuracy budget (in memory, scored many times)
ACTIVATION_DTYPES = ("int8", "uint8")


@dataclass(frozen=True)
class BudgetSpec:
    """The accuracy budget of a request: exactly one of the two targets, and the data to measure on.

    Attributes:
        max_accuracy_drop: labelled budget, percentage points of top-1 accuracy below the float model.
        min_agreement: fidelity budget, top-1 agreement with the float model, a fraction in (0, 1].
        eval_data: evaluation data (labelled for max_accuracy_drop).
        eval_samples: samples of eval_data used (None: all).
        preprocess: preprocessing (None: the model's metadata or the default).
        batch_size: evaluation batch size.
    """

    max_accuracy_drop: float | None
    min_agreement: float | None
    eval_data: str | os.PathLike | Dataset
    eval_samples: int | None = DEFAULT_EVAL_SAMPLES
    preprocess: Preprocess | None = None
    batch_size: int = BUDGET_BATCH_SIZE

    @property
    def labelled(self) -> bool:
        """Whether the budget is on labelled accuracy (else on agreement with the float model)."""
        return self.max_accuracy_drop is not None


@dataclass(frozen=True)
class QuantizeRequest:
    """One quantize run: the model, where its ranges come from, how to quantize, what stays float.

    Attributes:
        model: float ONNX model (path or ModelProto).
        data: calibration data (not needed when `table` is given).
        method: range method: kl, percentile, minmax or mse (a Method or its name).
        num_samples: calibration samples (seeded random subset); None = all.
        table: a QuantTable (or its JSON path) to use instead of calibrating.
        per_channel: per-channel weight scales.
        symmetric: symmetric activations (zero point 0).
        method_options: options of the range method (its `symmetric` follows `symmetric`).
        bins: histogram bins over [0, absmax] (at least 8).
        seed: seed of the calibration subset (>= 0).
        batch_size: calibration batch size (>= 1; capped by a static batch dimension).
        preprocess: preprocessing of calibration and evaluation data (None: from the model).
        input_shapes: fixed shapes for dynamic inputs, name -> dims.
        max_accuracy_drop: labelled budget in percentage points on `eval_data` (>= 0).
        min_agreement: fidelity budget: top-1 agreement with the float model on `eval_data`, in (0, 1].
        eval_data: data for the budget.
        eval_samples: samples of `eval_data` the budget uses (>= 1; None = all).
        keep_float: node names of layers to keep in float (plan.float_units); a budget works on top.
        float_stem: keep the layers that read the model input in float (plan.float_units).
        bias_correction: subtract each int8 layer's mean output error from its bias, measured on
            calibration samples (quantization.bias_correction); needs `data`.
        equalize: cross-layer equalization (passes/equalize.py) of the BN-folded model before
            calibration; the float function is unchanged. Not with `table`: equalizing rescales the
            activations the table's ranges were measured on.
        relu6_as_relu: with `equalize`, also equalize pairs joined by Clip(0, hi), replacing those
            Clips by Relu; this changes the float model (values above hi are no longer clipped).
        activation_dtype: "int8" or "uint8" activation Q/DQ pairs in the final model.

    Raises:
        QuantizeRequestError: a field is out of range; the message names the field.
    """

    model: str | os.PathLike | onnx.ModelProto
    data: str | os.PathLike | Dataset | None = None
    method: Method = Method.KL
    num_samples: int | None = DEFAULT_NUM_SAMPLES
    table: QuantTable | str | os.PathLike | None = None
    per_channel: bool = True
    symmetric: bool = False
    method_options: MethodOptions | None = None
    bins: int = DEFAULT_BINS
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    preprocess: Preprocess | None = None
    input_shapes: dict[str, list[int]] | None = None
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    eval_data: str | os.PathLike | Dataset | None = None
    eval_samples: int | None = DEFAULT_EVAL_SAMPLES
    keep_float: tuple[str, ...] = field(default=())
    float_stem: bool = False
    bias_correction: bool = False
    equalize: bool = False
    relu6_as_relu: bool = False
    activation_dtype: str = "int8"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", Method(self.method))
        except ValueError:
            raise QuantizeRequestError("method", f"expected one of {[m.value for m in Method]}, "
                                                 f"got {self.method!r}") from None
        if isinstance(self.keep_float, str):
            raise QuantizeRequestError("keep_float", f"expected a sequence of node names, got the string "
                                                     f"{self.keep_float!r}")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        if self.data is None and self.table is None:
            raise QuantizeRequestError("data", "quantize needs calibration data or a quant table (table)")
        if self.bias_correction and self.data is None:
            raise QuantizeRequestError("bias_correction", "bias correction measures on calibration data: give data")
        if self.equalize and self.table is not None:
            raise QuantizeRequestError("equalize", "--equalize with --table: equalization rescales each pair's "
                                                   "activations after the table's ranges were calibrated; calibrate "
                                                   "with --data --equalize instead")
        if self.relu6_as_relu and not self.equalize:
            raise QuantizeRequestError("relu6_as_relu", "replacing ReLU6 by Relu is part of equalization: "
                                                        "give equalize (--equalize) too")
        _at_least("num_samples", self.num_samples, 1, optional=True)
        _at_least("bins", self.bins, MIN_BINS)
        _at_least("seed", self.seed, 0)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("eval_samples", self.eval_samples, 1, optional=True)
        self._check_budget()
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise QuantizeRequestError("activation_dtype", f"expected one of {list(ACTIVATION_DTYPES)}, "
                                                           f"got {self.activation_dtype!r}")

    def _check_budget(self) -> None:
        drop, agreement = self.max_accuracy_drop, self.min_agreement
        if drop is not None and agreement is not None:
            raise QuantizeRequestError("min_agreement", "give exactly one budget: max_accuracy_drop "
                                                        "(--max-accuracy-drop) or min_agreement (--min-agreement)")
        if drop is not None and not (_is_number(drop) and math.isfinite(drop) and drop >= 0):
            raise QuantizeRequestError("max_accuracy_drop", f"expected percentage points >= 0, got {drop!r}")
        if agreement is not None and not (_is_number(agreement) and 0 < agreement <= 1):
            raise QuantizeRequestError("min_agreement", f"expected a fraction in (0, 1], got {agreement!r}")
        if self.has_budget and self.eval_data is None:
            raise QuantizeRequestError("eval_data", "an accuracy budget needs evaluation data (--eval-data)")

    @property
    def has_budget(self) -> bool:
        """Whether an accuracy budget is asked for."""
        return self.max_accuracy_drop is not None or self.min_agreement is not None

    def budget(self) -> BudgetSpec | None:
        """The request's accuracy budget, or None."""
        if not self.has_budget:
            return None
        return BudgetSpec(self.max_accuracy_drop, self.min_agreement, self.eval_data, self.eval_samples,
                          self.preprocess, BUDGET_BATCH_SIZE)

    def range_options(self) -> MethodOptions:
        """The range method's options, with `symmetric` taken from the request."""
        options = self.method_options or MethodOptions(symmetric=self.symmetric)
        if options.symmetric != self.symmetric:
            options = replace(options, symmetric=self.symmetric)
        return options

    def plan_options(self, exclude_nodes: frozenset[str] = frozenset(), method: str | None = None) -> QuantizeOptions:
        """QuantizeOptions for the plan and QDQ writing (method: the name recorded in the model)."""
        return QuantizeOptions(per_channel=self.per_channel, symmetric=self.symmetric, exclude_nodes=exclude_nodes,
                               method=self.method.value if method is None else method)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _at_least(name: str, value, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise QuantizeRequestError(name, f"expected an integer >= {minimum}{' or None' if optional else ''}, "
                                         f"got {value!r}")
