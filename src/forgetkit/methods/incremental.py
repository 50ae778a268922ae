"""What every class-incremental (``learn``) method shares: the prototype classifier that grows, K/V LoRA on the fused
``qkv`` projection, and the request's edit.

A ``learn`` request teaches the model new classes. Whatever the method trains, the model that comes out predicts by
cosine nearest class mean (:class:`~forgetkit.models.vit.PrototypeHead`): the new classes' prototypes (mean
embeddings of their training images, under the evaluation preprocessing) are appended to the head, the old classes'
are kept as they are (no image of an old class is needed). The first request on a classifier with another head
converts it: its classes keep their place (their prototypes come from their training images, the one time old
images are read) when the data has them; a backbone pre-trained on other classes starts with no class.

Its edit (``learn.safetensors``) holds the K/V factors the method trained and the whole new prototype matrix: the
model before the request plus that edit gives the model after it bit for bit, so the ledger replays it and later
requests can subtract earlier tasks' updates (LoRA-Sub-DRS).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch
import torch.nn as nn

from ..io import load_weights, save_weights, write_json
from ..runtime import class_means, rng
from .base import Method


class KVLoRA(nn.Module):
    """LoRA on the K and V thirds of a fused ``qkv`` Linear (timm's attention), Q untouched and no α/r scaling::

        qkv(x) + [0, B_k A_k x, B_v A_v x]

    peft cannot target a slice of one layer's output, hence this module. ``subtract`` switches it to the
    drift-resistant-space pass of LoRA-Sub-DRS: the K/V weights minus ``shift`` (the old tasks' updates), the
    trained factors off, and the input covariance ``Σ x xᵀ`` over all tokens accumulated.
    """

    def __init__(self, qkv: nn.Linear, rank: int, b_init: str, generator: torch.Generator):
        super().__init__()
        self.qkv, dim = qkv, qkv.in_features
        device = qkv.weight.device
        a_k, a_v, b_k, b_v = (torch.empty(rank, dim), torch.empty(rank, dim), torch.zeros(dim, rank),
                              torch.zeros(dim, rank))
        for a in (a_k, a_v):  # as nn.Linear and both sources (drawn on the CPU: the generator is a CPU one)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        if b_init == "sparse":  # the official code: one N(0, 0.01) entry per column, so B·A ≠ 0 from the start
            for b in (b_k, b_v):
                nn.init.sparse_(b, sparsity=1 - 1 / dim, std=0.01, generator=generator)
        self.a_k, self.a_v, self.b_k, self.b_v = (nn.Parameter(t.to(device)) for t in (a_k, a_v, b_k, b_v))
        self.shift: torch.Tensor | None = None
        self.covariance = torch.zeros(dim, dim, device=device)
        self.tokens = 0

    def factors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().clone() for name in FACTORS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        dim = self.qkv.in_features
        if self.shift is not None:
            flat = x.detach().reshape(-1, dim)
            self.covariance += flat.T @ flat
            self.tokens += len(flat)
            kv = (x @ self.shift[0].T, x @ self.shift[1].T)  # the subtracted K and V parts
        else:
            kv = (x @ self.a_k.T @ self.b_k.T, x @ self.a_v.T @ self.b_v.T)
        return out + torch.cat([torch.zeros_like(out[..., :dim]), kv[0], kv[1]], dim=-1)


FACTORS = ("a_k", "b_k", "a_v", "b_v")


def attach_kv_lora(model: nn.Module, rank: int, b_init: str, seed: int, request: int) -> list[KVLoRA]:
    """Wrap every block's ``attn.qkv`` with a :class:`KVLoRA`; returns them in block order."""
    generator = rng(seed, "lora_init", request)
    layers = []
    for block in model.backbone.blocks:
        block.attn.qkv = KVLoRA(block.attn.qkv, rank, b_init, generator)
        layers.append(block.attn.qkv)
    return layers


def detach_kv_lora(model: nn.Module) -> None:
    """Put the plain ``qkv`` Linears back (their weights were never changed by training)."""
    for block in model.backbone.blocks:
        if isinstance(block.attn.qkv, KVLoRA):
            block.attn.qkv = block.attn.qkv.qkv


def stack_factors(layers: list[KVLoRA]) -> dict[str, torch.Tensor]:
    """The trained factors of every block, stacked (``a_k``: blocks × r × d, ``b_k``: blocks × d × r, ...)."""
    return {name: torch.stack([layer.factors()[name] for layer in layers]) for name in FACTORS}


def kv_deltas(factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """blocks × 2 × d × d: each block's K and V updates B·A."""
    return torch.stack([factors["b_k"] @ factors["a_k"], factors["b_v"] @ factors["a_v"]], dim=1)


def merge_kv(model: nn.Module, factors: dict[str, torch.Tensor] | None) -> nn.Module:
    """A copy of ``model`` with each block's K/V update B·A added to the K and V rows of its ``qkv`` weight."""
    merged = copy.deepcopy(model)
    if factors is None:
        return merged
    with torch.no_grad():
        for block, delta in zip(merged.backbone.blocks, kv_deltas(factors)):
            weight, dim = block.attn.qkv.weight, block.attn.qkv.in_features
            weight[dim:2 * dim] += delta[0].to(weight)
            weight[2 * dim:] += delta[1].to(weight)
    return merged


def with_prototypes(model: nn.Module, prototypes: torch.Tensor) -> nn.Module:
    """``model`` with a prototype head of these rows (one per class, in class order); the spec follows."""
    from ..models.vit import PrototypeHead

    spec = dataclasses.replace(model.spec, head="prototype", num_classes=len(prototypes))
    head = PrototypeHead(spec.embed_dim, len(prototypes), spec.prototype_scale).to(prototypes.device)
    head.prototypes.data.copy_(prototypes)
    model.head, model.spec = head, spec
    return model


class LearnMethod(Method):
    """Base of the ``learn`` methods. :meth:`train` trains (or not) on the request's data; the base turns the result
    into the grown prototype model and its edit."""

    supports = frozenset({"learn"})
    requires = frozenset({"rebuildable"})
    edit_type = "learn"
    default_lr = 5e-4

    def fit(self, model, request, data, train_steps):
        self.request, self.device = request, next(model.parameters()).device
        known = len(request.retain) + len(request.old)  # the model knows the first `known` classes (some forgotten)
        if model.spec.head == "prototype":
            old = model.head.prototypes.detach().clone()
        else:  # a classifier's head becomes prototypes of its classes, read from their images this once; a backbone
            # (it knows none of the data's classes) keeps nothing; a class its ledger forgot gets a zero prototype
            # (cosine 0 to everything), never a mean of its images that would bring it back
            old = torch.zeros(known, model.spec.embed_dim, device=self.device)
            if request.retain:
                old[request.retain] = class_means(model, data.retain, request.retain, self.device)
        self.old_prototypes = old
        # the known classes' prototypes as negatives (LoRA-Sub-DRS's triplet): a forgotten class's zero row would sit
        # at distance exactly 1 from every normalised feature and count as a false negative
        self.retained_prototypes = old[request.retain]
        self.factors = self.train(model, request, data, train_steps)
        learned = merge_kv(model, self.factors)
        new = class_means(learned, data.forget, request.classes, self.device)
        self.prototypes = torch.cat([old, new])
        self.model = with_prototypes(learned, self.prototypes)

    def train(self, model, request, data, train_steps) -> dict[str, torch.Tensor] | None:
        """Train on the request's data; returns the K/V LoRA factors to merge (:func:`stack_factors`), or None."""
        raise NotImplementedError

    def save_edit(self, directory: Path) -> bool:
        save_weights(directory / "learn.safetensors", {"prototypes": self.prototypes, **(self.factors or {})})
        write_json(directory / "learn.json", {"method": self.name, "classes": list(self.request.classes),
                                              "known_before": len(self.old_prototypes)})
        return True

    @staticmethod
    def apply_edit(model, directory: Path):
        tensors = load_weights(Path(directory) / "learn.safetensors")
        device = next(model.parameters()).device
        factors = {name: tensors[name].to(device) for name in FACTORS} if FACTORS[0] in tensors else None
        return with_prototypes(merge_kv(model, factors), tensors["prototypes"].to(device))

    def trainable_count(self) -> int:
        return 0

    def finish(self):
        return self.model
