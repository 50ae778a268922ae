"""Data sources: where labelled images come from (Fashion-MNIST IDX files, image folders, synthetic images)."""

from __future__ import annotations

import importlib

# public name -> module that defines it, imported on first use (PEP 562): importing the package loads no torch
_EXPORTS = {
    "LabeledImages": "datasets", "Preprocess": "datasets", "TensorImages": "datasets", "FolderImages": "datasets",
    "DataSplits": "datasets", "UserImages": "datasets", "as_labeled": "datasets", "SOURCES": "sources",
    "load_data": "sources", "DataConfig": "config"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
