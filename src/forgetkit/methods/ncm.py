"""Two reference points of class-incremental learning: prototypes on frozen features (no training at all), and
joint training on every class seen so far (an upper bound, since it reads the old classes' images)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import class_means
from .base import register_method
from .incremental import LearnMethod, attach_kv_lora, detach_kv_lora, stack_factors


@register_method("ncm")
class FrozenNCM(LearnMethod):
    """The new classes' prototypes on the model's features as they are: the simple, strong baseline of class-
    incremental learning on a pre-trained model (nothing trained, so nothing drifts)."""


    def fit(self, model, request, data, train_steps):  # no step loop: the base only adds prototypes
        super().fit(model, request, data, lambda: None)

    def train(self, model, request, data, train_steps):
        return None



@register_method("joint")
class Joint(LearnMethod):
    """The upper bound: each request trains a K/V LoRA with a CE head over all classes seen so far, on the new
    classes' images and the known classes' (which an exemplar-free method never sees), then recomputes every
    prototype on the result."""


    def train(self, model, request, data, train_steps):
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers = attach_kv_lora(model, self.cfg.rank, "zero", self.ctx.seed, request.index)
        self.module = model.eval()
        self.head = nn.Linear(model.spec.embed_dim, max(request.classes) + 1).to(self.device)
        self.data = data
        train_steps()
        factors = stack_factors(self.layers)
        detach_kv_lora(model)
        return factors

    def fit(self, model, request, data, train_steps):
        super().fit(model, request, data, train_steps)
        if request.retain:  # it may read the known classes' images: their prototypes follow the new features
            known = class_means(self.model, self.data.retain, request.retain, self.device)
            self.prototypes = torch.cat([known, self.prototypes[len(known):]])
            self.model.head.prototypes.data.copy_(self.prototypes)

    def parameters(self):
        return [p for layer in self.layers for p in (layer.a_k, layer.b_k, layer.a_v, layer.b_v)]

    def make_optimizer(self, lr, weight_decay):
        return torch.optim.AdamW([{"params": self.parameters(), "lr": lr, "weight_decay": weight_decay},
                                  {"params": list(self.head.parameters()), "lr": self.cfg.head_lr,
                                   "weight_decay": 0.0}])

    def training_step(self, batch, step):
        forget, retain = batch["forget"], batch["retain"]
        x, y = forget
        if retain is not None:
            x, y = torch.cat([x, retain[0]]), torch.cat([y, retain[1]])
        ce = F.cross_entropy(self.head(self.module.embed(x)), y)
        return {"ce": ce, "loss": ce}

    def trainable_count(self):
        return sum(p.numel() for p in self.parameters())
