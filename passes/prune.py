"""Structured channel pruning with automatically found dependency groups, and unstructured magnitude pruning."""
from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.errors import PruneError
from fwedge.op_info import OP_INFO
# The dependency analysis lives in passes/prune_analysis.py; its public names are re-exported here.
from fwedge.passes.prune_analysis import ChannelGroup, DependencyGraph, analyze  # noqa: F401
from fwedge.summary import summarize

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn")


@dataclass
class PruneReport:
    """What `prune_channels` did: sizes before/after and the per-group channel counts."""

    criterion: str
    ratio: float
    scope: str
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    groups: list[ChannelGroup]

    @property
    def macs_fraction(self) -> float | None:
        if not self.macs_before or self.macs_after is None:
            return None
        return self.macs_after / self.macs_before

    def to_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        for group in data["groups"]:
            group.pop("components", None)
        data["macs_fraction"] = self.macs_fraction
        return data


@dataclass
class SparsityReport:
    """What `sparsify` did: weights zeroed and what that buys on disk once compressed."""

    target: float
    scope: str
    weights: int
    zeros: int
    layers: dict[str, float]
    dense_bytes: int
    dense_gzip_bytes: int
    sparse_gzip_bytes: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0

    def to_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data["sparsity"] = self.sparsity
        return data


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def channel_scores(model: onnx.ModelProto, graph: DependencyGraph, criterion: str = "l1") -> dict[int, float]:
    """Importance of each coupled channel (component root), summed over all its parameter slices.

    l1 / l2: the L1 / L2 norm of every weight, bias and BN slice that the channel owns (the
    group-level importance of DepGraph). bn: |gamma| of the BatchNormalization scales in the
    component; components with no BN fall back to l1.

    Raises:
        PruneError: an unknown criterion.
    """
    if criterion not in CRITERIA:
        raise PruneError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    inits = ir.initializer_map(model)
    l1: dict[int, float] = {}
    l2: dict[int, float] = {}
    gamma: dict[int, float] = {}
    for piece in graph.params.values():
        values = np.moveaxis(numpy_helper.to_array(inits[piece.name]).astype(np.float64), piece.axis, 0)
        values = values.reshape(values.shape[0], -1)
        roots = graph.roots(piece.ids)
        if piece.role == "constant":
            continue
        np_l1 = np.abs(values).sum(axis=1)
        np_l2 = (values * values).sum(axis=1)
        for root, a, b in zip(roots.tolist(), np_l1.tolist(), np_l2.tolist()):
            if piece.role in ("out", "in", "bias"):
                l1[root] = l1.get(root, 0.0) + a
                l2[root] = l2.get(root, 0.0) + b
            if piece.role == "bn_scale":
                gamma[root] = gamma.get(root, 0.0) + a
    scores = {}
    for group in graph.groups:
        for root in group.components:
            if criterion == "bn" and root in gamma:
                scores[root] = gamma[root]
            elif criterion == "l2":
                scores[root] = float(np.sqrt(l2.get(root, 0.0)))
            else:
                scores[root] = l1.get(root, 0.0)
    return scores


