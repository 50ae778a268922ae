"""GS-LoRA++: GS-LoRA with prototype regularisation (Zhao et al., "Practical Continual Forgetting", T-PAMI 2026).

Class prototypes are the mean embeddings of each class's training images available to the task (its forget and
replay subsets), computed with the model at the start of the task. Added to GS-LoRA's loss
(docs/gs-lora.md#gs-lora-gs_lora_pp)::

    w_f · ReLU(BND_pro − mean_i D(x_f,i, P_{y_f,i}))   push forget embeddings away from their class prototype
  + w_r · mean_i D(x_r,i, P_{y_r,i})                  pull replay embeddings towards theirs

with D = KL(softmax(P) ‖ softmax(e(x))) over the embedding dimensions ("kl", the original's default) or the
mean squared distance ("l2"). The original shipped w_r = 0 in every script; here both terms work and are tested.

Optional weight EMA, fixed: the original averaged an un-merged copy whose forward ignored LoRA, so its logged
EMA accuracies were those of the start-of-task model. Here the EMA averages the *merged update* ΔW = B·A·scaling of
every adapted layer every ``ema_every`` steps from ``ema_start_step``, and the averaged update is what gets merged and
carried to the next task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ForgetkitError
from ..runtime import inference_loader, rng
from .base import register_method
from .configs import GSLoRAPPConfig
from .gs_lora import GSLoRA


def prototype_distance(emb: torch.Tensor, prototypes: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample distance between embeddings and their class prototypes (rows of ``prototypes``)."""
    if kind == "kl":
        p = F.softmax(prototypes, dim=1)
        return (p * (F.log_softmax(prototypes, dim=1) - F.log_softmax(emb, dim=1))).sum(dim=1)
    if kind == "l2":
        return (emb - prototypes).pow(2).mean(dim=1)
    raise ForgetkitError(f"method.proto_distance must be kl or l2, not {kind!r}")


@torch.no_grad()
def class_prototypes(model, datasets, num_classes: int, device, batch_size: int = 256):
    """Mean embedding per class over ``datasets`` (eval mode); returns (prototypes C×D, present mask C)."""
    was_training = model.training
    model.eval()
    sums, counts = None, torch.zeros(num_classes)
    for dataset in datasets:
        if len(dataset) == 0:
            continue
        for x, y in inference_loader(dataset, batch_size, device):
            emb = model.embed(x).cpu()
            if sums is None:
                sums = torch.zeros(num_classes, emb.shape[1])
            sums.index_add_(0, y, emb)
            counts += torch.bincount(y, minlength=num_classes).float()
    model.train(was_training)
    present = counts > 0
    return (sums / counts.clamp(min=1)[:, None]).to(device), present


def per_class_sample(dataset, per_class: int, generator: torch.Generator):
    """At most ``per_class`` items of each class of ``dataset``, drawn with ``generator`` (0 = the whole dataset)."""
    if per_class == 0 or len(dataset) == 0:
        return dataset
    keep = []
    for c in torch.unique(dataset.targets).tolist():
        idx = torch.nonzero(dataset.targets == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return dataset.subset(torch.sort(torch.cat(keep)).values)


@register_method("gs_lora_pp")
class GSLoRAPlusPlus(GSLoRA):
    """GS-LoRA++: GS-LoRA + prototype push (forget) / pull (retain) regularisation, optional update EMA."""


    def __init__(self, cfg: GSLoRAPPConfig, ctx):
        super().__init__(cfg, ctx)
        if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
            raise ForgetkitError(f"method.ema_decay must be in (0, 1) or null, got {cfg.ema_decay}")

    def setup(self, model, request, data):
        # Prototypes from the model as it starts this task (after the previous merge), before LoRA is added, over a
        # seeded sample of each class: a class mean needs a few hundred images, not the whole replay set.
        gen = rng(self.ctx.seed, "prototype_images", request.index)
        sample = [per_class_sample(d, self.cfg.prototype_images, gen) for d in (data.forget, data.retain)]
        self.prototypes, self.present = class_prototypes(model, sample, self.ctx.num_classes, self.ctx.device)
        module = super().setup(model, request, data)
        pick = min(request.index, len(self.cfg.proto_forget_weight) - 1)
        self.w_f = self.cfg.proto_forget_weight[pick]
        self.w_r = self.cfg.proto_retain_weight[min(request.index, len(self.cfg.proto_retain_weight) - 1)]
        self.ema = None
        return module

    def extra_terms(self, losses, emb_forget, yf, emb_retain, yr):
        kind = self.cfg.proto_distance
        push = prototype_distance(emb_forget, self.prototypes[yf], kind).mean()
        pull = (prototype_distance(emb_retain, self.prototypes[yr], kind).mean() if len(yr)
                else emb_forget.new_zeros(()))
        losses["proto_push"] = F.relu(self.cfg.proto_bound - push)
        losses["proto_pull"] = pull
        losses["loss"] = losses["loss"] + self.w_f * losses["proto_push"] + self.w_r * losses["proto_pull"]
        return losses

    def lora_layers(self):
        return {n: m for n, m in self.module.named_modules() if hasattr(m, "get_delta_weight")}

    def end_step(self, step):
        if self.cfg.ema_decay is None or step < self.cfg.ema_start_step or not self.every(step, self.cfg.ema_every):
            return
        with torch.no_grad():
            deltas = {n: m.get_delta_weight("default").detach().clone() for n, m in self.lora_layers().items()}
            if self.ema is None:
                self.ema = deltas
            else:
                d = self.cfg.ema_decay
                for n, delta in deltas.items():
                    self.ema[n].mul_(d).add_(delta, alpha=1 - d)

    def finish(self):
        if self.ema is None:
            return super().finish()
        final = {n: m.get_delta_weight("default").detach().clone() for n, m in self.lora_layers().items()}
        model = super().finish()
        with torch.no_grad():  # merged = W + ΔW_final; carry W + ΔW_ema instead
            for name, delta in final.items():
                layer = model.get_submodule(name.removeprefix("base_model.model."))
                layer.weight.add_(self.ema[name] - delta)
        return model
