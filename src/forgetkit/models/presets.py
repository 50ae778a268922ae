"""Backbone presets: geometry, head, preprocessing, and where LoRA goes (targets and groups).

A preset is a tiny function returning a :class:`ModelSpec`, registered by name as timm registers its models.
Each spec declares its LoRA target layers (every block's FFN ``fc1``/``fc2``) and how parameters map to
group-lasso groups (one group per block), so no method ever hard-codes a depth or a layer path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import ForgetkitError
from ..registry import Registry

PRESETS: Registry = Registry("model preset")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; saved in each checkpoint's manifest."""

    arch: str = field(metadata={"help": "preset name this spec came from"})
    num_classes: int = field(metadata={"help": "outputs of the classifier head"})
    image_size: int = 28
    in_chans: int = 1
    patch_size: int = 7
    embed_dim: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = field(default=0.0, metadata={"help": "dropout on the patch+position embeddings, after "
                                                             "attention and in the MLP (training only); none on the "
                                                             "final pooled embedding"})
    norm_eps: float = field(default=1e-6, metadata={"help": "LayerNorm epsilon (timm's 1e-6; the Face Transformer "
                                                             "uses PyTorch's default 1e-5)"})
    attn_scale: str = field(default="head_dim", metadata={"help": "head_dim (standard) or model_dim (Face "
                                                                   "Transformer quirk)"})
    head: str = field(default="linear", metadata={"help": "linear, cosface, or prototype (a class-incremental "
                                                           "model's nearest-class-mean classifier)"})
    cosface_scale: float = 64.0
    cosface_margin: float = 0.35
    prototype_scale: float = field(default=16.0, metadata={
        "help": "prototype head: logits are this times the cosine to each class prototype (the argmax, cosine NCM, "
                "does not depend on it; a forgetting method's losses do)"})
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    lora_targets: str = field(default=r"backbone\.blocks\.\d+\.mlp\.fc[12]",
                              metadata={"help": "regex of the Linear layers that get LoRA (peft target_modules)"})
    group_pattern: str = field(default=r"backbone\.blocks\.(\d+)\.",
                               metadata={"help": "regex whose first group names a parameter's lasso group"})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ForgetkitError(f"model spec has unknown fields {unknown}; the checkpoint was written by another "
                                 f"version of forgetkit or is not a forgetkit checkpoint")
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", (0.5,))), tuple(d.get("std", (0.5,)))
        return cls(**d)

    @property
    def preprocess(self):
        from ..data import Preprocess

        return Preprocess(self.image_size, self.in_chans, tuple(self.mean), tuple(self.std))


def model_spec(arch: str, num_classes: int, **overrides) -> ModelSpec:
    """The spec of a registered preset, with any field overridden."""
    import difflib
    import typing

    from ..config import coerce

    spec = PRESETS.get(arch)(num_classes)
    hints = typing.get_type_hints(ModelSpec)
    for key, value in overrides.items():
        if key not in hints or key in ("arch", "num_classes"):
            names = [f.name for f in fields(ModelSpec) if f.name not in ("arch", "num_classes")]
            close = difflib.get_close_matches(key, names, n=1)
            raise ForgetkitError(f"unknown model field '{key}' for preset {arch}"
                                 + (f"; did you mean '{close[0]}'?" if close else f"; fields: {', '.join(names)}"))
        setattr(spec, key, coerce(value, hints[key], f"model field {key}"))
    return spec


@PRESETS.register("vit_fmnist")
def vit_fmnist(num_classes: int) -> ModelSpec:
    """Small ViT for 28×28 grey images: patch 7 (16 tokens), dim 128, depth 6, 4 heads (1.2 M parameters)."""
    return ModelSpec("vit_fmnist", num_classes, image_size=28, in_chans=1, patch_size=7, embed_dim=128, depth=6,
                     num_heads=4)


@PRESETS.register("vit_test")
def vit_test(num_classes: int) -> ModelSpec:
    """Tiny 2-block ViT for unit tests (16×16 grey input, dim 32)."""
    return ModelSpec("vit_test", num_classes, image_size=16, in_chans=1, patch_size=4, embed_dim=32, depth=2,
                     num_heads=2)


@PRESETS.register("face_vit_p8s8")
def face_vit_p8s8(num_classes: int) -> ModelSpec:
    """Face Transformer "ViT-P8S8" of GS-LoRA (docs/paper-settings.md, CASIA-100): 112 px RGB, patch 8, dim 512,
    depth 6, 8 heads, MLP 2048, no qkv bias, dropout 0.1, softmax scale dim**-0.5, CosFace head (s 64, m 0.35),
    input in [0,1]."""
    return ModelSpec("face_vit_p8s8", num_classes, image_size=112, in_chans=3, patch_size=8, embed_dim=512, depth=6,
                     num_heads=8, mlp_ratio=4.0, qkv_bias=False, drop_rate=0.1, norm_eps=1e-5,
                     attn_scale="model_dim", head="cosface", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@PRESETS.register("vit_b16")
def vit_b16(num_classes: int) -> ModelSpec:
    """ViT-B/16 at 224 px (timm ``vit_base_patch16_224`` / torchvision ``vit_b_16`` geometry), linear head."""
    return ModelSpec("vit_b16", num_classes, image_size=224, in_chans=3, patch_size=16, embed_dim=768, depth=12,
                     num_heads=12, mean=IMAGENET_MEAN, std=IMAGENET_STD)
