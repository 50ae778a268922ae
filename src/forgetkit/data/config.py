"""Which images a run uses: the data section of every config, torch-free."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict
from ..errors import ForgetkitError

SOURCE_NAMES = ("fashion_mnist", "mnist_5k", "image_folder", "synthetic", "glyphs60", "glyphs_novel")
"""the sources data/sources.py registers (a test keeps the two lists equal)"""
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass
class DataConfig:
    """Which images to use."""

    source: str = field(default="fashion_mnist", metadata={"help": "data source: one of fashion_mnist, "
                                                                   "mnist_5k, image_folder, synthetic, glyphs60, "
                                                                   "glyphs_novel"})
    root: str | None = field(default=None, metadata={"help": "folder of the data (image_folder: ROOT/train/<class>/*"
                                                             " and ROOT/test/<class>/*; fashion_mnist: IDX files)"})
    num_classes: int = field(default=6, metadata={"help": "synthetic only: number of classes"})
    image_size: int = field(default=16, metadata={"help": "synthetic only: image side"})
    train_per_class: int = field(default=60, metadata={"help": "synthetic only: training images per class"})
    test_per_class: int = field(default=20, metadata={"help": "synthetic only: test images per class"})
    seed: int = field(default=0, metadata={"help": "synthetic only: seed of the generated images"})
    classes: list[str] | str | None = field(default=None, metadata={
        "help": "only these classes, by name, or a slice of the source's class list such as '0:30' (the first "
                "30) or '30:' (the others); null = all"})


    def recorded(self) -> dict:
        """This section as a checkpoint records it: the root made absolute, so the checkpoint works from any
        folder."""
        recorded = dataclasses.asdict(self)
        if recorded.get("root"):
            recorded["root"] = str(Path(recorded["root"]).resolve())
        return recorded


def check_data_config(cfg: DataConfig) -> None:
    """What can be checked of a data section without reading any image: the source exists, and so does its root."""
    known = list(SOURCE_NAMES)
    sources = sys.modules.get("forgetkit.data.sources")  # a source registered in this process counts too
    if sources is not None:
        known = sources.SOURCES.names()
    if cfg.source not in known:
        import difflib

        close = difflib.get_close_matches(cfg.source, known, n=1)
        raise ForgetkitError(f"unknown data source '{cfg.source}'." + (f" Did you mean '{close[0]}'?" if close else "")
                             + f" Known: {', '.join(known)}")
    if cfg.source == "image_folder":
        if not cfg.root:
            raise ForgetkitError("data.root is required for the image_folder source; set it (--root) to the folder "
                                 "holding train/ and test/")
        for split in ("train", "test"):
            if not (Path(cfg.root) / split).is_dir():
                raise ForgetkitError(f"dataset path {Path(cfg.root) / split} does not exist; lay the data out as "
                                     f"ROOT/train/<class>/* and ROOT/test/<class>/*")
    elif cfg.source == "fashion_mnist" and not Path(cfg.root or FASHION_MNIST_ROOT).is_dir():
        raise ForgetkitError(f"dataset path {cfg.root or FASHION_MNIST_ROOT} does not exist; install Debian's "
                             f"dataset-fashion-mnist package or set data.root (--root)")


def model_data_config(manifest: dict, name: str) -> DataConfig:
    """The data a checkpoint was trained on, as its manifest records it (every command that writes a checkpoint
    records it)."""
    recorded = manifest.get("data") or (manifest.get("pretrain") or {}).get("config", {}).get("data")
    if not recorded:
        raise ForgetkitError(f"{name} does not record the data it was trained on; name it with --data/--root (or "
                             f"data.source and data.root in the config)")
    return from_dict(DataConfig, recorded, "data")
