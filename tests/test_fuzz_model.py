"""Model-bytes and data-file fuzzers: seeded mutation loops, bounded in time; only FwEdgeError may escape.

Each loop mutates real inputs (byte flips, truncation, insertions, deletions, copied chunks, and
field-level protobuf edits of names, dims, types and attributes), feeds them to the library entry
points, and counts the outcomes. Any exception that is not a FwEdgeError is a bug: the test keeps
the first input of each failing site and reports its traceback.

FWEDGE_FUZZ_SECONDS overrides the time budget of each loop (the slow variants run longer), and
FWEDGE_FUZZ_SEED the seed of the slow variants, to explore other inputs.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import time
import traceback
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.errors import FwEdgeError
from tests.helpers import tiny_conv_model

log = logging.getLogger(__name__)

FAST_SECONDS = 10.0  # model bytes; the example model and the data files get a third and a half of it
SLOW_SECONDS = 300.0
# Strings that have broken parsers, C and shells before; names get these at random.
HOSTILE_TEXT = ["", "\x00", "a\x00b", "../../etc/passwd", "/etc/passwd", "??/", "*/", "\n#include </etc/passwd>\n",
                "\"", "\\", "x" * 5000, "é", "\u202e", "%s%n", "$(id)"]


@dataclass
class FuzzTally:
    """Outcomes of one fuzz loop: inputs tried, FwEdgeErrors, accepted inputs, other exceptions by site."""

    tried: int = 0
    fwedge_errors: int = 0
    accepted: int = 0
    other: int = 0
    sites: dict = field(default_factory=dict)  # "Type at file:line" -> (traceback, input bytes)

    def record_other(self, exc: BaseException, payload: bytes) -> None:
        self.other += 1
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        site = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
        self.sites.setdefault(site, ("".join(traceback.format_exception(exc))[-3000:], payload))

    def line(self, name: str) -> str:
        return (f"{name}: {self.tried} inputs tried, {self.fwedge_errors} FwEdgeError, {self.accepted} accepted, "
                f"{self.other} other exceptions")

    def assert_clean(self, name: str, tmp_path: Path) -> None:
        print(self.line(name))
        if self.other:
            for index, (site, (trace, payload)) in enumerate(self.sites.items()):
                (tmp_path / f"{name}-failure-{index}.bin").write_bytes(payload)
                log.error("%s\n%s", site, trace)
            first_site, (first_trace, _) = next(iter(self.sites.items()))
            pytest.fail(f"{self.line(name)}; {len(self.sites)} site(s): {sorted(self.sites)}; inputs saved in "
                        f"{tmp_path}\nfirst: {first_site}\n{first_trace}")
        assert self.tried > 0


def _budget(default: float) -> float:
    text = os.environ.get("FWEDGE_FUZZ_SECONDS")
    return float(text) if text else default


def _slow_seed(default: int) -> int:
    text = os.environ.get("FWEDGE_FUZZ_SEED")
    return int(text) if text else default


# --------------------------------------------------------------------------------------------
# Byte-level and field-level mutations
# --------------------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four random byte-level edits."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if not out:
            out.extend(rng.integers(0, 256, 8, dtype=np.uint8).tobytes())
        kind = int(rng.integers(0, 7))
        at = int(rng.integers(0, len(out)))
        if kind == 0:  # flip one bit
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # set a byte to an interesting value
            out[at] = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12, 0x1A, 0x22]))
        elif kind == 2:  # truncate
            del out[at:]
        elif kind == 3:  # insert random bytes
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif kind == 4:  # delete a range
            del out[at : at + int(rng.integers(1, 32))]
        elif kind == 5:  # copy a chunk elsewhere (duplicates protobuf fields)
            start = int(rng.integers(0, len(out)))
            chunk = bytes(out[start : start + int(rng.integers(1, 64))])
            out[at:at] = chunk
        else:  # a huge varint (lengths, dims)
            out[at:at] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    return bytes(out)


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(0, len(items)))]


def mutate_fields(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """One structured edit of a copy of `model`: a name, a dim, a type, an attribute, a version."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kind = int(rng.integers(0, 12))
    huge = int(_pick(rng, [0, -1, 2**31, 2**40, 2**62, 7]))
    if kind == 0 and graph.node:
        node = _pick(rng, graph.node)
        setattr(node, _pick(rng, ["name", "op_type", "domain"]), _pick(rng, HOSTILE_TEXT + ["Conv", "Loop", "If"]))
    elif kind == 1 and graph.node:
        node = _pick(rng, graph.node)
        target = node.input if rng.random() < 0.5 else node.output
        if len(target):
            target[int(rng.integers(0, len(target)))] = _pick(rng, HOSTILE_TEXT + ["x", "y", "w"])
    elif kind == 2 and graph.initializer:
        tensor = _pick(rng, graph.initializer)
        if len(tensor.dims):
            tensor.dims[int(rng.integers(0, len(tensor.dims)))] = huge
        else:
            tensor.dims.append(huge)
    elif kind == 3 and graph.initializer:
        _pick(rng, graph.initializer).data_type = int(rng.integers(0, 30))
    elif kind == 4 and graph.initializer:
        tensor = _pick(rng, graph.initializer)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", _pick(rng, HOSTILE_TEXT + ["w.bin"])), ("offset", str(huge)),
                           ("length", str(huge))):
            if rng.random() < 0.7:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    elif kind == 5:
        value = _pick(rng, list(graph.input) + list(graph.output))
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[int(rng.integers(0, len(dims)))].dim_value = huge
    elif kind == 6 and graph.node:
        node = _pick(rng, graph.node)
        if node.attribute:
            attribute = _pick(rng, node.attribute)
            if attribute.ints:
                attribute.ints[int(rng.integers(0, len(attribute.ints)))] = huge
            else:
                attribute.i = huge
                attribute.type = _pick(rng, [onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT,
                                             onnx.AttributeProto.STRING, onnx.AttributeProto.TENSOR])
        else:
            node.attribute.append(helper.make_attribute(_pick(rng, ["pads", "strides", "axis", "group"]),
                                                        [huge, huge] if rng.random() < 0.5 else huge))
    elif kind == 7:
        out.ir_version = int(_pick(rng, [0, 1, 3, 4, 7, 10, 99, 2**40]))
    elif kind == 8:
        out.opset_import[0].version = int(_pick(rng, [1, 6, 7, 11, 12, 13, 18, 99, 2**40]))
    elif kind == 9:
        entry = out.metadata_props.add()
        entry.key = "fwedge.preprocess"
        entry.value = _pick(rng, ['{"resize": [100000, 100000]}', "[1]", "{", '{"scale": NaN}', '{"dtype": "object"}',
                                  '{"mean": [1, 2]}', '{"resize": [8, 8], "color": "grayscale"}', "1e999"])
    elif kind == 10 and graph.node:
        # A node that makes a tensor from constants: ConstantOfShape with a hostile shape.
        shape = numpy_helper.from_array(np.array([huge if huge > 0 else 2**20, 2**20], np.int64), "fuzz_shape")
        graph.initializer.append(shape)
        graph.node.insert(0, helper.make_node("ConstantOfShape", ["fuzz_shape"], ["fuzz_big"]))
    elif graph.node:
        del graph.node[int(rng.integers(0, len(graph.node)))]
    return out.SerializeToString()


