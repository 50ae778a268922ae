"""Zero-shot CLIP class forgetting in text space (Kravets & Namboodiri, TMLR 2025), as a forgetkit method.

No image and no minibatch loop: the method overrides :meth:`Method.fit` and adapts the CLIP's text projection with a
LoRA update trained on text features of names (``forgetkit.clip.text_forget`` has the loss, the empty-prompt target
and the retry rule). The retain set is the related-name list of the dataset (shipped for the embedded datasets, or
``names``). The edit the ledger keeps is the new projection.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..io import load_weights, save_weights
from ..runtime import rng
from .base import Method, register_method


@register_method("clip_text")
class ClipText(Method):
    """Zero-shot CLIP: LoRA on the text projection, trained on names only (no images)."""

    supports = frozenset({"forget"})
    requires = frozenset({"text_projection"})
    edit_type = "text_projection"

    def fit(self, model, request, data, train_steps):
        from ..clip.names import read_names
        from ..clip.text_forget import forget_text_classes

        self.model, self.request = model, request
        forget = [model.classes[c] for c in request.classes]
        names = read_names(self.cfg.names, model.classes) if self.cfg.names else model.names
        retain = names.retain_names(model.classes, forget)
        self.projection, self.info = forget_text_classes(model.bundle, forget, retain, model.classes, self.cfg,
                                                         rng(self.ctx.seed, "clip_targets", request.index))
        self.info["retain_names"] = retain
        model.set_text_projection(self.projection)

    def trainable_count(self):
        return self.info["trainable_params"]

    def request_stats(self):
        return {k: v for k, v in self.info.items() if k not in ("seconds", "trainable_params")}

    def save_edit(self, directory: Path) -> bool:
        save_weights(directory / "text_projection.safetensors", {"text_projection": self.projection})
        return True

    @staticmethod
    def apply_edit(model, directory: Path):
        model.set_text_projection(load_weights(Path(directory) / "text_projection.safetensors")["text_projection"])
        return model

    def finish(self) -> torch.nn.Module:
        return self.model
