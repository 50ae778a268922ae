"""LwF (Li & Hoiem), as the papers' baseline: random wrong labels on forget data, distillation and CE on replay.

``L = CE(f(x_f), ỹ_f) + λ_kd · T²·KL(f_T(x_r)/T ‖ f(x_r)/T) + λ_remain · CE(f(x_r), y_r)``

The original's KD term was identically zero (log of a log-softmax, NaNs zeroed); here it is the real term.
``faithful_zero_kd: true`` drops it, which is what the published LwF rows measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_method
from .finetune import FullFinetune, kd_loss


@register_method("lwf")
class LwF(FullFinetune):
    """LwF: random wrong labels on forget data + distillation and CE on replay data."""

    uses_teacher = True

    def training_step(self, batch, step):
        forget, retain = batch["forget"], batch["retain"]
        xf = forget[0]
        losses = {"forget": self.wrong_label_ce(forget)}
        if retain is None:
            zero = xf.new_zeros(())
            losses.update(kd=zero, retain=zero)
        else:
            xr, yr = retain
            student = self.logits(xr, yr)
            with torch.no_grad():
                teacher = self.teacher(xr, yr)
            losses["kd"] = xf.new_zeros(()) if self.cfg.faithful_zero_kd else kd_loss(student, teacher,
                                                                                       self.cfg.temperature)
            losses["retain"] = F.cross_entropy(student, yr)
        losses["loss"] = (losses["forget"] + self.cfg.kd_weight * losses["kd"]
                          + self.cfg.retain_weight * losses["retain"])
        return losses
