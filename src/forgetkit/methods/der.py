"""DER and DER++ (Buzzega et al.) as the papers' baselines (docs/baselines.md).

``DER:   L = CE(f(x_f), ỹ_f) + λ_der · Σ_batch ‖e(x_r) − e_T(x_r)‖²``
``DER++: L = DER + λ_plus · CE(f(x_r'), y_r')`` on a second, independently drawn replay batch (of the run's batch
size, from its own class-balanced stream; the original took the next batch of the same replay loader).

As in the papers' code the match is on embeddings (not logits) of a teacher copy, squared norm summed over the
batch, which is why the default weights are small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime import balanced_batches, rng
from .base import register_method
from .finetune import FullFinetune


@register_method("der")
class DER(FullFinetune):
    """DER: random wrong labels on forget data + match the teacher's embeddings of replay data."""

    uses_teacher = True
    default_lr = 1e-3

    def der_term(self, retain) -> torch.Tensor:
        xr, _ = retain
        with torch.no_grad():
            target = self.teacher.embed(xr)
        return (self.module.embed(xr) - target).pow(2).sum()

    def training_step(self, batch, step):
        forget, retain = batch["forget"], batch["retain"]
        xf = forget[0]
        losses = {"forget": self.wrong_label_ce(forget)}
        losses["der"] = self.der_term(retain) if retain else xf.new_zeros(())
        losses["loss"] = losses["forget"] + self.cfg.der_weight * losses["der"]
        return losses


@register_method("der_pp")
class DERPlusPlus(DER):
    """DER++: DER + CE on a second replay batch."""


    def before_training(self):
        self.second = balanced_batches(self.data.retain, self.ctx.batch_size,
                                       rng(self.ctx.seed, "second_replay", self.request.index), self.ctx.device)

    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        if self.second is not None:
            x2, y2 = next(self.second)
            losses["plus"] = F.cross_entropy(self.logits(x2, y2), y2)
            losses["loss"] = losses["loss"] + self.cfg.plus_weight * losses["plus"]
        return losses
