"""Embedded, deterministic text / non-text images with text-line boxes.

What it makes: "an embedded generator of text images (rendered words and lines in several fonts — the DejaVu
fonts shipped inside matplotlib serve where the system has none — sizes, colours, rotations, perspective, on
natural-looking textured backgrounds, with text boxes) and non-text images (the same backgrounds with
text-like clutter: stripes, bars, grids, foliage), deterministic from a seed".

Image ``index`` of a set with ``seed`` depends only on ``(seed, index)``: even indices are text images
(1 to 4 lines of words, small rotations), odd indices non-text. Both classes share the background
generator (gradients, low-frequency noise, random shapes, fine noise) and both may carry clutter, so
neither the background nor the clutter alone tells the class. Perspective warps are not generated.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from distill.text.regions import GRIDS, PAPER_RULE, RegionRule, region_label_grids

WORDS = ("open", "exit", "sale", "coffee", "street", "hotel", "bank", "police", "taxi", "menu", "stop",
         "station", "market", "free", "wifi", "pizza", "book", "store", "north", "park", "city", "bus",
         "welcome", "closed", "daily", "fresh", "music", "club", "pharmacy", "garage", "ticket", "museum",
         "SALE", "EXIT", "OPEN", "No.", "24h", "%50", "Tel:", "www")


@lru_cache(maxsize=None)
def font_paths() -> tuple[str, ...]:
    """Paths of the DejaVu TrueType fonts inside matplotlib, sorted (deterministic order)."""
    import matplotlib

    paths = sorted(str(p) for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf"))
    if not paths:
        raise FileNotFoundError(f"no DejaVu*.ttf fonts under {matplotlib.get_data_path()}/fonts/ttf")
    return tuple(paths)


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@dataclass(frozen=True)
class TextSample:
    """One generated image: uint8 [H, W, 3] RGB, text-line boxes float32 [N, 4] xyxy pixels, class."""

    image: np.ndarray
    boxes: np.ndarray
    is_text: bool


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [H, W, 3] in [0, 255]: linear gradient between two colours at a random angle."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(a) * xx / w + np.sin(a) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)


def _low_freq(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [H, W, 3]: smooth colour noise (small random grid upsampled bicubically), cloud-like."""
    cells = int(rng.integers(2, 7))
    small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)


