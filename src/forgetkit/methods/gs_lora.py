"""GS-LoRA: group-sparse LoRA for continual forgetting (Zhao et al., CVPR 2024; T-PAMI 2026).

Loss per step (docs/gs-lora.md#what-is-implemented)::

    L = β_t · ReLU(BND − CE(f(x_f), y_f)) + CE(f(x_r), y_r) + α(step) · Σ_blocks sqrt(Σ ||A||² + ||B||²)
        [+ γ · mean_f −log(1 − p(every class forgotten so far | x_f))]      (forgetkit's term, off in the paper)

LoRA (scaling 1/8; rank 4 by default, the paper's 8 in its presets) on every block's FFN fc1 and fc2, only LoRA
trains; the update is merged into the
weights after each task and fresh adapters start the next one. ``α`` is 0 during a warm-up of some steps: from
a zero ``B`` the lasso otherwise shrinks ``A`` before the task loss can use it, and whole blocks collapse at
random (docs/gs-lora.md#defaults-and-presets), which is the warm-up the original ``--warmup_alpha`` adds.

``lasso_update: proximal`` (the default) takes the lasso out of the loss and applies its proximal operator after
each optimiser step instead (each group shrinks by lr·α·√(its size) in norm, small groups become exactly zero);
``gradient`` is the paper's loss term. The defaults were chosen on three datasets' validation splits; see
docs/gs-lora.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import BUDGET_HINT, ForgetkitError
from ..losses import (
    bounded_forget_loss,
    class_mass_loss,
    class_mean_gap,
    feature_relabel_loss,
    group_lasso,
    group_norms,
    group_soft_threshold,
)
from ..models.checkpoint import fingerprint
from ..models.lora import add_lora, lora_groups, merge_lora, save_adapter
from .base import Method, register_method
from .configs import GSLoRAConfig


@register_method("gs_lora")
class GSLoRA(Method):
    """GS-LoRA: group-sparse LoRA on every FFN, bounded forgetting + retention, merged after each task."""

    default_lr = 1e-2
    requires = frozenset({"lora_targets"})
    fix_hint = f"{BUDGET_HINT} or -o method.alpha=0 (docs/gs-lora.md)"

    def __init__(self, cfg: GSLoRAConfig, ctx):
        super().__init__(cfg, ctx)
        if not cfg.beta:
            raise ForgetkitError("method.beta is empty; give one β per task (or one for all)")

    def setup(self, model, request, data):
        self.request, self.data = request, data
        self.beta = self.cfg.beta[min(request.index, len(self.cfg.beta) - 1)]
        self.replay_logit_weight = (self.cfg.replay_logit_weight if self.cfg.replay_logit_weight is not None
                                    else 1.0 if request.missing else 0.0)
        self.base_fingerprint = fingerprint(model)
        self.module = add_lora(model, self.cfg.lora)
        self.groups = lora_groups(self.module, model.spec.group_pattern, self.cfg.grouping)
        self.module.train()
        return self.module

    def alpha_at(self, step: int) -> float:
        return 0.0 if step < self.cfg.alpha_warmup_steps else self.cfg.alpha

    def training_step(self, batch, step):
        forget, retain = batch["forget"], batch["retain"]
        xf, yf = forget
        xr, yr = retain if retain is not None else (xf[:0], yf[:0])
        # One forward for both streams (LoRA is active inside the wrapped model's layers); labels go to the head
        # (CosFace applies its margin, a linear head ignores them).
        inner = self.module.base_model.model
        emb = inner.embed(torch.cat([xf, xr]))
        logits = inner.head(emb, torch.cat([yf, yr]))
        forget_loss = bounded_forget_loss(logits[: len(xf)], yf, self.cfg.bnd, self.cfg.bound_per_sample)
        retain_loss = F.cross_entropy(logits[len(xf):], yr) if len(xr) else logits.new_zeros(())
        # every class forgotten so far: this request's and the earlier ones'
        forgotten_mass = (class_mass_loss(logits[: len(xf)], self.request.classes + self.request.old)
                          if self.cfg.forgotten_mass_weight else logits.new_zeros(()))
        loss = self.beta * forget_loss + retain_loss + self.cfg.forgotten_mass_weight * forgotten_mass
        replay_logits = logits.new_zeros(())
        if self.replay_logit_weight and len(xr):
            with torch.no_grad(), self.module.disable_adapter():  # the model before the request: LoRA off
                before = inner.head(inner.embed(xr), yr)
            replay_logits = F.mse_loss(logits[len(xf):], before)
            loss = loss + self.replay_logit_weight * replay_logits
        forget_features = logits.new_zeros(())
        if self.cfg.forget_feature_weight and len(xr):
            # Class means, not images: pulling each image to one point left the classes as separable as before
            # (a standardising probe undoes a uniform shrink); classes whose means coincide a linear probe cannot
            # tell apart (docs/verify.md).
            forget_features = class_mean_gap(emb[: len(xf)], yf, emb[len(xf):])
            loss = loss + self.cfg.forget_feature_weight * forget_features
        forget_relabel = logits.new_zeros(())
        if self.cfg.forget_relabel_weight and len(xr):
            # Each forget image's target: the embedding, before the request (LoRA off), of the replay image nearest to
            # its own: the forgotten images then land on the retained classes they resemble, as in a model that
            # never learnt them (re-drawn random targets collapse them onto the replay mean, which a probe finds).
            with torch.no_grad(), self.module.disable_adapter():
                teacher = inner.embed(torch.cat([xf, xr]))
            nearest = (F.normalize(teacher[: len(xf)], dim=1) @ F.normalize(teacher[len(xf):], dim=1).T).argmax(1)
            forget_relabel = feature_relabel_loss(emb[: len(xf)], teacher[len(xf):][nearest])
            loss = loss + self.cfg.forget_relabel_weight * forget_relabel
        if self.cfg.lasso_update == "gradient":
            structure = group_lasso(self.groups.values())
            loss = loss + self.alpha_at(step) * structure
        else:  # step() applies the lasso as a proximal step; the value is only reported (no gradient: √0 at zero)
            with torch.no_grad():
                structure = group_lasso(self.groups.values())
        losses = {"loss": loss, "forget": forget_loss, "retain": retain_loss, "forgotten_mass": forgotten_mass,
                  "replay_logits": replay_logits, "forget_features": forget_features,
                  "forget_relabel": forget_relabel,
                  "structure": structure}
        return self.extra_terms(losses, emb[: len(xf)], yf, emb[len(xf):], yr)

    def step(self, batch, step, optimizer):
        losses = super().step(batch, step, optimizer)
        alpha = self.alpha_at(step)
        if self.cfg.lasso_update == "proximal" and alpha > 0:
            # The proximal step of lr·α·Σ||g||: unlike the sub-gradient (whose direction Adam rescales per
            # coordinate), it sets the groups the task does not need exactly to zero.
            group_soft_threshold(self.groups.values(), optimizer.param_groups[0]["lr"] * alpha)
        return losses

    def extra_terms(self, losses, emb_forget, yf, emb_retain, yr):
        """Hook for GS-LoRA++'s prototype terms; GS-LoRA adds nothing."""
        return losses

    def request_stats(self):
        norms = group_norms(self.groups)
        kept = [name for name, value in norms.items() if value >= self.cfg.zero_threshold]
        return {
            "group_norms": norms,
            "groups_zeroed": len(norms) - len(kept),
            "num_groups": len(norms),
            # what the edit needs to store: the factors of the blocks it did not zero
            "edit_bytes": sum(p.numel() * p.element_size() for name in kept for p in self.groups[name]),
        }

    def save_edit(self, directory: Path):
        save_adapter(self.module, directory, self.base_fingerprint, request=self.request.index,
                     forget_classes=self.request.classes, merged_into_model=True)
        return True

    def finish(self):
        return merge_lora(self.module)