def select_channels(graph: DependencyGraph, scores: dict[int, float], ratio: float,
                    scope: str = "global", round_to: int = 1) -> set[int]:
    """Choose the coupled channels to remove.

    per-layer: each group loses floor(ratio × channels) of its least important prunable channels.
    global: all prunable channels compete after dividing each group's scores by the group's mean
    score (so wide and narrow layers compare fairly); floor(ratio × prunable channels) go. Either
    way a group keeps at least one channel. With round_to > 1, every group then keeps a multiple
    of round_to channels (the nearest one that its blocked channels allow): CPU kernels (MLAS,
    oneDNN) work in blocks of 8 or 16 channels, and odd widths can make a smaller model slower.

    Raises:
        PruneError: a ratio outside [0, 1), or an unknown scope.
    """
    _check_ratio(ratio)
    if round_to < 1:
        raise PruneError(f"round_to must be a positive channel count, got {round_to}")
    if scope not in ("global", "per-layer"):
        raise PruneError(f"scope must be 'global' or 'per-layer', got {scope!r}")
    chosen: set[int] = set()
    if ratio == 0:
        return chosen
    candidates: list[tuple[float, int, str]] = []
    budget: dict[str, int] = {}
    for group in graph.groups:
        free = [root for root in group.components if not graph.is_blocked(root)]
        if not free:
            continue
        budget[group.name] = min(len(free), group.channels - 1)
        if scope == "per-layer":
            count = min(int(np.floor(ratio * group.channels)), budget[group.name])
            ranked = sorted(free, key=lambda root: (scores[root], root))
            chosen.update(ranked[:count])
        else:
            mean = float(np.mean([scores[root] for root in group.components])) or 1.0
            candidates.extend((scores[root] / mean, root, group.name) for root in free)
    if scope == "global":
        count = int(np.floor(ratio * len(candidates)))
        taken: dict[str, int] = {}
        for _, root, name in sorted(candidates):
            if len(chosen) >= count:
                break
            if taken.get(name, 0) < budget[name]:
                chosen.add(root)
                taken[name] = taken.get(name, 0) + 1
    if round_to > 1 and chosen:
        for group in graph.groups:
            _round_group(graph, group, scores, chosen, round_to)
    return chosen


def _round_group(graph: DependencyGraph, group: ChannelGroup, scores: dict[int, float], chosen: set[int],
                 round_to: int) -> None:
    """Move channels in or out of `chosen` so the group keeps a multiple of round_to channels."""
    free = sorted((root for root in group.components if not graph.is_blocked(root)),
                  key=lambda root: (scores[root], root))
    removed = [root for root in free if root in chosen]
    if not removed or group.channels <= round_to:
        return
    kept = group.channels - len(removed)
    minimum = group.channels - len(free)  # blocked channels always stay
    target = max(round_to, int(round(kept / round_to)) * round_to)
    if target < minimum:
        target = -(-minimum // round_to) * round_to
    target = min(target, group.channels)
    if target < kept:  # remove more: the least important channels still kept
        extra = [root for root in free if root not in chosen][: kept - target]
        chosen.update(extra)
    elif target > kept:  # give back the most important removed channels
        for root in sorted(removed, key=lambda r: (scores[r], r), reverse=True)[: target - kept]:
            chosen.discard(root)


def apply_pruning(model: onnx.ModelProto, graph: DependencyGraph, remove: set[int]) -> onnx.ModelProto:
    """A copy of `model` with the coupled channels `remove` (component roots) cut everywhere.

    Raises:
        PruneError: a blocked channel was asked for, or the result fails the ONNX checker.
    """
    blocked = sorted(root for root in remove if graph.is_blocked(root))
    if blocked:
        raise PruneError(f"channel(s) {blocked} cannot be removed: {graph.blocked[blocked[0]]}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = ir.initializer_map(out)
    for piece in graph.params.values():
        keep = ~np.isin(graph.roots(piece.ids), list(remove))
        if keep.all():
            continue
        tensor = inits[piece.name]
        values = numpy_helper.to_array(tensor)
        sliced = np.compress(keep, values, axis=piece.axis)
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(sliced), piece.name))
    nodes = {node.name or node.output[0]: node for node in out.graph.node}
    for name, ids in graph.depthwise:
        kept = int((~np.isin(graph.roots(ids), list(remove))).sum())
        node = nodes[name]
        for attr in node.attribute:
            if attr.name == "group":
                attr.i = kept
    for group in graph.groups:
        group.kept = group.channels - sum(1 for root in group.components if root in remove)
    del out.graph.value_info[:]
    try:
        out = onnx.shape_inference.infer_shapes(out, data_prop=True, strict_mode=True)
        onnx.checker.check_model(out)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PruneError(f"pruned model is invalid (a bug in the dependency analysis): {exc}") from exc
    return out


def _check_ratio(ratio: float) -> None:
    if not (0.0 <= ratio < 1.0) or ratio != ratio:
        raise PruneError(f"pruning ratio must be in [0, 1), got {ratio}")


