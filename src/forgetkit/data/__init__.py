"""Data sources: where labelled images come from (Fashion-MNIST IDX files, image folders, synthetic images)."""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module that defines it, imported on first use (PEP 562): importing the package loads no torch
_EXPORTS = {
    "LabeledImages": "datasets", "Preprocess": "datasets", "TensorImages": "datasets", "FolderImages": "datasets",
    "DataSplits": "datasets", "UserImages": "datasets", "as_labeled": "datasets", "SOURCES": "sources",
    "load_data": "sources", "DataConfig": "config"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
