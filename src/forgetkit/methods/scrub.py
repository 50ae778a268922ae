"""SCRUB and SCRUB-S (Kurmanji et al.), as the papers' baselines (gs-lora.md §5).

Per step, during the first ``max_epochs`` epochs a *max* pass on the forget batch, then always a *min* pass on
the replay batch, each its own optimiser step (Adam, weight decay 5e-4)::

    max: −KD_T(f(x_f), f_T(x_f))                      + p · Σ_θ ‖θ − θ_swa‖_F
    min:  γ · CE(f(x_r), y_r) + α · KD_T(f(x_r), f_T(x_r)) + p · Σ_θ ‖θ − θ_swa‖_F

with original labels (no relabelling). SCRUB-S adds the smoothing term (p > 0) towards an exponential average of
the weights (θ_swa ← 0.9·θ_swa + 0.1·θ once per epoch). The original runs whole max and min passes over the two
loaders per inner epoch; here they alternate per step, which gives both the same number of updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import register_method
from .finetune import FinetuneConfig, FullFinetune, kd_loss


@dataclass
class SCRUBConfig(FinetuneConfig):
    """SCRUB hyper-parameters (paper: T 2, γ 0.99, α 1e-3, Adam lr 1e-4, wd 5e-4)."""

    temperature: float = 2.0
    gamma: float = field(default=0.99, metadata={"help": "γ: weight of the replay CE in the min pass"})
    kd_alpha: float = field(default=1e-3, metadata={"help": "α: weight of the replay KD in the min pass"})
    smoothing: float = field(default=0.0, metadata={"help": "p: pull towards the weight average (SCRUB-S > 0)"})
    max_epochs: int | None = field(default=None, metadata={
        "help": "epochs with max passes (null = the first half, as 5 of the original's 10 inner epochs)"})
    adam_weight_decay: float = field(default=5e-4, metadata={"help": "Adam's L2 weight decay"})


@dataclass
class SCRUBSConfig(SCRUBConfig):
    """SCRUB-S: SCRUB with smoothing (paper: face continual p 0.1; single-step and ImageNet 0.05)."""

    smoothing: float = field(default=0.1, metadata={"help": "p: pull towards the weight average"})


@register_method("scrub")
class SCRUB(FullFinetune):
    """SCRUB: alternate max (diverge from the teacher on forget data) and min (replay) passes."""

    config_cls = SCRUBConfig
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
            teacher = self.teacher(xf)
        loss = -kd_loss(self.module(xf), teacher, self.cfg.temperature)
        return loss + self.cfg.smoothing * self.smoothing_term() if self.cfg.smoothing else loss

    def min_loss(self, retain) -> torch.Tensor:
        xr, yr = retain
        student = self.module(xr, yr)
        with torch.no_grad():
            teacher = self.teacher(xr, yr)
        loss = self.cfg.gamma * F.cross_entropy(student, yr) + self.cfg.kd_alpha * kd_loss(
            student, teacher, self.cfg.temperature)
        return loss + self.cfg.smoothing * self.smoothing_term() if self.cfg.smoothing else loss

    def max_active(self, epoch: int) -> bool:
        limit = self.cfg.max_epochs if self.cfg.max_epochs is not None else math.ceil(self.ctx.epochs / 2)
        return epoch < limit

    def end_epoch(self, epoch):
        with torch.no_grad():  # the weight average moves once per epoch
            for name, param in self.module.named_parameters():
                if name in self.swa:
                    self.swa[name].mul_(0.9).add_(param.detach(), alpha=0.1)

    def step(self, forget, retain, epoch, optimizer):
        losses = {}
        if self.max_active(epoch):
            losses["max"] = self.max_loss(forget)
            self.apply(losses["max"], optimizer)
        if retain is not None:
            losses["min"] = self.min_loss(retain)
            self.apply(losses["min"], optimizer)
        losses["loss"] = sum(v.detach() for v in losses.values())
        return losses

    def training_step(self, forget, retain, epoch):
        """The two passes' losses at the current weights (for inspection; :meth:`step` optimises them)."""
        losses = {"max": self.max_loss(forget)}
        if retain is not None:
            losses["min"] = self.min_loss(retain)
        losses["loss"] = sum(losses.values())
        return losses


@register_method("scrub_s")
class SCRUBS(SCRUB):
    """SCRUB-S: SCRUB with smoothing towards a running average of the weights."""

    config_cls = SCRUBSConfig
