"""A small labelled text-line set for the PP-OCR direction classifier: rendered words, upright and rotated 180°."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# PP-OCR cls input: RGB 48x192, (pixels / 255 - 0.5) / 0.5, NCHW. Classes: 0 = upright, 1 = 180°
# (sub-folders "0" and "180" sort in that order).
PPOCR_CLS_PREPROCESS = {"resize": [48, 192], "color": "rgb", "layout": "NCHW", "scale": 1.0 / 255.0,
                        "mean": [0.5], "std": [0.5], "dtype": "float32"}
PPOCR_CLS_SHAPE = [1, 3, 48, 192]

_WORDS = ("the quick brown fox jumps over a lazy dog while edge models export int8 scales to ncnn "
          "tflite openvino and onnx bundles on small boards 2026 invoice total amount paid").split()


def make_text_lines(folder: str | Path, count: int = 128, seed: int = 0) -> Path:
    """Write `count` 192x48 PNG text lines into folder/0 (upright) and folder/180 (rotated 180°).

    Each line is 2-4 seeded random words in Pillow's default font at a seeded size, position and
    ink/paper grey level; each is written upright and rotated, so the set is balanced.
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for label in ("0", "180"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    for index in range(count // 2):
        size = int(rng.integers(20, 30))
        font = ImageFont.load_default(size=size)
        text = " ".join(rng.choice(_WORDS, int(rng.integers(2, 5))))
        paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 80))
        image = Image.new("RGB", (192, 48), (paper,) * 3)
        ImageDraw.Draw(image).text((int(rng.integers(0, 12)), int(rng.integers(2, 48 - size))), text,
                                   fill=(ink,) * 3, font=font)
        image.save(folder / "0" / f"{index:04d}.png")
        image.rotate(180).save(folder / "180" / f"{index:04d}.png")
    return folder
