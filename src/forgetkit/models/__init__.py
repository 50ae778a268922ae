"""Models: ViT backbones (timm) with a linear or CosFace head, presets, checkpoints and LoRA."""

from .presets import PRESETS, ModelSpec, create_model, model_spec
from .vit import ForgetModel, CosFaceHead, LinearHead
from .checkpoint import save_model, load_model, load_external_weights, fingerprint

__all__ = [
    "PRESETS", "ModelSpec", "create_model", "model_spec", "ForgetModel", "CosFaceHead", "LinearHead",
    "save_model", "load_model", "load_external_weights", "fingerprint",
]
