"""Models: ViT backbones (timm) with a linear or CosFace head, presets, checkpoints and LoRA."""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module that defines it, imported on first use (PEP 562): importing the package loads no torch
_EXPORTS = {
    "PRESETS": "presets", "ModelSpec": "presets", "create_model": "vit", "model_spec": "presets",
    "ForgetModel": "vit", "CosFaceHead": "vit", "LinearHead": "vit", "save_model": "checkpoint",
    "load_model": "checkpoint", "load_external_weights": "checkpoint", "fingerprint": "checkpoint"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
