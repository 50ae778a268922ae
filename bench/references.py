"""Reference models for verification: one per request of a dataset's protocol, each pre-trained from scratch on
the classes retained after that request, with the recipe of the dataset's own checkpoint (datasets.yaml).

A reference is what "never learnt the forgotten classes" looks like (docs/verify.md). It holds out the same
validation images as the dataset's checkpoint (forgetkit.data.datasets.held_out_mask), so both are scored on
images neither saw, on the validation split as on the test split.

    PYTHONPATH=bench .venv/bin/python bench/references.py --dataset mnist_5k --requests 1,2,3,4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from benchdata import DATASETS

from forgetkit.data import load_data
from forgetkit.data.config import DataConfig
from forgetkit.engine.config import PretrainConfig
from forgetkit.pretraining import pretrain
from forgetkit.requests.protocol import class_order


def retained_after(classes: list[str], per_request: int, request: int, order_seed: int = 1337) -> list[str]:
    """The class names retained after ``request`` (1-based; 0 = all) of the continual protocol over ``classes``
    (protocol.class_order)."""
    order = class_order(len(classes), order_seed)
    return [classes[i] for i in order[: len(classes) - request * per_request]]


def reference_path(dataset: str, request: int) -> Path:
    return Path("checkpoints") / f"ref_{dataset}_r{request}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--requests", default="1,2,3,4", help="requests (1-based) to make references for")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    entry = yaml.safe_load(DATASETS.read_text())[args.dataset]
    overrides = dict(o.split("=", 1) for o in entry["overrides"])
    source_classes = load_data(DataConfig(source=overrides["data.source"])).classes
    for request in [int(r) for r in args.requests.split(",")]:
        out = reference_path(args.dataset, request)
        if (out / "model.safetensors").exists():
            print(f"{out}: exists, kept")
            continue
        classes = retained_after(source_classes, int(overrides["protocol.classes_per_request"]), request)
        cfg = PretrainConfig(data=DataConfig(source=overrides["data.source"], classes=classes),
                             threads=args.threads, out=str(out), **entry["pretrain"])
        _, info = pretrain(cfg, progress=False)
        print(f"{out}: {len(classes)} classes, test accuracy {info['test_accuracy']:.2f} %, {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
