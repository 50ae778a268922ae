"""Zero-shot CLIP class forgetting (text-image space adaptation) and the small CLIP of the embedded demo.

A CLIP checkpoint runs through forgetkit's runner like any model (``forgetkit forget --model builtin:clip_fmnist``):
it becomes a :class:`ZeroShotClassifier` over the data's classes, and the ``clip_text`` method forgets in text space.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module that defines it, imported on first use (PEP 562): importing the package loads no torch
_EXPORTS = {
    "CLIP_PRESETS": "model", "ClipBundle": "model", "create_clip": "model", "load_clip": "model", "save_clip": "model",
    "NameList": "names", "builtin_names": "names", "read_names": "names", "ClipPretrainConfig": "config",
    "pretrain_clip": "pretrain", "ZeroShotClassifier": "classifier", "ProjectionLoRA": "text_forget",
    "TextForgetConfig": "config", "empty_prompt_target": "text_forget",
    "forget_text_classes": "text_forget", "text_forget_loss": "text_forget"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