def seed_models() -> list[onnx.ModelProto]:
    """Small real models: opset 13, opset 11 (version converter), and one with Constant nodes."""
    models = [tiny_conv_model(np.random.default_rng(0)), tiny_conv_model(np.random.default_rng(1), opset=11)]
    with_constant = tiny_conv_model(np.random.default_rng(2))
    weight = with_constant.graph.initializer[2]
    with_constant.graph.node.insert(0, helper.make_node("Constant", [], [weight.name], value=weight))
    del with_constant.graph.initializer[2]
    models.append(with_constant)
    return models


def _check_model_bytes(payload: bytes, path: Path, deep: bool) -> None:
    """Run one input through ir.load, the inspect summary and (deep) the quantization preparation."""
    from fwedge import ir
    from fwedge.data import preprocess_from_metadata
    from fwedge.summary import summarize

    path.write_bytes(payload)
    model = ir.load(path)
    summarize(model, path=str(path), with_support=False)
    preprocess_from_metadata(model)
    if deep:
        from fwedge.quantization import plan_quantization, prepare

        plan_quantization(prepare(model))


def fuzz_model_bytes(seconds: float, seed: int, folder: Path) -> FuzzTally:
    """Mutate the seed models' bytes for `seconds` and tally what ir.load and friends raise."""
    rng = np.random.default_rng(seed)
    seeds = seed_models()
    blobs = [model.SerializeToString() for model in seeds]
    (folder / "w.bin").write_bytes(b"\0" * 1024)  # a valid external-data target for mutated locations
    tally = FuzzTally()
    deadline = time.monotonic() + seconds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while time.monotonic() < deadline:
            index = int(rng.integers(0, len(seeds)))
            if rng.random() < 0.5:
                payload = mutate_bytes(blobs[index], rng)
            else:
                payload = mutate_fields(seeds[index], rng)
                if rng.random() < 0.3:
                    payload = mutate_bytes(payload, rng)
            tally.tried += 1
            try:
                _check_model_bytes(payload, folder / "fuzz.onnx", deep=tally.tried % 4 == 0)
            except FwEdgeError:
                tally.fwedge_errors += 1
            except Exception as exc:  # noqa: BLE001 - the point is to catch everything else
                tally.record_other(exc, payload)
            else:
                tally.accepted += 1
    return tally