def _shapes(rng: np.random.Generator, img: Image.Image, count: int) -> None:
    """Random filled ellipses, rectangles and triangles (natural-looking blobs), drawn in place."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(count):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.1, 0.6) * h
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A natural-looking RGB background: gradient and / or smooth noise, shapes, fine noise."""
    mix = rng.uniform(0, 1)
    base = mix * _gradient(rng, h, w) + (1 - mix) * _low_freq(rng, h, w)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    _shapes(rng, img, int(rng.integers(0, 5)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 12), (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _clutter(rng: np.random.Generator, img: Image.Image) -> None:
    """Text-like clutter drawn in place: stripes, bars, a grid, or foliage (many small leaves)."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    kind = int(rng.integers(4))
    x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.6) * h
    x1, y1 = x0 + rng.uniform(0.25, 0.5) * w, y0 + rng.uniform(0.25, 0.5) * h
    step = rng.uniform(0.02, 0.08) * min(w, h)
    width = max(1, int(step * rng.uniform(0.2, 0.6)))
    if kind == 0:                                   # parallel stripes
        for y in np.arange(y0, y1, step):
            draw.line((x0, y, x1, y + rng.uniform(-2, 2)), fill=colour, width=width)
    elif kind == 1:                                 # vertical bars of random heights (barcode / fence)
        for x in np.arange(x0, x1, step):
            draw.rectangle((x, y0 + rng.uniform(0, 0.5) * (y1 - y0), x + width, y1), fill=colour)
    elif kind == 2:                                 # grid
        for x in np.arange(x0, x1, step):
            draw.line((x, y0, x, y1), fill=colour, width=width)
        for y in np.arange(y0, y1, step):
            draw.line((x0, y, x1, y), fill=colour, width=width)
    else:                                           # foliage: small leaves in greens / browns
        for _ in range(int(rng.integers(30, 90))):
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            r = rng.uniform(0.01, 0.04) * min(w, h)
            leaf = (int(rng.integers(20, 120)), int(rng.integers(80, 200)), int(rng.integers(0, 90)))
            draw.ellipse((cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), fill=leaf)


def _line_layer(rng: np.random.Generator, h: int) -> Image.Image:
    """One text line (1-3 words, random font / size / colour), rotated by at most 10 degrees, on an RGBA
    layer cropped to its ink."""
    paths = font_paths()
    font = _font(paths[int(rng.integers(len(paths)))], int(rng.uniform(0.06, 0.2) * h) + 6)
    words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), int(rng.integers(1, 4)))]
    text = " ".join(words)
    left, top, right, bottom = font.getbbox(text)
    layer = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    colour = (*(int(v) for v in rng.integers(0, 256, 3)), 255)
    ImageDraw.Draw(layer).text((2 - left, 2 - top), text, font=font, fill=colour)
    layer = layer.rotate(float(rng.uniform(-10, 10)), resample=Image.BICUBIC, expand=True)
    return layer.crop(layer.getchannel("A").getbbox())


def _place_lines(rng: np.random.Generator, img: Image.Image) -> np.ndarray:
    """Paste 1-4 non-overlapping text lines onto img in place; float32 [N, 4] xyxy boxes (ink extent)."""
    w, h = img.size
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 5))):
        layer = _line_layer(rng, h)
        if layer.width > w:                               # too long: shrink to fit the width
            layer = layer.resize((w - 2, max(1, layer.height * (w - 2) // layer.width)), Image.BICUBIC)
        for _try in range(10):
            x = int(rng.integers(0, max(1, w - layer.width + 1)))
            y = int(rng.integers(0, max(1, h - layer.height + 1)))
            box = (x, y, x + layer.width, min(h, y + layer.height))
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                img.paste(layer, (x, y), layer)
                boxes.append(box)
                break
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def generate(seed: int, index: int, size: tuple[int, int] = (128, 128)) -> TextSample:
    """Image ``index`` of the set ``seed``, size (H, W); depends on (seed, index) only."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index])
    h, w = size
    img = background(rng, h, w)
    is_text = index % 2 == 0
    if not is_text or rng.uniform() < 0.4:
        for _ in range(int(rng.integers(1, 3))):
            _clutter(rng, img)
    boxes = _place_lines(rng, img) if is_text else np.zeros((0, 4), dtype=np.float32)
    return TextSample(np.asarray(img, dtype=np.uint8), boxes, is_text)


class TextImages(torch.utils.data.Dataset):
    """``count`` generated images of the set ``seed``.

    Item: (image float32 [3, H, W] in [0, 1], label float32 scalar (1 text, 0 non-text),
    regions {g: float32 [g, g]} of 0 / 1 region labels for each grid g, from ``rule``).
    """

    def __init__(self, count: int, seed: int = 0, size: tuple[int, int] = (128, 128),
                 grids: tuple[int, ...] = GRIDS, rule: RegionRule = PAPER_RULE) -> None:
        if count < 1:
            raise ValueError(f"text image count must be >= 1, got {count}")
        self.count, self.seed, self.size, self.grids, self.rule = count, seed, tuple(size), tuple(grids), rule

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        if not 0 <= index < self.count:
            raise IndexError(f"text image index {index} out of range [0, {self.count})")
        s = generate(self.seed, index, self.size)
        image = torch.from_numpy(s.image.copy()).permute(2, 0, 1).float().div_(255.0)
        regions = region_label_grids(s.boxes, self.size, self.grids, self.rule)
        return image, torch.tensor(float(s.is_text)), {g: torch.from_numpy(r) for g, r in regions.items()}
