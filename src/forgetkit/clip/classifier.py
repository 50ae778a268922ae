"""A CLIP as a classifier over any list of class names, for forgetkit's runner.

``ZeroShotClassifier`` is the image tower plus a zero-shot head: the normalised prompt embeddings of the classes
("a photo of a {}."), times CLIP's logit scale. Both ways of forgetting edit it in place:

* text-space forgetting (``clip_text``, no images) changes the text projection, so the head is recomputed;
* GS-LoRA on the image tower (with images) puts LoRA on every block's MLP (``c_fc``, ``c_proj``), one lasso group
  per block, and merges it into the tower.

Image features are cached per dataset while the image tower is unchanged (its fingerprint is the key): text-space
forgetting never touches the tower, so every evaluation after the first is a matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import LabeledImages, Preprocess
from ..models.checkpoint import fingerprint
from ..runtime import inference_loader
from .model import ClipBundle, load_clip, save_clip
from .names import NameList, shipped_names
from .zeroshot import class_weights, projection, set_projection


@dataclass(frozen=True)
class ClipClassifierSpec:
    """What forgetkit's methods read from a model's ``spec``."""

    num_classes: int
    preprocess: Preprocess
    lora_targets: str = r"clip\.visual\.transformer\.resblocks\.\d+\.mlp\.c_(fc|proj)"
    group_pattern: str = r"clip\.visual\.transformer\.resblocks\.(\d+)\."


class ZeroShotClassifier(torch.nn.Module):
    """``scale · cos(image embedding, class prompt embedding)`` over ``classes``; labels are ignored."""

    def __init__(self, bundle: ClipBundle, classes: list[str], names: NameList | None = None):
        super().__init__()
        self.clip = bundle.model
        self.bundle = bundle
        self.use_classes(classes, names)

    def use_classes(self, classes: list[str], names: NameList | None = None, dataset: str | None = None) -> None:
        """Classify over ``classes``; ``names`` are related names per class (text-space forgetting keeps them)."""
        self.classes = list(classes)
        self.names = names or (shipped_names(dataset, self.classes) if dataset else NameList({}, []))
        self.spec = ClipClassifierSpec(num_classes=len(self.classes), preprocess=self.bundle.preprocess)
        self._weights = None
        self._features: dict = {}

    # ---- the text side
    def text_projection(self) -> torch.Tensor:
        return projection(self.clip)[0].clone()

    def set_text_projection(self, matrix: torch.Tensor) -> None:
        set_projection(self.clip, matrix)
        self._weights = None

    def class_weights(self, classes: list[str] | None = None) -> torch.Tensor:
        if classes is not None:
            return class_weights(self.bundle, classes)
        if self._weights is None:
            self._weights = class_weights(self.bundle, self.classes)
        return self._weights

    # ---- the image side
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(x), dim=-1)

    def head(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.class_weights().to(emb.device)
        return self.clip.logit_scale.detach().exp() * emb @ weights.T

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x), labels)

    @torch.no_grad()
    def image_features(self, images: LabeledImages, batch_size: int = 256) -> torch.Tensor:
        key = (id(images), len(images), fingerprint(self.clip.visual))
        if key not in self._features:
            images.with_preprocess(self.bundle.preprocess)
            device = next(self.clip.parameters()).device
            loader = inference_loader(images, batch_size, device)
            was_training = self.training
            self.eval()
            self._features = {k: v for k, v in self._features.items() if k[2] == key[2]}  # drop a stale tower's
            self._features[key] = torch.cat([self.embed(x).float().cpu() for x, _ in loader])
            self.train(was_training)
        return self._features[key]

    @torch.no_grad()
    def predict(self, images: LabeledImages, classes: list[str] | None = None) -> torch.Tensor:
        """Top-1 zero-shot prediction for every image of ``images`` over ``classes`` (default: the model's)."""
        return (self.image_features(images) @ self.class_weights(classes).cpu().T).argmax(dim=1)

    def save_checkpoint(self, directory: str | Path, classes: list[str], **extra) -> Path:
        """Save the edited CLIP in float32 (rounding an edit to float16 would save another model than the one
        evaluated); its fingerprint is this classifier's, as the ledger records it."""
        return save_clip(self.bundle, directory, "float32", **{**extra, "fingerprint": fingerprint(self)})


def load_zero_shot_clip(source: Path, arch: str | None = None) -> tuple[ZeroShotClassifier, dict]:
    """A CLIP checkpoint (or a local open_clip / OpenAI state-dict file; ``arch`` names its open_clip architecture,
    None: OpenAI format) as a zero-shot classifier, with its manifest. It classifies any class names, so it takes the
    data's classes (``classes: None``)."""
    model = ZeroShotClassifier(load_clip(source, arch), [])
    return model, {**model.bundle.manifest, "classes": None, "fingerprint": fingerprint(model)}