def test_model_bytes_fuzz_raises_only_fwedge_errors(tmp_path):
    tally = fuzz_model_bytes(_budget(FAST_SECONDS), seed=0, folder=tmp_path)
    tally.assert_clean("model bytes", tmp_path)
    assert tally.tried >= 50 and tally.fwedge_errors > 0


@pytest.mark.slow
def test_model_bytes_fuzz_long(tmp_path):
    tally = fuzz_model_bytes(_budget(SLOW_SECONDS), seed=_slow_seed(1), folder=tmp_path)
    tally.assert_clean("model bytes (long)", tmp_path)


def test_example_model_bytes_fuzz(cnn_small_path, tmp_path):
    """A real trained model: byte edits only (each load takes longer, so fewer inputs)."""
    from fwedge import ir

    blob = Path(cnn_small_path).read_bytes()
    rng = np.random.default_rng(2)
    tally = FuzzTally()
    deadline = time.monotonic() + _budget(FAST_SECONDS) / 3
    while time.monotonic() < deadline:
        payload = mutate_bytes(blob, rng)
        tally.tried += 1
        try:
            (tmp_path / "fuzz.onnx").write_bytes(payload)
            ir.load(tmp_path / "fuzz.onnx")
        except FwEdgeError:
            tally.fwedge_errors += 1
        except Exception as exc:  # noqa: BLE001
            tally.record_other(exc, payload)
        else:
            tally.accepted += 1
    tally.assert_clean("example model bytes", tmp_path)


