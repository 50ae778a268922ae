"""Retrain: a fresh, randomly initialised model trained on the replay data only, at every task.

``L = CE(f(x_r), y_r)``; all parameters train, the head included. It is the papers' oracle-style baseline
with the same (small) replay budget as every other method. Its H is computed against the pre-trained model
like every other row; the original's logged H used a random network as reference (docs/gs-lora.md#what-is-implemented).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ForgetkitError
from ..models import ForgetModel
from ..runtime import rng
from .base import Method, register_method


@register_method("retrain")
class Retrain(Method):
    """Retrain: a fresh random model trained on replay data only, each task."""

    default_lr = 3e-4
    requires = frozenset({"rebuildable"})

    def setup(self, model, request, data):
        if len(data.retain) == 0:
            raise ForgetkitError("retrain needs replay data of the retained classes; raise protocol.retain_ratio")
        seed = int(rng(self.ctx.seed, "retrain_init", request.index).initial_seed())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module = ForgetModel(model.spec).to(self.ctx.device)
        self.module.train()
        return self.module

    def training_step(self, batch, step):
        xr, yr = batch["retain"]
        loss = F.cross_entropy(self.module(xr, yr), yr)
        return {"loss": loss, "retain": loss}

    def finish(self):
        for param in self.module.parameters():
            param.requires_grad = False
        return self.module.eval()
