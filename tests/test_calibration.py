"""Range methods on synthetic histograms (KL against a loop-based TensorRT reference), collection, tables."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.calibration import Histogram, Method, MethodOptions, QuantTable, collect, compute, params_from_range
from fwedge.calibration.kl import kl_divergences, kl_range
from fwedge.calibration.minmax import minmax_range
from fwedge.calibration.mse import mse_range
from fwedge.calibration.percentile import percentile_range
from fwedge.calibration.table import NcnnLayer, ncnn_table, read_tensorrt_cache, tensorrt_cache
from fwedge.errors import CalibrationError

OPTIONS = MethodOptions()


def reference_kl_threshold(counts: np.ndarray, num_quantized_bins: int = 128, start_bin: int = 128,
                           floor: float = 1e-12, point_masses: np.ndarray | None = None):
    """TensorRT's entropy calibration pseudocode, written as the plain loop over thresholds.

    for i in range(128, len(bins) + 1):
        P = bins[0..i-1]; P[i-1] += sum(bins[i:])           # outliers fold into the last bin
        Q = bins[0..i-1] merged into 128 groups, expanded over P's non-zero bins
        divergence[i] = KL(normalize(P) || normalize(Q))
    threshold index = argmin divergence

    Point masses (fwedge's addition) stay out of P and Q but fold into P[i-1] when beyond i.
    """
    counts = np.asarray(counts, dtype=np.float64)
    atoms = np.zeros(counts.size) if point_masses is None else np.asarray(point_masses, dtype=np.float64)
    results = []
    for i in range(max(start_bin, num_quantized_bins), counts.size + 1):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum() + atoms[i:].sum()
        q = np.zeros(i)
        for j in range(num_quantized_bins):
            start, stop = (j * i) // num_quantized_bins, ((j + 1) * i) // num_quantized_bins
            mass = counts[start:stop].sum()
            nonzero = np.count_nonzero(p[start:stop])
            if nonzero:
                q[start:stop] = np.where(p[start:stop] > 0, mass / nonzero, 0.0)
        p_norm = p / p.sum()
        q_norm = q / q.sum() if q.sum() > 0 else q
        kl = 0.0
        for pk, qk in zip(p_norm, q_norm):
            if pk > 0:
                kl += pk * np.log(pk / max(qk, floor))
        results.append(kl)
    results = np.array(results)
    return int(np.argmin(results)) + max(start_bin, num_quantized_bins), results


def gaussian_with_outliers(rng, n=200_000):
    values = rng.standard_normal(n)
    values[:20] = rng.uniform(15, 25, 20) * rng.choice([-1, 1], 20)
    return values


# ---------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------


def test_kl_gaussian_with_outliers_clips_below_absmax(rng):
    values = gaussian_with_outliers(rng)
    histogram = Histogram.from_values(values)
    low, high = kl_range(histogram, OPTIONS)
    absmax = np.abs(values).max()
    assert high < 0.5 * absmax, f"KL threshold {high:.2f} should clip the outliers (absmax {absmax:.2f})"
    assert high > 2.5, f"KL threshold {high:.2f} clips the Gaussian body (sigma 1)"
    assert low == -high


def test_kl_uniform_is_close_to_absmax(rng):
    values = rng.uniform(-4, 4, 200_000)
    low, high = kl_range(Histogram.from_values(values), OPTIONS)
    assert high == pytest.approx(np.abs(values).max(), rel=0.03)


def test_kl_relu_one_sided_histogram(rng):
    values = np.maximum(rng.standard_normal(200_000), 0) * 2.0
    histogram = Histogram.from_values(values)
    assert not histogram.signed and histogram.counts.size == 2048
    low, high = kl_range(histogram, OPTIONS)
    assert low == 0.0
    # Sane: clips only the thin tail (> 1.5 sigma, < 10% of the positive values), never the body.
    assert 1.5 * 2.0 < high < values.max(), f"ReLU threshold {high:.2f}, max {values.max():.2f}"
    assert np.mean(values[values > 0] > high) < 0.10


def test_kl_with_point_masses_matches_loop_reference(rng):
    from fwedge.calibration.kl import point_masses

    values = np.concatenate([np.abs(rng.standard_normal(40_000)), np.full(6_000, 1.3), np.full(500, 3.7)])
    counts = Histogram.from_values(values, bins=512).magnitude()[0]
    atoms = point_masses(counts)
    assert np.count_nonzero(atoms) == 2, "the two repeated values are point masses"
    candidates, divergence = kl_divergences(counts - atoms, point_masses=atoms)
    expected_index, expected = reference_kl_threshold(counts - atoms, point_masses=atoms)
    np.testing.assert_allclose(divergence, expected, rtol=1e-9, atol=1e-12, err_msg="KL with point masses")
    assert int(candidates[np.argmin(divergence)]) == expected_index


def test_kl_threshold_does_not_snap_to_a_spike(rng):
    """A constant-background spike (ReLU6 of a bias) must not become the clipping threshold."""
    body = np.minimum(np.maximum(rng.standard_normal(200_000) * 1.5, 0), 6.0)
    values = np.concatenate([body, np.full(20_000, 1.02)])
    low, high = kl_range(Histogram.from_values(values), OPTIONS)
    assert high > 2.0, f"threshold {high:.2f} snapped to the spike at 1.02"
    assert np.mean(body > high) < 0.05


@pytest.mark.parametrize("case", ["gauss_outliers", "laplace", "sparse", "relu", "bimodal"])
def test_kl_matches_loop_reference(case, rng):
    if case == "gauss_outliers":
        values = np.abs(gaussian_with_outliers(rng, 50_000))
    elif case == "laplace":
        values = np.abs(rng.laplace(size=50_000))
    elif case == "sparse":
        values = np.abs(np.round(rng.standard_normal(20_000) * 3) / 3)  # many empty bins
    elif case == "relu":
        values = np.maximum(rng.standard_normal(50_000), 0)
    else:
        values = np.abs(np.concatenate([rng.normal(1, 0.1, 25_000), rng.normal(6, 0.5, 500)]))
    counts = Histogram.from_values(values, bins=512).magnitude()[0]
    candidates, divergence = kl_divergences(counts)
    expected_index, expected = reference_kl_threshold(counts)
    np.testing.assert_allclose(divergence, expected, rtol=1e-9, atol=1e-12, err_msg=f"KL divergences ({case})")
    assert int(candidates[np.argmin(divergence)]) == expected_index


def _conv_relu_model(rng) -> onnx.ModelProto:
    weight = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_histogram_is_independent_of_sample_order(tmp_path, rng):
    """collect() over shuffled samples and different batch splits gives identical tables."""
    model = _conv_relu_model(rng)
    x = (rng.standard_normal((60, 1, 6, 6)) * 3).astype(np.float32)
    order = rng.permutation(60)
    first = collect(model, [x[:32], x[32:]], ["x", "c", "y"])
    second = collect(model, [x[order][i:i + 7] for i in range(0, 60, 7)], ["x", "c", "y"])
    for name in ["x", "c", "y"]:
        np.testing.assert_array_equal(first.histograms[name].counts, second.histograms[name].counts, err_msg=name)
    for method in Method:
        assert compute(first, method).to_dict()["tensors"] == compute(second, method).to_dict()["tensors"]


def test_histogram_pass_matches_direct_binning(rng):
    """The overlapped second pass (onnxruntime one batch ahead of the binning thread) counts every value once."""
    import onnxruntime as ort

    from fwedge.calibration.collect import with_outputs

    model = _conv_relu_model(rng)
    x = (rng.standard_normal((50, 1, 6, 6)) * 3).astype(np.float32)
    session = ort.InferenceSession(with_outputs(model, ["c"]).SerializeToString(), providers=["CPUExecutionProvider"])
    c, y = session.run(["c", "y"], {"x": x})
    # batches of 4 then a last one of 2: two input shapes, output buffers reused across batches
    stats = collect(model, [x[i:i + 4] for i in range(0, 50, 4)], ["x", "c", "y"])
    for name, values in (("x", x), ("c", c), ("y", y)):
        np.testing.assert_array_equal(stats.histograms[name].counts, Histogram.from_values(values, bins=2048).counts,
                                      err_msg=f"histogram of '{name}'")
        assert stats.histograms[name].zeros == np.count_nonzero(values == 0), name
    assert stats.num_samples == 50


def test_error_in_histogram_pass_reaches_the_caller(rng):
    """A batch that only goes wrong on the second pass raises there, and no worker thread is left."""
    import threading

    from fwedge.errors import DataError

    model = _conv_relu_model(rng)
    x = rng.standard_normal((8, 1, 6, 6)).astype(np.float32)
    passes = []

    def batches():
        passes.append(1)
        yield x
        yield x if len(passes) == 1 else x[:, :, :5]  # a wrong shape, second pass only

    with pytest.raises(DataError, match="'x'"):
        collect(model, batches, ["x", "y"])
    assert len(passes) == 2
    assert not [t for t in threading.enumerate() if t.name == "fwedge-calibration-binning"]


def test_error_in_binning_thread_reaches_the_caller(rng, monkeypatch):
    """An exception while binning (in the worker thread) is raised by collect() itself."""
    import sys
    import threading

    module = sys.modules["fwedge.calibration.collect"]
    calls = []

    def failing(values, low, high, count, scratch=None):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise MemoryError("out of memory while binning")
        return np.zeros(count, dtype=np.int64), 0

    monkeypatch.setattr(module, "bin_counts_and_zeros", failing)
    x = rng.standard_normal((40, 1, 6, 6)).astype(np.float32)
    with pytest.raises(MemoryError, match="while binning"):
        collect(_conv_relu_model(rng), [x[i:i + 4] for i in range(0, 40, 4)], ["x", "c"])
    assert set(calls) == {"fwedge-calibration-binning"}
    assert not [t for t in threading.enumerate() if t.name == "fwedge-calibration-binning"]


# ---------------------------------------------------------------------------------------------
# Other methods
# ---------------------------------------------------------------------------------------------


def test_minmax_is_the_exact_extremes(rng):
    values = rng.standard_normal(10_000) * 2 + 0.5
    assert minmax_range(Histogram.from_values(values), OPTIONS) == (values.min(), values.max())


def test_percentile_uniform_and_tails(rng):
    values = rng.uniform(0, 1, 400_000)
    low, high = percentile_range(Histogram.from_values(values), MethodOptions(percentile=99.0))
    assert low == values.min() and high == pytest.approx(0.99, abs=0.003)
    signed = rng.uniform(-1, 1, 400_000)
    low, high = percentile_range(Histogram.from_values(signed), MethodOptions(percentile=98.0))
    assert low == pytest.approx(-0.98, abs=0.003) and high == pytest.approx(0.98, abs=0.003)
    with pytest.raises(CalibrationError, match="percentile"):
        percentile_range(Histogram.from_values(values), MethodOptions(percentile=0))


def _quantization_mse(values, threshold):
    params = params_from_range(max(values.min(), -threshold), min(values.max(), threshold))
    q = np.clip(np.rint(values / params.scale) + params.zero_point, -128, 127)
    return np.mean(((q - params.zero_point) * params.scale - values) ** 2)


def test_mse_threshold_is_near_the_brute_force_optimum(rng):
    """The histogram-based MSE threshold is within 2% of the best threshold found by actually
    quantizing the samples over a grid (heavy-tailed Laplace data, so clipping pays)."""
    values = rng.laplace(size=100_000)
    low, high = mse_range(Histogram.from_values(values), OPTIONS)
    grid = np.linspace(1.0, np.abs(values).max(), 300)
    best = min(_quantization_mse(values, t) for t in grid)
    assert high < 0.9 * np.abs(values).max()
    assert _quantization_mse(values, high) <= 1.02 * best


def test_mse_keeps_uniform(rng):
    uniform = rng.uniform(-3, 3, 200_000)
    assert mse_range(Histogram.from_values(uniform), OPTIONS)[1] == pytest.approx(3, rel=0.02)


def test_every_method_on_a_constant_tensor_gives_a_valid_scale():
    for values in (np.zeros(1000), np.full(1000, 2.5)):
        histogram = Histogram.from_values(values)
        for method, function in [("minmax", minmax_range), ("percentile", percentile_range),
                                 ("kl", kl_range), ("mse", mse_range)]:
            low, high = function(histogram, OPTIONS)
            params = params_from_range(low, high)
            assert params.scale > 0 and np.isfinite(params.scale), method
            q = np.clip(np.rint(values[0] / params.scale) + params.zero_point, -128, 127)
            assert abs((q - params.zero_point) * params.scale - values[0]) <= params.scale, method


def test_constant_tensor_through_collect_and_quantize(rng):
    """A tensor that is zero for every sample (x * 0) gets a non-zero scale and runs in ORT."""
    from fwedge.eval import ort_session
    from fwedge.quantization import quantize_model

    zeros = numpy_helper.from_array(np.zeros((1, 2, 1, 1), dtype=np.float32), "zeros")
    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zeros"], ["z"], name="mul"),
         helper.make_node("Conv", ["z", "w"], ["y"], name="conv")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])], [zeros, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)
    from fwedge.quantization import plan_quantization

    plan = plan_quantization(model)
    stats = collect(model, [x], plan.calibrated)
    table = compute(stats, "kl")
    assert table.tensors["z"].scale > 0 and table.tensors["y"].scale > 0
    qdq = quantize_model(model, table, plan=plan)
    out = ort_session(qdq).run(None, {"x": x})[0]
    assert np.all(np.isfinite(out)) and not out.any()


def test_unknown_method_and_one_shot_generator(rng):
    histogram = Histogram.from_values(rng.standard_normal(100))
    from fwedge.calibration import CalibrationStats

    with pytest.raises(CalibrationError, match="unknown calibration method 'entropy'"):
        compute(CalibrationStats({"t": histogram}, 2048, 100), "entropy")


# ---------------------------------------------------------------------------------------------
# Table formats
# ---------------------------------------------------------------------------------------------


def test_table_json_round_trip_and_exports(tmp_path):
    table = QuantTable(
        model_sha256="ab" * 32, method="kl", parameters={"bins": 2048},
        dataset={"fingerprint": "cd" * 32},
        tensors={"input": params_from_range(0.0, 1.0), "conv1_out": params_from_range(-2.0, 6.0)},
    )
    path = table.save(tmp_path / "table.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "fwedge.quant_table/1"
    assert data["tensors"]["conv1_out"]["zero_point"] == round(-128 + 2.0 / (8.0 / 255))
    assert QuantTable.load(path).to_dict() == data
    cache = tensorrt_cache(table)
    assert cache.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    scales = read_tensorrt_cache(cache)
    assert scales["conv1_out"] == pytest.approx(6.0 / 127, rel=1e-6)
    text = ncnn_table(table, [NcnnLayer("conv1", "input", (0.5, 0.25))])
    assert text.splitlines() == ["conv1_param_0 254.000000 508.000000", "conv1 127.000000"]
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(CalibrationError, match="schema"):
        QuantTable.load(tmp_path / "bad.json")


def test_kl_keeps_the_range_of_a_tensor_that_never_crosses_zero(rng):
    """All-negative values (SE-block logits before a sigmoid) would fold into one bin."""
    values = rng.uniform(-1.7, -0.6, 50_000)
    low, high = kl_range(Histogram.from_values(values), OPTIONS)
    assert (low, high) == (values.min(), values.max())
    params = params_from_range(low, high)
    assert params.range[0] == pytest.approx(values.min()) and params.range[1] == 0.0


def test_kl_on_too_few_values_keeps_the_observed_range(rng):
    """An SE block's per-sample channel vector over a few hundred samples: a 4096-bin histogram
    of 3000 values is noise, so KL does not clip on it."""
    values = rng.standard_normal(3000)
    assert kl_range(Histogram.from_values(values), OPTIONS) == (values.min(), values.max())
    more = gaussian_with_outliers(rng, 60_000)  # enough values once merged to coarser bins
    assert kl_range(Histogram.from_values(more), OPTIONS)[1] < 0.5 * np.abs(more).max()


# --------------------------------------------------------------------------------------------
# Hostile QuantTables: refused on load and on construction, one line through the CLI
# --------------------------------------------------------------------------------------------

_GOOD_ENTRY = {"scale": 0.05, "zero_point": -3, "dtype": "int8", "range": [-6.25, 6.5]}
BAD_ENTRIES = {
    "nan_scale": {"scale": float("nan")},
    "inf_scale": {"scale": float("inf")},
    "zero_scale": {"scale": 0.0},
    "negative_scale": {"scale": -0.05},
    "string_scale": {"scale": "0.05"},
    "bool_scale": {"scale": True},
    "zero_point_too_big": {"zero_point": 300},
    "zero_point_too_small": {"zero_point": -129},
    "fractional_zero_point": {"zero_point": 1.5},
    "uint8_negative_zero_point": {"dtype": "uint8", "zero_point": -1},
    "unknown_dtype": {"dtype": "int4"},
    "nan_range": {"range": [float("nan"), 1.0]},
    "inf_range": {"range": [-1.0, float("inf")]},
    "reversed_range": {"range": [2.0, -2.0]},
    "short_range": {"range": [1.0]},
    "not_an_object": None,
}


def _table_dict(entry) -> dict:
    return {"schema": "fwedge.quant_table/1", "model_sha256": "0" * 64, "method": "minmax",
            "tensors": {"conv_out": entry}}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_table_entries_are_refused(case):
    change = BAD_ENTRIES[case]
    entry = None if change is None else {**_GOOD_ENTRY, **change}
    with pytest.raises(CalibrationError, match="conv_out"):
        QuantTable.from_dict(_table_dict(entry))


@pytest.mark.parametrize("data", [[1, 2], "x", {"schema": "fwedge.quant_table/1", "model_sha256": "0", "method": "m",
                                                "tensors": [1, 2]}])
def test_table_that_is_not_an_object_is_refused(data):
    with pytest.raises(CalibrationError, match="quant table"):
        QuantTable.from_dict(data, source="quant table 't.json'")


def test_tensor_quant_is_validated_on_construction():
    from fwedge.calibration.table import TensorQuant

    assert QuantTable.from_dict(_table_dict(_GOOD_ENTRY)).tensors["conv_out"].zero_point == -3
    for bad in ({"scale": float("nan"), "zero_point": 0}, {"scale": 0.0, "zero_point": 0},
                {"scale": 1.0, "zero_point": 128}, {"scale": 1.0, "zero_point": 0, "range": (1.0, -1.0)}):
        with pytest.raises(CalibrationError):
            TensorQuant(**bad)


@pytest.mark.parametrize("case", ["nan_scale", "zero_scale", "negative_scale", "zero_point_too_big", "reversed_range"])
def test_quantize_with_a_bad_table_is_one_line_error(case, tmp_path):
    from click.testing import CliRunner

    from fwedge import ir
    from fwedge.cli import cli
    from fwedge.quantization import calibrate
    from tests.helpers import tiny_conv_model

    model = ir.save(tiny_conv_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    table = calibrate(model, tmp_path / "x.npy", "minmax", 8).to_dict()
    name = next(iter(table["tensors"]))
    table["tensors"][name].update(BAD_ENTRIES[case])
    (tmp_path / "t.json").write_text(json.dumps(table))
    result = CliRunner().invoke(cli, ["quantize", str(model), "--table", str(tmp_path / "t.json"),
                                      "-o", str(tmp_path / "q.onnx")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "t.json" in lines[0] and name in lines[0], lines
    assert not (tmp_path / "q.onnx").exists()


def test_table_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "t.json")
    with pytest.raises(CalibrationError, match=r"t\.json.*not a regular file"):
        QuantTable.load(tmp_path / "t.json")