# --------------------------------------------------------------------------------------------
# Data files: IDX (plain and gzip), .npy and .npz headers
# --------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    return bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) \
        + array.tobytes()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz_bytes(arrays: dict, compress: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _image_bytes(kind: str, array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def data_seeds() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pictures = [("a.png", _image_bytes("PNG", images[0])), ("a.jpg", _image_bytes("JPEG", rgb)),
                ("a.bmp", _image_bytes("BMP", rgb)), ("a.pgm", _image_bytes("PPM", images[1]))]
    x = rng.random((6, 1, 8, 8), dtype=np.float32)
    y = np.arange(6, dtype=np.int64) % 3
    return [
        ("t-images-idx3-ubyte", _idx_bytes(images)),
        ("t-images-idx3-ubyte.gz", gzip.compress(_idx_bytes(images))),
        ("d.npy", _npy_bytes(x)),
        ("d.npz", _npz_bytes({"x": x, "y": y}, compress=False)),
        ("d.npz", _npz_bytes({"x": x, "y": y}, compress=True)),
        ("d.npz", _npz_bytes({"x": images, "y": y}, compress=True)),
        *pictures,
    ]


def _mutate_header(name: str, data: bytes, rng: np.random.Generator) -> bytes:
    """Edit what a data file declares: IDX dims, the npy header dict, or zip sizes."""
    out = bytearray(data)
    if "idx" in name and not name.endswith(".gz") and len(out) >= 8:
        ndim = out[3]
        if ndim and rng.random() < 0.7:
            at = 4 + 4 * int(rng.integers(0, ndim))
            out[at : at + 4] = struct.pack(">I", int(_pick(rng, [0, 1, 2**31, 2**32 - 1, 6, 9])))
        else:
            out[3] = int(rng.integers(0, 6))
        return bytes(out)
    text = bytes(out)
    for old, new in ((b"(6, 1, 8, 8)", _pick(rng, [b"(1000000000000,)", b"()", b"(6, 0, 8, 8)", b"(-1, 8)",
                                                      b"(6, 1, 8, 9)", b"(2**40,)", b"(6, 1, 8, 8, 3)"])),
                     (b"'<f4'", _pick(rng, [b"'<c8'", b"'|O'", b"'<U3'", b"'>f8'", b"'V8'", b"'<M8[s]'"])),
                     (b"False", b"True")):
        if old in text and rng.random() < 0.5:
            return text.replace(old, new, 1)
    if text[:2] == b"PK" and len(out) > 30:
        # The local header's sizes: claim a huge uncompressed size.
        out[22:26] = struct.pack("<I", int(_pick(rng, [0, 2**32 - 1, 1 << 30])))
        return bytes(out)
    return mutate_bytes(text, rng)


def fuzz_data_files(seconds: float, seed: int, folder: Path) -> FuzzTally:
    from fwedge.data import open_dataset

    rng = np.random.default_rng(seed)
    seeds = data_seeds()
    labels = folder / "t-labels-idx1-ubyte"
    tally = FuzzTally()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name, blob = _pick(rng, seeds)
        payload = _mutate_header(name, blob, rng) if rng.random() < 0.5 else mutate_bytes(blob, rng)
        path = folder / name
        path.write_bytes(payload)
        labels.write_bytes(_idx_bytes(np.arange(6, dtype=np.uint8) % 3))
        tally.tried += 1
        try:
            dataset = open_dataset(path)
            for _ in dataset.batches(batch_size=4, limit=min(3, dataset.num_samples)):
                pass
        except FwEdgeError:
            tally.fwedge_errors += 1
        except Exception as exc:  # noqa: BLE001
            tally.record_other(exc, payload)
        else:
            tally.accepted += 1
        path.unlink()
    return tally


def test_data_file_fuzz_raises_only_fwedge_errors(tmp_path):
    tally = fuzz_data_files(_budget(FAST_SECONDS) / 2, seed=0, folder=tmp_path)
    tally.assert_clean("data files", tmp_path)
    assert tally.tried >= 50 and tally.fwedge_errors > 0


@pytest.mark.slow
def test_data_file_fuzz_long(tmp_path):
    tally = fuzz_data_files(_budget(SLOW_SECONDS), seed=_slow_seed(1), folder=tmp_path)
    tally.assert_clean("data files (long)", tmp_path)
