"""Shared fixtures: tiny synthetic data and a tiny pre-trained ViT, built once per session (seconds)."""

from __future__ import annotations

import gzip
import importlib
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgetkit.data import DataConfig
from forgetkit.pretraining import PretrainConfig, pretrain

SYNTH = dict(source="synthetic", num_classes=6, image_size=16, train_per_class=60, test_per_class=20, seed=0)


BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str):
    """A script of bench/ as a module; bench/ goes on the path first, for the modules it imports from there."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A vit_test model pre-trained on the synthetic data (about 90 % test accuracy)."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    pretrain(PretrainConfig(data=DataConfig(**SYNTH), arch="vit_test", epochs=25, warmup_steps=5, lr=3e-3,
                            threads=1, out=str(out)), progress=False)
    return out


def tiny_run_overrides(model_dir: Path, out: Path) -> list[str]:
    return [f"model={model_dir}", "data.source=synthetic", "protocol.classes_per_request=2", "protocol.num_requests=2",
            "protocol.forget_ratio=1.0", "protocol.retain_ratio=0.5", "train.steps=48", "train.batch_size=16",
            "train.threads=1", "method.bnd=5", "method.alpha=0.01", "method.alpha_warmup_steps=8",
            f"output_dir={out}"]


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fake_fmnist(tmp_path) -> Path:
    """A Fashion-MNIST-shaped IDX folder with 20 train and 10 test images."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 28, 28)), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10) % 10, gz=False)
    return tmp_path


def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class=4, size=(20, 14), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "imgs")


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
