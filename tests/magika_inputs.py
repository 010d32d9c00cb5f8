"""Real files for magika 1.0.3's file-type classifier (standard_v3_3): files of many types that the
Python standard library and the pinned packages ship, read the way magika reads them (the first
and last 1024 bytes of at most 4096, whitespace stripped, 256 as padding), as int32 [N, 2048]."""
from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import numpy as np

MODEL_DIR = ("models", "standard_v3_3")
# (root, path under it, magika's label for the file). Roots: "stdlib" is the running Python's
# standard library; any other root is an installed package's folder. In pairs, mostly two files
# of one type: the first calibrates, the second is held out. Each label is the one magika 1.0.3's
# own identify_path gives the file.
FILES = [
    ("stdlib", "json/decoder.py", "python"), ("stdlib", "email/_encoded_words.py", "python"),
    ("torch", "_dynamo/graph_break_registry.json", "json"),
    ("scipy", "stats/tests/data/studentized_range_mpmath_ref.json", "json"),
    ("numpy", "../numpy-2.4.6.dist-info/licenses/LICENSE.txt", "txt"),
    ("onnxruntime", "ThirdPartyNotices.txt", "txt"),
    ("ziglang", "lib/docs/index.html", "html"), ("stdlib", "idlelib/help.html", "html"),
    ("skimage", "data/camera.png", "png"), ("skimage", "data/chelsea.png", "png"),
    ("sklearn", "datasets/images/china.jpg", "jpeg"), ("skimage", "data/rocket.jpg", "jpeg"),
    ("sklearn", "datasets/data/digits.csv.gz", "gzip"), ("networkx", "generators/atlas.dat.gz", "gzip"),
    ("stdlib", "test/zipdir.zip", "zip"), ("stdlib", "ensurepip/_bundled/pip-23.2.1-py3-none-any.whl", "zip"),
    ("networkx", "algorithms/flow/tests/gl1.gpickle.bz2", "bzip"),
    ("networkx", "algorithms/flow/tests/wlm3.gpickle.bz2", "bzip"),
    ("ziglang", "lib/include/altivec.h", "c"), ("ziglang", "lib/include/__wmmintrin_aes.h", "c"),
    ("numpy", "_core/tests/data/umath-validation-set-arccos.csv", "csv"),
    ("numpy", "_core/tests/data/umath-validation-set-arctan.csv", "csv"),
    ("onnxruntime", "Privacy.md", "markdown"), ("ziglang", "README.md", "markdown"),
    ("sklearn", "utils/_repr_html/estimator.css", "css"), ("ziglang", "lib/build-web/style.css", "css"),
    ("ziglang", "lib/build-web/main.js", "javascript"), ("torch", "utils/model_dump/code.js", "javascript"),
    ("scipy", "interpolate/tests/data/estimate_gradients_hang.npy", "npy"),
    ("scipy", "stats/tests/data/jf_skew_t_gamlss_pdf_data.npy", "npy"),
    ("scipy", "fftpack/tests/test.npz", "npz"), ("scipy", "interpolate/tests/data/gcvspl.npz", "npz"),
    ("numpy", "_core/_simd.cpython-311-x86_64-linux-gnu.so", "elf"),
    ("numpy", "_core/_rational_tests.cpython-311-x86_64-linux-gnu.so", "elf"),
    ("sklearn", "datasets/descr/wine_data.rst", "rst"), ("numpy", "ma/README.rst", "rst"),
    ("scipy", "io/tests/data/test-44100Hz-le-1ch-4bytes.wav", "wav"),
    ("scipy", "io/tests/data/test-44100Hz-2ch-32bit-float-le.wav", "wav"),
    ("stdlib", "test/testtar.tar", "tar"), ("stdlib", "test/testtar.tar.xz", "xz"),
]
CALIBRATION = FILES[0::2]
HELD_OUT = FILES[1::2]


def model_dir() -> Path | None:
    """magika's standard_v3_3 folder inside the installed package, or None without magika."""
    spec = importlib.util.find_spec("magika")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.joinpath(*MODEL_DIR)


def config() -> dict:
    """The model's config.min.json (sizes, padding token, the 214 labels)."""
    return json.loads((model_dir() / "config.min.json").read_text())


def _path(root: str, name: str) -> Path:
    if root == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"]) / name
    return Path(importlib.util.find_spec(root).origin).parent / name


def features(data: bytes, settings: dict) -> np.ndarray:
    """The model input for one file's bytes: its first `beg_size` bytes (left-stripped, padded at the
    end) then its last `end_size` bytes (right-stripped, padded at the front), from at most
    `block_size` bytes at either end."""
    begin_size, end_size, pad = settings["beg_size"], settings["end_size"], settings["padding_token"]
    block = min(settings["block_size"], len(data))
    begin = list(data[:block].lstrip()[:begin_size])
    end = list(data[len(data) - block:].rstrip()[-end_size:]) if end_size else []
    begin += [pad] * (begin_size - len(begin))
    end = [pad] * (end_size - len(end)) + end
    return np.asarray(begin + end, dtype=np.int32)


def magika_inputs(files: list[tuple[str, str, str]]) -> tuple[np.ndarray, list[str]]:
    """The files as int32 [N, 2048] and their expected labels."""
    settings = config()
    rows = [features(_path(root, name).read_bytes(), settings) for root, name, _ in files]
    return np.stack(rows), [label for _, _, label in files]
