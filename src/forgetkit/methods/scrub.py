"""SCRUB and SCRUB-S (Kurmanji et al.), as the papers' baselines (docs/baselines.md).

Per step, during the first ``max_steps`` steps a *max* pass on the forget batch, then always a *min* pass on
the replay batch, each its own optimiser step (Adam, weight decay 5e-4)::

    max: −KD_T(f(x_f), f_T(x_f))                      + p · Σ_θ ‖θ − θ_swa‖_F
    min:  γ · CE(f(x_r), y_r) + α · KD_T(f(x_r), f_T(x_r)) + p · Σ_θ ‖θ − θ_swa‖_F

with original labels (no relabelling); a CosFace head applies its margin at the true label in both passes, as
the original does. SCRUB-S adds the smoothing term (p > 0) towards an exponential average of the weights
(θ_swa ← 0.9·θ_swa + 0.1·θ, ten times per request, as the original's ten super-epochs).

Counts differ from the original, which runs whole passes over its two loaders: per super-epoch 5 max passes over
the forget loader and 10 min passes over the replay loader, i.e. max : min updates = N_f : 2·N_r batches, a ratio
set by the sizes of the two datasets (500 : 4,000 for 10 and 40 batches). Here the budget is a number of steps:
one max and one min update per step in the first half, min updates only in the second, i.e. 1 : 2 whatever the
data sizes (docs/baselines.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import register_method
from .finetune import FullFinetune, kd_loss


@register_method("scrub")
class SCRUB(FullFinetune):
    """SCRUB: alternate max (diverge from the teacher on forget data) and min (replay) passes."""

    uses_teacher = True

    def make_optimizer(self, lr, weight_decay):
        return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.cfg.adam_weight_decay)

    def before_training(self):
        self.swa = {n: p.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def smoothing_term(self) -> torch.Tensor:
        terms = [(p - self.swa[n]).norm() for n, p in self.module.named_parameters() if p.requires_grad]
        return torch.stack(terms).sum()

    def max_loss(self, forget) -> torch.Tensor:
        xf, yf = forget
        with torch.no_grad():
            teacher = self.teacher(xf, yf)
        loss = -kd_loss(self.module(xf, yf), teacher, self.cfg.temperature)
        return loss + self.cfg.smoothing * self.smoothing_term() if self.cfg.smoothing else loss

    def min_loss(self, retain) -> torch.Tensor:
        xr, yr = retain
        student = self.module(xr, yr)
        with torch.no_grad():
            teacher = self.teacher(xr, yr)
        loss = self.cfg.gamma * F.cross_entropy(student, yr) + self.cfg.kd_alpha * kd_loss(
            student, teacher, self.cfg.temperature)
        return loss + self.cfg.smoothing * self.smoothing_term() if self.cfg.smoothing else loss

    def max_active(self, step: int) -> bool:
        limit = self.cfg.max_steps if self.cfg.max_steps is not None else math.ceil(self.ctx.steps / 2)
        return step < limit

    def end_step(self, step):
        if not self.every(step, math.ceil(self.ctx.steps / 10)):
            return
        with torch.no_grad():  # the weight average moves ten times per request (the original's super-epochs)
            for name, param in self.module.named_parameters():
                if name in self.swa:
                    self.swa[name].mul_(0.9).add_(param.detach(), alpha=0.1)

    def step(self, batch, step, optimizer):
        retain = batch["retain"]
        losses = {}
        if self.max_active(step):
            losses["max"] = self.update(lambda part: {"loss": self.max_loss(part["forget"])}, batch,
                                        optimizer)["loss"]
        if retain is not None:
            losses["min"] = self.update(lambda part: {"loss": self.min_loss(part["retain"])}, batch,
                                        optimizer)["loss"]
        losses["loss"] = sum(v.detach() for v in losses.values())
        return losses

    def training_step(self, batch, step):
        """The two passes' losses at the current weights (for inspection; :meth:`step` optimises them)."""
        forget, retain = batch["forget"], batch["retain"]
        losses = {"max": self.max_loss(forget)}
        if retain is not None:
            losses["min"] = self.min_loss(retain)
        losses["loss"] = sum(losses.values())
        return losses


@register_method("scrub_s")
class SCRUBS(SCRUB):
    """SCRUB-S: SCRUB with smoothing towards a running average of the weights."""

