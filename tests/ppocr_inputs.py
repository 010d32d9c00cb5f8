"""Real inputs for the PP-OCR direction classifier: Pillow-rendered text lines and skimage crops."""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 48, 192
FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Italic.ttf",
]
WORDS = ["invoice", "total", "date", "number", "street", "station", "fwedge", "quantized", "model",
         "receipt", "amount", "paid", "cash", "Berlin", "Shanghai", "2026-11-21", "No. 4711", "EUR",
         "TEL", "0123456789", "hello world", "Open Neural Network Exchange", "int8", "ONNX"]
SKIMAGE_NAMES = ["astronaut", "camera", "coffee", "chelsea", "page", "text", "rocket", "coins",
                 "moon", "horse", "clock", "immunohistochemistry", "hubble_deep_field", "logo"]


def normalize_line(image: np.ndarray, width: int = WIDTH) -> np.ndarray:
    """PP-OCR cls (and rec) preprocessing: resize to height 48 keeping aspect (width <= `width`),
    scale to (x/255 - 0.5)/0.5, CHW, zero-pad on the right to `width` (rapidocr's resize_norm_img)."""
    from PIL import Image

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    height = image.shape[0]
    resized_width = min(width, max(1, int(np.ceil(HEIGHT * image.shape[1] / height))))
    pil = Image.fromarray(image.astype(np.uint8)).resize((resized_width, HEIGHT), Image.BILINEAR)
    array = (np.asarray(pil, dtype=np.float32) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, HEIGHT, width), dtype=np.float32)
    out[:, :, :resized_width] = array.transpose(2, 0, 1)
    return out


def render_text_line(rng: np.random.Generator) -> np.ndarray:
    """One RGB text line (uint8 HWC) in a random font, size, colour and padding."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = [path for path in FONTS if Path(path).is_file()]
    font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(18, 40))) if fonts \
        else ImageFont.load_default()
    if rng.random() < 0.7:
        text = " ".join(WORDS[i] for i in rng.choice(len(WORDS), size=int(rng.integers(1, 4))))
    else:
        text = "".join(rng.choice(list(string.ascii_letters + string.digits + " .,:-"), size=int(rng.integers(4, 18))))
    background = rng.integers(170, 256, 3) if rng.random() < 0.85 else rng.integers(0, 80, 3)
    ink = 255 - background + rng.integers(-40, 40, 3)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(2, 10))
    canvas = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), tuple(int(v) for v in background))
    ImageDraw.Draw(canvas).text((pad_x - left, pad_y - top), text, font=font,
                                fill=tuple(int(np.clip(v, 0, 255)) for v in ink))
    array = np.asarray(canvas).astype(np.int16)
    array += rng.integers(-12, 13, array.shape, dtype=np.int16)  # sensor noise
    return np.clip(array, 0, 255).astype(np.uint8)


def skimage_crop(rng: np.random.Generator) -> np.ndarray:
    """A random wide crop (about 4:1) of a scikit-image sample image, RGB uint8."""
    import skimage.data

    name = SKIMAGE_NAMES[rng.integers(len(SKIMAGE_NAMES))]
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = (255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-6)).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    height, width = image.shape[:2]
    crop_h = int(rng.integers(max(8, height // 16), max(9, height // 3)))
    crop_w = min(width, crop_h * int(rng.integers(2, 6)))
    y = int(rng.integers(0, height - crop_h + 1))
    x = int(rng.integers(0, width - crop_w + 1))
    return image[y:y + crop_h, x:x + crop_w, :3]


def ppocr_cls_inputs(count: int, seed: int = 0, text_share: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """`count` inputs [N,3,48,192] and their labels (0 = upright, 1 = rotated 180°).

    Text lines make up `text_share` of the samples, skimage crops the rest; each is rotated by
    180° with probability 1/2 (the cls task).
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        image = render_text_line(rng) if rng.random() < text_share else skimage_crop(rng)
        flip = int(rng.random() < 0.5)
        if flip:
            image = image[::-1, ::-1]
        images.append(normalize_line(np.ascontiguousarray(image)))
        labels.append(flip)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


REC_WIDTH = 320  # rapidocr's rec_img_shape [3, 48, 320]


def ppocr_rec_inputs(count: int, seed: int = 0, width: int = REC_WIDTH) -> np.ndarray:
    """`count` rendered text lines [N, 3, 48, width] for PP-OCR rec (upright, as the classifier
    leaves them), normalised and padded as rapidocr's recognizer does."""
    rng = np.random.default_rng(seed)
    return np.stack([normalize_line(render_text_line(rng), width) for _ in range(count)])


def ctc_greedy(probabilities: np.ndarray) -> list[list[int]]:
    """CTC greedy decoding of [N, T, classes]: the argmax per step, repeats merged, blanks (0) dropped."""
    decoded = []
    for best in np.asarray(probabilities).argmax(axis=-1):
        kept = [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
        decoded.append(kept)
    return decoded


def character_accuracy(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """1 - (sum of Levenshtein distances) / (sum of reference lengths), over all lines."""
    errors = total = 0
    for ref, got in zip(reference, candidate):
        row = list(range(len(got) + 1))
        for i, r in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, g in enumerate(got, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != g))
        errors += row[len(got)]
        total += len(ref)
    return 1.0 - errors / max(total, 1)


DET_SIZE = 128  # PP-OCR det takes any multiple of 32; 128 keeps the qemu runs short
DET_MEAN, DET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def ppocr_det_inputs(count: int, seed: int = 0, size: int = DET_SIZE) -> np.ndarray:
    """`count` inputs [N,3,size,size] for PP-OCR det: pages of 1-4 rendered text lines pasted
    at random places on a plain background or a skimage crop, normalised as rapidocr does
    ((x/255 - mean) / std, ImageNet mean and std)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(count):
        if rng.random() < 0.3:
            page = Image.fromarray(skimage_crop(rng)).resize((size, size), Image.BILINEAR)
        else:
            page = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(190, 256, 3)))
        for _ in range(int(rng.integers(1, 5))):
            line = Image.fromarray(render_text_line(rng))
            scale = min(1.0, (size - 4) / line.width, (size // 3) / line.height)
            line = line.resize((max(1, int(line.width * scale)), max(1, int(line.height * scale))), Image.BILINEAR)
            page.paste(line, (int(rng.integers(0, size - line.width + 1)), int(rng.integers(0, size - line.height + 1))))
        array = np.asarray(page, dtype=np.float32) / 255.0
        pages.append(((array - DET_MEAN) / DET_STD).transpose(2, 0, 1))
    return np.stack(pages).astype(np.float32)
