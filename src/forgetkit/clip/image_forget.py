"""GS-LoRA on CLIP's image tower (beyond the paper): forgetting with images, for comparison with text-space
forgetting.

CLIP's image tower plus a zero-shot head (the frozen, normalised prompt embeddings of the dataset's classes, scaled
by CLIP's logit scale) is a classifier like any other for forgetkit's engine: GS-LoRA puts LoRA on every block's
MLP (``c_fc``, ``c_proj``), one lasso group per block, and merges the update into the tower after each task. The
text tower is untouched, so other datasets are classified by the edited image tower with their own prompts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import Preprocess
from .model import ClipBundle
from .zeroshot import class_weights


@dataclass(frozen=True)
class ClipClassifierSpec:
    """What forgetkit's methods read from a model's ``spec``."""

    num_classes: int
    preprocess: Preprocess
    lora_targets: str = r"visual\.transformer\.resblocks\.\d+\.mlp\.c_(fc|proj)"
    group_pattern: str = r"visual\.transformer\.resblocks\.(\d+)\."


class ZeroShotHead(torch.nn.Module):
    """``scale · cos(image, prompt embedding)`` over fixed class prompt embeddings; labels are ignored."""

    def __init__(self, weights: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("weights", weights.detach().clone())
        self.scale = scale

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * emb @ self.weights.T


class ClipImageClassifier(torch.nn.Module):
    """A copy of a CLIP's image tower with a zero-shot head over ``classes``."""

    def __init__(self, bundle: ClipBundle, classes: list[str]):
        super().__init__()
        self.visual = copy.deepcopy(bundle.model.visual)
        self.head = ZeroShotHead(class_weights(bundle, classes), float(bundle.model.logit_scale.detach().exp()))
        self.spec = ClipClassifierSpec(num_classes=len(classes), preprocess=bundle.preprocess)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x), labels)
