"""Which images a run uses: the data section of every config, torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Which images to use."""

    source: str = field(default="fashion_mnist", metadata={"help": "data source: one of fashion_mnist, "
                                                                   "mnist_5k, image_folder, synthetic"})
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
