"""The classifier forgetkit edits: a timm VisionTransformer body and a linear or CosFace head."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .presets import TIMM_PREFIX, ModelSpec, model_spec


class LinearHead(nn.Module):
    """Plain linear classifier; ``labels`` is accepted and ignored so every head has one signature."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(emb)


class CosFaceHead(nn.Module):
    """CosFace (large-margin cosine) head: ``s·cos(θ_j)``, and ``s·(cos(θ_y) − m)`` for the true class.

    The margin is applied only when labels are given (training, or the original code's margin-penalised accuracy);
    plain inference returns ``s·cos`` so prediction never needs the label.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35):
        super().__init__()
        self.scale, self.margin = scale, margin
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight))
        if labels is not None:
            cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * cos


class PrototypeHead(nn.Module):
    """Cosine nearest-class-mean classifier: ``s·cos(emb, p_c)`` for each class prototype ``p_c`` (the mean embedding
    of the class's training images, stored un-normalised), so the argmax is LoRA-Sub-DRS's NCM prediction. A model
    that has learnt no class yet has no rows and predicts nothing."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.scale = scale
        self.prototypes = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.scale * F.linear(F.normalize(emb), F.normalize(self.prototypes))
        # A forgotten class keeps a zero row (cosine 0 to everything): below every real class, not above those
        # with a negative cosine; finite, so a softmax or a distillation over the logits stays defined.
        forgotten = self.prototypes.detach().abs().sum(dim=1) == 0
        return logits.masked_fill(forgotten, -2.0 * self.scale) if forgotten.any() else logits


class ForgetModel(nn.Module):
    """ViT classifier with an ``embed`` method (the pooled feature) and a head taking optional labels."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.backbone = _timm_backbone(spec) if spec.arch.startswith(TIMM_PREFIX) else VisionTransformer(
            img_size=spec.image_size, patch_size=spec.patch_size, in_chans=spec.in_chans, num_classes=0,
            embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio,
            # timm's drop_rate is only the dropout on the pooled embedding (head_drop), which the Face Transformer
            # does not have; the spec's drop_rate is the embedding-input, attention-output and MLP dropout.
            qkv_bias=spec.qkv_bias, drop_rate=0.0, pos_drop_rate=spec.drop_rate,
            proj_drop_rate=spec.drop_rate, norm_layer=partial(nn.LayerNorm, eps=spec.norm_eps),
            global_pool="token", class_token=True,
        )
        if spec.attn_scale == "model_dim":
            # Face Transformer quirk (docs/paper-settings.md, CASIA-100): softmax scale dim**-0.5, not
            # head_dim**-0.5. timm's fused attention ignores `scale`, so the explicit path is used.
            for block in self.backbone.blocks:
                block.attn.fused_attn = False
                block.attn.scale = spec.embed_dim ** -0.5
        if spec.head == "cosface":
            self.head = CosFaceHead(spec.embed_dim, spec.num_classes, spec.cosface_scale, spec.cosface_margin)
        elif spec.head == "prototype":
            self.head = PrototypeHead(spec.embed_dim, spec.num_classes, spec.prototype_scale)
        else:
            self.head = LinearHead(spec.embed_dim, spec.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x), labels)

    # The two halves used by split-network methods (LIRF): lower(x) gives the tokens after the first `split`
    # blocks, upper(tokens) finishes the forward pass; upper(lower(x)) == forward(x).
    def lower(self, x: torch.Tensor, split: int) -> torch.Tensor:
        vit = self.backbone
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for block in vit.blocks[:split]:
            x = block(x)
        return x

    def upper_embed(self, tokens: torch.Tensor, split: int) -> torch.Tensor:
        """The pooled embedding from the tokens after the first ``split`` blocks."""
        vit = self.backbone
        for block in vit.blocks[split:]:
            tokens = block(tokens)
        return vit.forward_head(vit.norm(tokens), pre_logits=True)

    def upper(self, tokens: torch.Tensor, split: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.upper_embed(tokens, split), labels)

    def upper_modules(self, split: int) -> list[nn.Module]:
        """The modules of the upper half (blocks ``split:``, final norm, pooling, head)."""
        vit = self.backbone
        return list(vit.blocks[split:]) + [vit.norm, vit.fc_norm, vit.head_drop, self.head]

    def lower_parameter_names(self, split: int) -> set[str]:
        """Parameters of the lower half: patch embedding, class token, positions and the first `split` blocks."""
        prefixes = ("backbone.patch_embed.", "backbone.cls_token", "backbone.pos_embed", "backbone.reg_token") + tuple(
            f"backbone.blocks.{i}." for i in range(split))
        return {n for n, _ in self.named_parameters() if n.startswith(prefixes)}


def _timm_backbone(spec: ModelSpec) -> nn.Module:
    """The body of a ``timm:NAME`` spec: timm's own model (its blocks, norms, tokens and pooling), without head,
    random weights (a checkpoint's are loaded after), with the spec's dropout as for the presets."""
    import timm

    return timm.create_model(spec.arch[len(TIMM_PREFIX):], pretrained=False, num_classes=0,
                             img_size=spec.image_size, in_chans=spec.in_chans, drop_rate=0.0,
                             pos_drop_rate=spec.drop_rate, proj_drop_rate=spec.drop_rate)


def create_model(arch: str, num_classes: int, **overrides) -> ForgetModel:
    """Build a randomly initialised model of a preset (``forgetkit.create_model("vit_fmnist", 10)``)."""
    return ForgetModel(model_spec(arch, num_classes, **overrides))
