"""Seeded mutation fuzzer of a real bundle's manifest.json: only FwEdgeError may escape load_bundle
and BundleRunner."""
from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.bundle import MANIFEST, seal_manifest, load_bundle
from fwedge.errors import FwEdgeError

log = logging.getLogger(__name__)

# Values that broke or could break a field: wrong types, out of range, path tricks, huge.
HOSTILE = [
    None, True, False, 0, -1, 1, 2**31, 2**70, -2**70, 1.5, -0.0, 1e308, "", "x", "\x00", "a\x00b", "\n",
    "../../etc/passwd", "/etc/passwd", "./model.onnx", "model.onnx/", "sub//x", "\\x", "\ud800", "é" * 3,
    "a" * 5000, [], {}, [1, 2], [[[]]], {"a": 1}, ["model.onnx"], {"": ""}, "float32", "int8", "NHWC",
    "0" * 64, "f" * 64, "manifest.json", [-1, 1, 28, 28], [0], [2**40, 2**40],
]
# Keys the manifest and its parts use, plus keys that it must not hold.
KEYS = ["schema", "target", "arch", "precision", "source_sha256", "inputs", "outputs", "files", "preprocess",
        "versions", "sizes", "extra", "manifest_sha256", "name", "shape", "dtype", "layout", "scale",
        "zero_point", "resize", "color", "mean", "std", "model.onnx", "__class__", ""]


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory) -> Path:
    """A real ONNX-target bundle of a small conv model, with preprocessing and quantization fields."""
    from fwedge.data import Preprocess
    from fwedge.targets import ExportOptions, get_target

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["c"], ["logits"], name="flatten")],
        "fuzz", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("fuzz")
    get_target("onnx").export(model, folder / "bundle", ExportOptions(
        preprocess=Preprocess(resize=(8, 8), color="grayscale", mean=(0.5,), std=(0.25,)).to_dict()))
    manifest = json.loads((folder / "bundle" / MANIFEST).read_text())
    # Give the quantization fields values, so that mutations reach them.
    manifest["outputs"][0].update(scale=0.05, zero_point=3)
    (folder / "bundle" / MANIFEST).write_text(json.dumps(seal_manifest(manifest), indent=2))
    load_bundle(folder / "bundle")
    return folder / "bundle"


def _containers(node, found):
    if isinstance(node, (dict, list)):
        found.append(node)
        for child in (node.values() if isinstance(node, dict) else node):
            _containers(child, found)
    return found


def _mutate_tree(data, rng: random.Random):
    """Apply 1-3 structural mutations to a parsed manifest (in place where possible)."""
    for _ in range(rng.randint(1, 3)):
        if not isinstance(data, (dict, list)) or rng.random() < 0.02:
            return rng.choice(HOSTILE + [data, [data], {"manifest": data}])
        node = rng.choice(_containers(data, []))
        choice = rng.random()
        if isinstance(node, dict):
            keys = list(node)
            if keys and choice < 0.25:
                del node[rng.choice(keys)]
            elif keys and choice < 0.6:
                node[rng.choice(keys)] = copy.deepcopy(rng.choice(HOSTILE))
            elif keys and choice < 0.75:
                key = rng.choice(keys)
                node[rng.choice(KEYS)] = node.pop(key)
            elif keys and choice < 0.85:
                key = rng.choice(keys)
                node[key] = [node[key]] if rng.random() < 0.5 else {"v": node[key]}
            else:
                node[rng.choice(KEYS + [str(rng.random())])] = copy.deepcopy(rng.choice(HOSTILE))
        else:
            if node and choice < 0.3:
                node.pop(rng.randrange(len(node)))
            elif node and choice < 0.7:
                node[rng.randrange(len(node))] = copy.deepcopy(rng.choice(HOSTILE))
            else:
                node.append(copy.deepcopy(rng.choice(HOSTILE + node[:1])))
    return data


def _mutate_bytes(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if not data:
            break
        position = rng.randrange(len(data))
        if choice < 0.4:
            data[position] ^= 1 << rng.randrange(8)
        elif choice < 0.55:
            del data[position:]
        elif choice < 0.75:
            data[position:position] = rng.choice([b"\x00", b"\xff", b'"', b"{", b"[", b"}", b",", b"\\u0000", b"NaN",
                                                  b"1e999", b"-", b"\xed\xa0\x80"])
        elif choice < 0.9:
            end = min(len(data), position + rng.randint(1, 64))
            data[position:position] = data[position:end]
        else:
            del data[position:position + rng.randint(1, 16)]
    return bytes(data)


def fuzz_manifests(bundle: Path, work: Path, seconds: float, seed: int = 0) -> dict:
    """Mutate the bundle's manifest for `seconds`; count outcomes and collect non-FwEdgeError escapes."""
    from fwedge.runner import BundleRunner

    rng = random.Random(seed)
    original_text = (bundle / MANIFEST).read_text()
    original = json.loads(original_text)
    target = work / bundle.name
    shutil.copytree(bundle, target)
    counts = {"tried": 0, "fwedge_error": 0, "accepted": 0, "other": 0}
    others: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        mode = rng.random()
        if mode < 0.7:
            data = _mutate_tree(copy.deepcopy(original), rng)
            # Most cases recompute the digest, as an attacker would, so that the field checks
            # behind it are reached; the rest must be stopped by the digest itself.
            if isinstance(data, dict) and rng.random() < 0.85:
                data = seal_manifest(data)
            try:
                raw = json.dumps(data).encode("utf-8", "surrogatepass")
            except (TypeError, ValueError):
                continue
        elif mode < 0.9:
            raw = _mutate_bytes(original_text.encode(), rng)
        else:
            # A sealed structural mutation, then byte damage on top.
            data = _mutate_tree(copy.deepcopy(original), rng)
            data = seal_manifest(data) if isinstance(data, dict) else data
            try:
                raw = _mutate_bytes(json.dumps(data).encode("utf-8", "surrogatepass"), rng)
            except (TypeError, ValueError):
                continue
        (target / MANIFEST).write_bytes(raw)
        counts["tried"] += 1
        try:
            loaded = load_bundle(target)
            runner = BundleRunner(loaded)
            runner.close()
            counts["accepted"] += 1
        except FwEdgeError as exc:
            assert "\n" not in str(exc) or exc.__class__.__name__ == "UnsupportedOpError", str(exc)[:200]
            counts["fwedge_error"] += 1
        except Exception as exc:  # noqa: BLE001 - what the fuzzer hunts for
            counts["other"] += 1
            if len(others) < 10:
                others.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {raw[:300]!r}")
    counts["examples"] = others
    return counts


def _report(counts: dict) -> None:
    log.warning("manifest fuzz: %d tried, %d FwEdgeError, %d accepted, %d other exceptions",
                counts["tried"], counts["fwedge_error"], counts["accepted"], counts["other"])
    print(f"manifest fuzz: {counts['tried']} tried, {counts['fwedge_error']} FwEdgeError, "
          f"{counts['accepted']} accepted, {counts['other']} other exceptions")


def test_manifest_fuzz_raises_only_fwedge_errors(real_bundle, tmp_path):
    counts = fuzz_manifests(real_bundle, tmp_path, seconds=15.0, seed=0)
    _report(counts)
    assert counts["tried"] > 500
    assert counts["fwedge_error"] > counts["tried"] // 2
    assert counts["other"] == 0, counts["examples"]


@pytest.mark.slow
def test_manifest_fuzz_long(real_bundle, tmp_path):
    counts = fuzz_manifests(real_bundle, tmp_path, seconds=120.0, seed=1)
    _report(counts)
    assert counts["other"] == 0, counts["examples"]
