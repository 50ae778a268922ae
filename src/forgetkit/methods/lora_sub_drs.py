"""LoRA-Sub-DRS (Liu & Chang, CVPR 2025): exemplar-free class-incremental learning in a drift-resistant space
(docs/learning.md#methods), and sequential LoRA fine-tuning, its baseline.

Each learn request trains one new rank-r LoRA on the K and V projections of every block. Before training, the
earlier requests' LoRA updates are *subtracted* from the weights, the new classes' images are passed through that
model, and each block's uncentred input covariance gives the drift-resistant space: its top eigenvectors up to
ε = 99 % of the energy. Every Adam update of the new LoRA is projected onto it (A right-multiplied, B left-multiplied
by P = UUᵀ/√k). The loss is the cross-entropy of a per-request head (training only) plus λ times the augmented
triplet loss, whose negatives include the old classes' prototypes; prediction is cosine nearest class mean
(:mod:`forgetkit.methods.incremental`). The first request has no earlier update and trains without projection.

Where forgetkit differs from the official code, and why (docs/learning.md): the budget is ``train.steps`` on
forgetkit's per-step cosine schedule instead of epochs on the code's ``cos(99π·e/(200(K−1)))``; no training
augmentation; the earlier requests' updates come from the model's ledger, so a model saved, reloaded and taught
again still subtracts them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ForgetkitError
from ..io import load_weights
from ..losses import augmented_triplet_loss
from ..runtime import inference_loader
from .base import register_method
from .incremental import FACTORS, LearnMethod, attach_kv_lora, detach_kv_lora, kv_deltas, stack_factors


def energy_basis(covariance: torch.Tensor, energy: float) -> torch.Tensor:
    """U: the leading eigenvectors of a symmetric PSD matrix, the fewest whose eigenvalues reach ``energy`` of the
    total (k = min{k : Σ_{i≤k} λ_i ≥ ε Σ λ})."""
    vectors, values, _ = torch.linalg.svd(covariance)
    share = torch.cumsum(values, 0) / values.sum()
    k = min(int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype))) + 1, len(values))
    return vectors[:, :k]


class ProjectedAdam(torch.optim.Adam):
    """torch's Adam whose *update* of some parameters is projected after the step: ``A ← A − lr·u·P`` (factors that
    read the input, r × d) and ``B ← B − lr·P·u`` (factors that write the output, d × r). The moments keep the
    unprojected gradients, as the official ``adam_proj``; with weight decay 0 the step is exactly ``−lr·u``."""

    def __init__(self, groups, projections: dict[nn.Parameter, tuple[torch.Tensor, str]]):
        super().__init__(groups)
        self.projections = projections

    @torch.no_grad()
    def step(self, closure=None):
        before = {p: p.detach().clone() for p in self.projections}
        loss = super().step(closure)
        for p, (projection, side) in self.projections.items():
            update = p - before[p]
            p.copy_(before[p] + (update @ projection if side == "right" else projection @ update))
        return loss


@register_method("lora_sub_drs")
class LoRASubDRS(LearnMethod):
    """LoRA-Sub-DRS: K/V LoRA per request, updates projected onto the drift-resistant space, CE + λ·ATL, NCM."""


    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if not 0 < cfg.energy <= 1:
            raise ForgetkitError(f"method.energy (ε) must be in (0, 1], got {cfg.energy}")
        self.history: list[dict[str, torch.Tensor]] | None = None  # the earlier requests' K/V factors

    # -- the earlier requests' updates: the model's ledger, then this run's requests (kept for a resume)
    def earlier_factors(self) -> list[dict[str, torch.Tensor]]:
        if self.history is None:
            self.history = []
            for entry in self.ctx.ledger:
                path = (Path(self.ctx.source) / entry["edit"]["path"] / "learn.safetensors"
                        if entry.get("kind") == "learn" and entry.get("edit") and self.ctx.source else None)
                if path is not None and path.is_file():
                    tensors = load_weights(path)
                    if FACTORS[0] in tensors:
                        self.history.append({name: tensors[name] for name in FACTORS})
        return self.history

    def state_dict(self):
        return {f"history.{i}.{name}": f[name] for i, f in enumerate(self.history or []) for name in FACTORS}

    def load_state_dict(self, state):
        count = len({key.split(".")[1] for key in state})
        self.history = [{name: state[f"history.{i}.{name}"] for name in FACTORS} for i in range(count)]

    def train(self, model, request, data, train_steps):
        cfg = self.cfg
        for p in model.parameters():
            p.requires_grad_(False)
        earlier = self.earlier_factors()
        self.layers = attach_kv_lora(model, cfg.rank, "sparse" if cfg.layout == "official" else "zero",
                                     self.ctx.seed, request.index)
        self.projections = self.drift_resistant_space(model, data.forget, earlier) if cfg.drs and earlier else {}
        self.module = model.eval()  # trained in eval mode, as the official code: no dropout
        self.head = nn.Linear(model.spec.embed_dim, len(request.classes)).to(self.device)
        self.local = torch.full((max(request.classes) + 1,), -1, dtype=torch.long, device=self.device)
        self.local[request.classes] = torch.arange(len(request.classes), device=self.device)
        train_steps()
        factors = stack_factors(self.layers)
        detach_kv_lora(model)
        self.history = earlier + [{k: v.cpu() for k, v in factors.items()}]
        return factors

    @torch.no_grad()
    def drift_resistant_space(self, model, images, earlier) -> dict:
        """One pass of the new classes' images through the model with the earlier updates subtracted (the weights
        hold W0 + ΣΔW, so the shift is −2·ΣΔW) and the new LoRA off; each block's covariance gives its P."""
        shift = -2 * sum(kv_deltas(f) for f in earlier).to(self.device)
        for layer, block_shift in zip(self.layers, shift):
            layer.shift = block_shift if self.cfg.subtract else torch.zeros_like(block_shift)
            layer.covariance.zero_()
            layer.tokens = 0
        model.eval()
        for x, _ in inference_loader(images, 256, self.device):
            model.embed(x)
        projections, self.space_dims = {}, []
        for layer in self.layers:
            basis = energy_basis(layer.covariance / layer.tokens, self.cfg.energy)
            projection = basis @ basis.T
            if self.cfg.scale_projection:
                projection = projection / math.sqrt(basis.shape[1])
            projections.update({layer.a_k: (projection, "right"), layer.a_v: (projection, "right"),
                                layer.b_k: (projection, "left"), layer.b_v: (projection, "left")})
            layer.shift = None
            self.space_dims.append(basis.shape[1])
        return projections

    def parameters(self):
        return [p for layer in self.layers for p in (layer.a_k, layer.b_k, layer.a_v, layer.b_v)]

    def make_optimizer(self, lr, weight_decay):
        return ProjectedAdam([{"params": self.parameters(), "lr": lr, "weight_decay": weight_decay},
                              {"params": list(self.head.parameters()), "lr": self.cfg.head_lr, "weight_decay": 0.0}],
                             self.projections)

    def training_step(self, batch, step):
        x, y = batch["forget"]
        features = self.module.embed(x)
        losses = {"ce": F.cross_entropy(self.head(features), self.local[y])}
        loss = losses["ce"]
        if self.cfg.atl_weight:
            losses["atl"] = augmented_triplet_loss(features, y, self.cfg.margin, self.retained_prototypes)
            loss = loss + self.cfg.atl_weight * losses["atl"]
        losses["loss"] = loss
        return losses

    def trainable_count(self):
        return sum(p.numel() for p in self.parameters())

    def request_stats(self):
        return {"drs_dims": getattr(self, "space_dims", None) if self.projections else None}



@register_method("seq_lora")
class SequentialLoRA(LoRASubDRS):
    """Sequential K/V LoRA fine-tuning with a per-request CE head and NCM (LoRA-Sub-DRS without DRS and ATL)."""

