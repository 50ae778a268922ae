"""Models: ViT backbones (timm) with a linear or CosFace head, presets, checkpoints and LoRA."""

from __future__ import annotations

import importlib

# public name -> module that defines it, imported on first use (PEP 562): importing the package loads no torch
_EXPORTS = {
    "PRESETS": "presets", "ModelSpec": "presets", "create_model": "presets", "model_spec": "presets",
    "ForgetModel": "vit", "CosFaceHead": "vit", "LinearHead": "vit", "save_model": "checkpoint",
    "load_model": "checkpoint", "load_external_weights": "checkpoint", "fingerprint": "checkpoint"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
