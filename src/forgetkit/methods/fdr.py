"""FDR (function-distance regularisation, Benjamin et al.) as the papers' baseline.

``L = CE(f(x_f), ỹ_f) + λ · mean_i ‖f(x_r,i) − f_T(x_r,i)‖₂`` (L2 distance of logit vectors, not squared).
"""

from __future__ import annotations

import torch

from .base import register_method
from .finetune import FullFinetune


@register_method("fdr")
class FDR(FullFinetune):
    """FDR: random wrong labels on forget data + L2 distance to the teacher's replay logits."""

    uses_teacher = True
    default_lr = 1e-3

    def training_step(self, batch, step):
        forget, retain = batch["forget"], batch["retain"]
        xf = forget[0]
        losses = {"forget": self.wrong_label_ce(forget)}
        if retain is None:
            losses["fdr"] = xf.new_zeros(())
        else:
            xr, yr = retain
            with torch.no_grad():
                target = self.teacher(xr, yr)
            losses["fdr"] = (self.logits(xr, yr) - target).norm(dim=1).mean()
        losses["loss"] = losses["forget"] + self.cfg.fdr_weight * losses["fdr"]
        return losses
