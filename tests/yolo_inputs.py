"""Real photos for YOLOv8n at 640x640: the sample images scikit-image and scikit-learn ship,
letterboxed as Ultralytics does (long side to 640, grey 114 padding, RGB, /255, NCHW)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 640
PAD = 114  # Ultralytics' letterbox grey
# Photos in which the float YOLOv8n finds COCO objects (person, cup, cat, motorcycle, ...) first,
# then photos in which it finds nothing at score 0.25 (false positives there count in the mAP).
WITH_OBJECTS = ["astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "motorcycle_right.png",
                "camera.png", "sklearn:flower.jpg"]
WITHOUT_OBJECTS = ["sklearn:china.jpg", "rocket.jpg", "horse.png", "coins.png", "page.png"]
PHOTOS = WITH_OBJECTS + WITHOUT_OBJECTS


def _path(name: str) -> Path:
    if name.startswith("sklearn:"):
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / name.split(":", 1)[1]
    import skimage.data

    return Path(skimage.data.__file__).parent / name


def letterbox(name: str, mirror: bool = False) -> np.ndarray:
    """One photo as a [1, 3, 640, 640] float32 input; `mirror` flips it left to right first."""
    from PIL import Image, ImageOps

    image = Image.open(_path(name)).convert("RGB")
    if mirror:
        image = ImageOps.mirror(image)
    scale = SIZE / max(image.size)
    width, height = round(image.size[0] * scale), round(image.size[1] * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (PAD, PAD, PAD))
    canvas.paste(image.resize((width, height), Image.BILINEAR), ((SIZE - width) // 2, (SIZE - height) // 2))
    return (np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None]


def yolo_inputs(names: list[str], mirror: bool = False) -> np.ndarray:
    """The named photos letterboxed, stacked into [N, 3, 640, 640]."""
    return np.concatenate([letterbox(name, mirror) for name in names])
