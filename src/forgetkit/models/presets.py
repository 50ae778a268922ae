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


TIMM_PREFIX = "timm:"
"""``timm:NAME``: any timm VisionTransformer by name, its geometry and preprocessing read from timm"""
TIMM_GEOMETRY = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "norm_eps", "attn_scale")
"""what a timm model's name fixes: an override of these is refused (image_size and in_chans are passed to timm)"""


def timm_spec(name: str, num_classes: int, image_size: int | None = None, in_chans: int | None = None) -> ModelSpec:
    """The spec of the timm VisionTransformer ``name`` (built on the meta device: no weights, no download): geometry
    from the built model, preprocessing from its pretrained config, LoRA on every Linear of the blocks' MLPs (found
    by name, not assumed to be ``fc1``/``fc2``), one lasso group per block."""
    import timm
    import torch
    from timm.data import resolve_data_config
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {k: v for k, v in (("img_size", image_size), ("in_chans", in_chans)) if v is not None}
    try:
        with torch.device("meta"):
            vit = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ForgetkitError(f"cannot build timm model {name!r} ({str(err).splitlines()[0]}); give a timm "
                             f"VisionTransformer name, e.g. timm:vit_small_patch16_224 (timm.list_models('vit_*') "
                             f"lists them)") from None
    if not isinstance(vit, VisionTransformer) or not len(vit.blocks):
        raise ForgetkitError(f"timm model {name!r} is a {type(vit).__name__}, not a VisionTransformer; forgetkit's "
                             f"methods edit the blocks of timm's VisionTransformer class (vit_*, deit_* and the "
                             f"like; docs/scaling.md)")
    block = vit.blocks[0]
    mlp = [n for n, m in block.mlp.named_children() if isinstance(m, torch.nn.Linear)]
    if not mlp or getattr(vit, "dist_token", None) is not None:
        raise ForgetkitError(f"timm model {name!r} has no Linear layers in its blocks' MLPs or a distillation "
                             f"token, which forgetkit cannot edit; choose a plain ViT")
    data = resolve_data_config({}, model=vit)  # mean and std of its pretrained weights (the size is the model's)
    first = getattr(block.mlp, "fc1", None) or getattr(block.mlp, mlp[0])
    return ModelSpec(f"{TIMM_PREFIX}{name}", num_classes, image_size=int(vit.patch_embed.img_size[0]),
                     in_chans=int(vit.patch_embed.proj.in_channels), patch_size=int(vit.patch_embed.patch_size[0]),
                     embed_dim=vit.embed_dim, depth=len(vit.blocks), num_heads=block.attn.num_heads,
                     mlp_ratio=first.out_features / vit.embed_dim, qkv_bias=block.attn.qkv.bias is not None,
                     norm_eps=float(getattr(block.norm1, "eps", 1e-6)), mean=tuple(data["mean"]),
                     std=tuple(data["std"]),
                     lora_targets=rf"backbone\.blocks\.\d+\.mlp\.({'|'.join(mlp)})")


def model_spec(arch: str, num_classes: int, **overrides) -> ModelSpec:
    """The spec of a registered preset, or of ``timm:NAME`` (:func:`timm_spec`), with any field overridden."""
    import difflib
    import typing

    from ..config import coerce

    if arch.startswith(TIMM_PREFIX):
        fixed = sorted(set(overrides) & set(TIMM_GEOMETRY))
        if fixed:
            raise ForgetkitError(f"{', '.join(fixed)} of {arch} are fixed by the timm model; choose another timm "
                                 f"name instead of overriding them")
        spec = timm_spec(arch[len(TIMM_PREFIX):], num_classes, overrides.pop("image_size", None),
                         overrides.pop("in_chans", None))
    else:
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