def _size(model: onnx.ModelProto) -> tuple[int, int | None]:
    summary = summarize(ir.with_batch_one(model), with_support=False)
    return summary.parameters, summary.total_macs


def prune_channels(
    model: onnx.ModelProto,
    ratio: float,
    criterion: str = "l1",
    scope: str = "global",
    exclude: tuple[str, ...] | list[str] = (),
    protect_first: bool = True,
    round_to: int = 1,
    fold_constants: bool = True,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Structured channel pruning: remove whole output channels of Conv/Gemm layers.

    Dependency groups come from `analyze`, importance from `channel_scores`, the choice from
    `select_channels`. Channels that stay compute exactly what they computed before; only the
    removed channels' contributions disappear.

    Args:
        model: a loaded model.
        ratio: fraction of channels to remove, in [0, 1).
        criterion: "l1", "l2" (weight norms over the whole group) or "bn" (BN gamma).
        scope: "global" (one ranking over all groups) or "per-layer" (the ratio in every group).
        exclude: node names whose output channels are kept.
        protect_first: keep the first Conv's output channels.
        round_to: keep a multiple of this many channels in every pruned group (see select_channels).
        fold_constants: first fold constant subgraphs and drop Identity/Dropout
            (fwedge.passes.simplify): a bias reshaped at run time, as exporters of PP-OCR emit,
            must be a plain initializer to be sliced. Other node and tensor names are kept.

    Returns:
        (pruned model, PruneReport with parameters and MACs before and after).

    Raises:
        PruneError: bad ratio/criterion/scope, unknown excluded names, or a model with no
            prunable channel (the message names which node blocks which group).
    """
    _check_ratio(ratio)
    if criterion not in CRITERIA:
        raise PruneError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    params_before, macs_before = _size(model)
    if fold_constants:
        from fwedge.passes.simplify import simplify

        model = simplify(model)
    graph = analyze(model, protect_first=protect_first, exclude=exclude)
    if ratio > 0 and not any(group.prunable for group in graph.groups):
        reasons = "; ".join(
            f"group '{group.name}' ({group.channels} channels) blocked by {', '.join(group.blocked_by)}"
            for group in graph.groups
        ) or "the model has no Conv/Gemm layer with constant weights"
        raise PruneError(f"no channel can be pruned: {reasons}")
    scores = channel_scores(model, graph, criterion)
    remove = select_channels(graph, scores, ratio, scope, round_to)
    pruned = apply_pruning(model, graph, remove)
    params_after, macs_after = _size(pruned)
    for group in graph.groups:
        if group.blocked_by:
            log.info("group %s: %d of %d channels blocked by %s", group.name, group.blocked_channels,
                     group.channels, "; ".join(group.blocked_by))
    log.info("pruned %d coupled channels: parameters %d -> %d, MACs %s -> %s", len(remove),
             params_before, params_after, macs_before, macs_after)
    report = PruneReport(criterion, ratio, scope, params_before, params_after, macs_before,
                         macs_after, graph.groups)
    return pruned, report


def prune_to_macs(
    model: onnx.ModelProto,
    macs_fraction: float,
    criterion: str = "l1",
    scope: str = "global",
    exclude: tuple[str, ...] | list[str] = (),
    protect_first: bool = True,
    round_to: int = 1,
) -> tuple[onnx.ModelProto, PruneReport]:
    """The smallest channel ratio whose pruned model has at most `macs_fraction` of the MACs.

    Bisection on the ratio (MACs fall as the ratio grows), 12 steps; the best result seen that
    meets the target is returned (channel rounding makes MACs a step function of the ratio).

    Raises:
        PruneError: the fraction is not in (0, 1], or even the largest ratio cannot reach it.
    """
    if not 0.0 < macs_fraction <= 1.0:
        raise PruneError(f"MACs fraction must be in (0, 1], got {macs_fraction}")
    low, high = 0.0, 0.95
    best = prune_channels(model, high, criterion, scope, exclude, protect_first, round_to)
    if best[1].macs_fraction is None or best[1].macs_fraction > macs_fraction:
        raise PruneError(f"cannot reach {macs_fraction:.2f} of the MACs: ratio {high} leaves "
                         f"{best[1].macs_fraction}")
    for _ in range(12):
        middle = (low + high) / 2
        result = prune_channels(model, middle, criterion, scope, exclude, protect_first, round_to)
        if result[1].macs_fraction <= macs_fraction:
            high, best = middle, result
        else:
            low = middle
    return best


# --------------------------------------------------------------------------------------------
# Unstructured magnitude pruning
# --------------------------------------------------------------------------------------------


def _weight_names(model: onnx.ModelProto, exclude: set[str]) -> dict[str, str]:
    """Weight initializer -> node name, for every op with a weight input in OP_INFO."""
    inits = ir.initializer_map(model)
    names: dict[str, str] = {}
    for node in model.graph.node:
        info = OP_INFO.get(node.op_type)
        if info is None or info.weight_input is None or len(node.input) <= info.weight_input:
            continue
        weight = node.input[info.weight_input]
        name = node.name or node.output[0]
        if weight in inits and name not in exclude and inits[weight].data_type == onnx.TensorProto.FLOAT:
            names[weight] = name
    return names


def _gzip_size(arrays: list[np.ndarray]) -> int:
    payload = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return len(gzip.compress(payload, compresslevel=9, mtime=0))


def sparsify(
    model: onnx.ModelProto,
    sparsity: float,
    scope: str = "global",
    exclude: tuple[str, ...] | list[str] = (),
) -> tuple[onnx.ModelProto, SparsityReport]:
    """Unstructured magnitude pruning: zero the smallest-magnitude weights.

    Global: one threshold over all Conv/Gemm/MatMul weights (exactly round(sparsity × total)
    weights are zeroed, ties broken by position). Per-layer: that fraction in every layer.
    Biases and BN parameters are untouched. Dense kernels run no faster; the gain is the
    compressed size, which the report gives (gzip of the weight bytes before and after).

    Raises:
        PruneError: sparsity outside [0, 1), unknown scope or excluded name, or no weights.
    """
    _check_ratio(sparsity)
    if scope not in ("global", "per-layer"):
        raise PruneError(f"scope must be 'global' or 'per-layer', got {scope!r}")
    names = {node.name or node.output[0] for node in model.graph.node}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise PruneError(f"--exclude: no node named {unknown} in the model")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = ir.initializer_map(out)
    weights = _weight_names(out, set(exclude))
    if not weights:
        raise PruneError("no Conv/Gemm/MatMul weight initializer to sparsify")
    arrays = {name: numpy_helper.to_array(inits[name]).copy() for name in weights}
    dense = list(arrays.values())
    dense_bytes = sum(a.nbytes for a in dense)
    dense_gzip = _gzip_size(dense)
    if scope == "global":
        flat = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
        count = int(round(sparsity * flat.size))
        mask = np.zeros(flat.size, dtype=bool)
        if count:
            mask[np.argsort(flat, kind="stable")[:count]] = True
        offset = 0
        for name, array in arrays.items():
            part = mask[offset: offset + array.size].reshape(array.shape)
            array[part] = 0.0
            offset += array.size
    else:
        for array in arrays.values():
            flat = np.abs(array).ravel()
            count = int(round(sparsity * flat.size))
            if count:
                array.reshape(-1)[np.argsort(flat, kind="stable")[:count]] = 0.0
    for name, array in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays.values())
    total = sum(a.size for a in arrays.values())
    layers = {weights[name]: float(np.count_nonzero(a == 0) / a.size) for name, a in arrays.items()}
    report = SparsityReport(sparsity, scope, total, zeros, layers, dense_bytes, dense_gzip,
                            _gzip_size(list(arrays.values())))
    log.info("sparsity %.4f (%d of %d weights zero); gzip %d -> %d bytes", report.sparsity, zeros,
             total, dense_gzip, report.sparse_gzip_bytes)
    return out, report
