"""Data sources: where labelled images come from (Fashion-MNIST IDX files, image folders, synthetic images)."""

from .datasets import LabeledImages, Preprocess, TensorImages, FolderImages, DataSplits, UserImages, as_labeled
from .sources import SOURCES, DataConfig, load_data

__all__ = [
    "LabeledImages", "Preprocess", "TensorImages", "FolderImages", "DataSplits", "UserImages", "as_labeled", "SOURCES",
    "DataConfig", "load_data",
]
