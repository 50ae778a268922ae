"""``glyphs60``: a 60-class dataset of rendered characters, made offline from the fonts matplotlib ships.

forgetkit needs a dataset of many classes to choose its defaults on (at least 50 classes, and the papers'
protocol shape of 20 % of the classes per request), and no such dataset can be downloaded here. This one is
generated, deterministically, from a package forgetkit already depends on:

* **classes**: 10 digits, 24 Latin capitals (not ``O`` and ``I``, which 28 px renderings confuse with ``0`` and
  ``1``), 10 Latin small letters whose shape differs from their capital, and 16 Greek small letters: 60 in all;
* **fonts**: the 16 text faces in ``matplotlib/mpl-data/fonts/ttf`` (DejaVu Sans, Sans Mono, Serif and STIX
  General, each regular, bold, italic and bold italic); a font is used for a class only if its character map
  covers that character (fontTools), so no image is a missing-glyph box;
* **images**: 28 × 28 grey, white on black like MNIST. Each is one font at a random size, rotation (±12°),
  shear, offset and stroke blur, with pixel noise; 300 training and 60 test images per class, drawn from
  separate random streams (train and test images never repeat).

The ``vit_fmnist`` preset reaches 98.3 % test accuracy on it (docs/benchmarks.md): easier than Fashion-MNIST per
class, with six times as many classes. The generator, not a file, defines the dataset: ``seed`` (``data.seed``)
gives another draw of it. Rendering takes about 6 s.

``glyphs_novel`` renders 20 characters outside those 60 the same way (16 Cyrillic capitals unlike any Latin letter
or digit, 4 Greek small letters): classes no glyphs60 model ever saw, which verification uses as its never-learnt
level without a reference (``eval.verify.novel``, docs/verify.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..errors import ForgetkitError
from ..extras import require
from .datasets import DataSplits, TensorImages

DIGITS = [(f"digit_{c}", c) for c in "0123456789"]
CAPITALS = [(f"capital_{c}", c) for c in "ABCDEFGHJKLMNPQRSTUVWXYZ"]
SMALL = [(f"small_{c}", c) for c in "abdefghnqr"]
GREEK = [(f"greek_{name}", chr(code)) for name, code in [
    ("alpha", 0x3B1), ("beta", 0x3B2), ("gamma", 0x3B3), ("delta", 0x3B4), ("epsilon", 0x3B5), ("zeta", 0x3B6),
    ("eta", 0x3B7), ("theta", 0x3B8), ("lambda", 0x3BB), ("mu", 0x3BC), ("xi", 0x3BE), ("pi", 0x3C0),
    ("rho", 0x3C1), ("sigma", 0x3C3), ("phi", 0x3C6), ("psi", 0x3C8)]]
GLYPH_CLASSES = DIGITS + CAPITALS + SMALL + GREEK
CYRILLIC = [(f"cyrillic_{name}", chr(code)) for name, code in [
    ("be", 0x411), ("ghe", 0x413), ("de", 0x414), ("zhe", 0x416), ("lje", 0x409), ("i", 0x418), ("el", 0x41B),
    ("pe", 0x41F), ("tse", 0x426), ("che", 0x427), ("sha", 0x428), ("shcha", 0x429), ("yeru", 0x42B),
    ("e", 0x42D), ("yu", 0x42E), ("ya", 0x42F)]]
NOVEL_CLASSES = CYRILLIC + [(f"greek_{name}", chr(code)) for name, code in [
    ("kappa", 0x3BA), ("tau", 0x3C4), ("omega", 0x3C9), ("final_sigma", 0x3C2)]]
FONT_FILES = [f"{family}{style}.ttf" for family, styles in [
    ("DejaVuSans", ["", "-Bold", "-Oblique", "-BoldOblique"]),
    ("DejaVuSansMono", ["", "-Bold", "-Oblique", "-BoldOblique"]),
    ("DejaVuSerif", ["", "-Bold", "-Italic", "-BoldItalic"]),
    ("STIXGeneral", ["", "Bol", "Italic", "BolIta"])] for style in styles]
TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE, CANVAS = 300, 60, 28, 56


def font_dir() -> Path:
    matplotlib = require("matplotlib", "the glyphs60 data source (it renders matplotlib's fonts)")
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _fonts_for_classes(glyph_classes: list[tuple[str, str]]) -> list[list[Path]]:
    """For each class, the font files whose character map has its character."""
    TTFont = require("fontTools.ttLib", "the glyphs60 data source").TTFont

    root = font_dir()
    paths = [root / name for name in FONT_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ForgetkitError(f"the glyphs60 source renders matplotlib's fonts, but {missing[:3]} are not in {root}; "
                             f"reinstall matplotlib (pip install --force-reinstall matplotlib)")
    cmaps = [set(TTFont(p, lazy=True).getBestCmap()) for p in paths]
    per_class = [[p for p, cmap in zip(paths, cmaps) if ord(char) in cmap] for _, char in glyph_classes]
    for (name, _), fonts in zip(glyph_classes, per_class):
        if len(fonts) < 4:
            raise ForgetkitError(f"only {len(fonts)} of matplotlib's fonts draw class {name}; the glyphs60 source "
                                 f"needs matplotlib's DejaVu and STIX fonts")
    return per_class


def _render(char: str, font_path: Path, rng: np.random.Generator, cache: dict) -> np.ndarray:
    size = int(rng.integers(26, 38))
    key = (font_path, size)
    if key not in cache:
        cache[key] = ImageFont.truetype(str(font_path), size)
    font = cache[key]
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    x = (CANVAS - (right - left)) / 2 - left + rng.uniform(-3, 3)
    y = (CANVAS - (bottom - top)) / 2 - top + rng.uniform(-3, 3)
    draw.text((x, y), char, fill=255, font=font)
    angle, shear = math.radians(rng.uniform(-12, 12)), rng.uniform(-0.2, 0.2)
    cos, sin, c = math.cos(angle), math.sin(angle), CANVAS / 2
    # inverse affine map (output -> input) about the centre: rotation then horizontal shear
    a, b = cos, sin + shear
    d, e = -sin, cos
    canvas = canvas.transform((CANVAS, CANVAS), Image.Transform.AFFINE,
                              (a, b, c - a * c - b * c, d, e, c - d * c - e * c), resample=Image.Resampling.BILINEAR)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    small = np.asarray(canvas.resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float32)
    small = small * rng.uniform(0.75, 1.0) + rng.normal(0, 12, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def render_glyphs(per_class: int, seed: int, split: int, glyph_classes: list[tuple[str, str]] = GLYPH_CLASSES,
                  stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class of ``glyph_classes``, drawn from the streams ``(seed, split, stream +
    class index)`` (split 0 train, 1 test)."""
    fonts = _fonts_for_classes(glyph_classes)
    images, labels, cache = [], [], {}
    for index, ((_, char), class_fonts) in enumerate(zip(glyph_classes, fonts)):
        rng = np.random.default_rng([seed, split, stream + index])
        for _ in range(per_class):
            images.append(_render(char, class_fonts[int(rng.integers(len(class_fonts)))], rng, cache))
            labels.append(index)
    return torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels)


def glyphs60(seed: int = 0) -> DataSplits:
    classes = [name for name, _ in GLYPH_CLASSES]
    train = TensorImages(*render_glyphs(TRAIN_PER_CLASS, seed, 0), classes)
    test = TensorImages(*render_glyphs(TEST_PER_CLASS, seed, 1), classes)
    return DataSplits("glyphs60", train, test)


def glyphs_novel(seed: int = 0) -> DataSplits:
    # streams of their own (from 1000), so no novel image repeats a glyphs60 image's random draws
    classes = [name for name, _ in NOVEL_CLASSES]
    train = TensorImages(*render_glyphs(TRAIN_PER_CLASS, seed, 0, NOVEL_CLASSES, stream=1000), classes)
    test = TensorImages(*render_glyphs(TEST_PER_CLASS, seed, 1, NOVEL_CLASSES, stream=1000), classes)
    return DataSplits("glyphs_novel", train, test)
