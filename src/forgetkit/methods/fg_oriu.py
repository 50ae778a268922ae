"""FG-OrIU: feature-gradient orthogonality for incremental unlearning (Feng et al., ICCV 2025).

Per request, with the model at its start (earlier requests merged in), feature subspaces are computed from the
request's forget and replay images: for every block ``l``, orthonormal bases ``P_f^l`` and ``P_r^l`` of the block
output's CLS features (the fewest singular directions holding ``energy`` of their energy, uncentred). LoRA on every
FFN then trains on::

    L = λ_ce · CE(x_r) + λ_f · Σ_l ||F̂_f^l P_f^l||_*
        + λ_r · Σ_l ||F̂_r^l − F̂_r^l P_r^l P_r^lᵀ||_F   [+ GS-LoRA's terms]

(F̂: L2-normalised CLS features of the step's forget and replay batches; the nuclear norm pushes every direction of
the forget features out of their old subspace; the second term keeps the retain features in theirs), and every
gradient is projected off the retained data's subspace before the update.

forgetkit's form is the paper's; the released code differs (docs/fg-oriu.md), and ``faithful`` reproduces it:

* the protected subspace of each adapted layer is that of its **own inputs** (fc1: the normalised residual; fc2:
  the hidden activation), not of the block output, and the update, not only the gradient, is kept off it: LoRA's A
  factor starts and stays orthogonal to it (re-projected after each optimiser step, which AdamW would otherwise
  leave), so ``ΔW x = B A x = 0`` for every x in the subspace whatever B does;
* the forget subspaces of successive requests are **merged** (GPM-style expansion) and kept with the run's state;
  the retain subspaces are recomputed from each request's retained classes;
* the energy criterion is on σ² (the code's SVD of XᵀX made it σ⁴).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..errors import ForgetkitError
from ..runtime import rng
from .base import register_method
from .configs import FGOrIUConfig
from .gs_lora import GSLoRA


# ------------------------------------------------------------------------------------------------------ subspaces
def energy_basis(x: torch.Tensor, energy: float, power: int = 2) -> torch.Tensor:
    """Orthonormal basis (d × k) of the rows of ``x`` (n × d, uncentred): the fewest right singular vectors whose
    σ^power sum to ``energy`` of the total (power 2: the usual criterion; 4: the released code's)."""
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    weight = s ** power
    share = torch.cumsum(weight, 0) / weight.sum().clamp_min(1e-300)
    k = min(int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype) - 1e-12)) + 1, len(s))
    return vh[:k].T.float().contiguous()


def expand_basis(basis: torch.Tensor | None, x: torch.Tensor, energy: float) -> torch.Tensor:
    """GPM's expansion: keep ``basis`` and add the leading directions of the part of ``x`` outside it until the
    expanded basis holds ``energy`` of the energy of ``x`` (at most d columns)."""
    if basis is None or basis.shape[1] == 0:
        return energy_basis(x, energy)
    x = x.double()
    b = basis.double()
    total = x.pow(2).sum()
    residual = x - x @ b @ b.T
    held = total - residual.pow(2).sum()
    if held >= energy * total or basis.shape[1] >= x.shape[1]:
        return basis
    _, s, vh = torch.linalg.svd(residual, full_matrices=False)
    need = energy * total - held
    k = min(int(torch.searchsorted(torch.cumsum(s ** 2, 0), need)) + 1, x.shape[1] - basis.shape[1], len(s))
    fresh = vh[:k].T
    fresh = fresh - b @ (b.T @ fresh)  # numerically orthogonal to the old basis
    return torch.cat([b, torch.linalg.qr(fresh)[0]], 1).float().contiguous()


def project_off(g: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of ``g`` (… × d) with their component in span(basis) removed: g (I − P Pᵀ)."""
    return g - (g @ basis) @ basis.T


def project_onto(g: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of ``g`` (… × d) projected onto span(basis): g P Pᵀ."""
    return (g @ basis) @ basis.T


def nuclear_push(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """||F̂ P||_*: the nuclear norm of the L2-normalised features' coordinates in the subspace."""
    return torch.linalg.matrix_norm(F.normalize(features, dim=1) @ basis, ord="nuc")


def outside_pull(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """||F̂ − F̂ P Pᵀ||_F: the Frobenius norm of the normalised features' part outside the subspace."""
    return project_off(F.normalize(features, dim=1), basis).norm()


# ------------------------------------------------------------------------------------------------------ the method
def _blocks(model) -> list:
    blocks = getattr(getattr(model, "backbone", None), "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "mlp", None), "fc1") and hasattr(b.mlp, "fc2") for b in blocks):
        raise ForgetkitError("fg_oriu needs a ViT whose blocks have mlp.fc1 and mlp.fc2 (model.backbone.blocks, as "
                             "every forgetkit and timm ViT); this model has none")
    return list(blocks)


@contextmanager
def _capture(blocks: list, outputs: bool = True, inputs: bool = False, detach: bool = True):
    """Record, for every block, its output's CLS token (``out[blk]``) and, with ``inputs``, the inputs of its fc1 and
    fc2 (``fc1[blk]``, ``fc2[blk]``: every token). Lists of tensors, one per forward pass."""
    seen: dict[str, dict[int, list]] = {"out": {}, "fc1": {}, "fc2": {}}
    handles = []

    def keep(kind, index, value):
        seen[kind].setdefault(index, []).append(value.detach() if detach else value)

    for index, block in enumerate(blocks):
        if outputs:
            handles.append(block.register_forward_hook(lambda m, i, o, index=index: keep("out", index, o[:, 0])))
        if inputs:
            for name in ("fc1", "fc2"):
                layer = getattr(block.mlp, name)
                handles.append(layer.register_forward_pre_hook(
                    lambda m, i, index=index, name=name: keep(name, index, i[0])))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@register_method("fg_oriu")
class FGOrIU(GSLoRA):
    """FG-OrIU: LoRA-FFN with subspace feature terms and gradients projected off the retained subspace."""

    default_lr = 1e-2
    fix_hint = ("try a larger budget (-o train.steps=600), a larger λ_f (-o method.forget_subspace_weight=0.5), or "
                "GS-LoRA's forget loss (-o method.beta=[0.2]) (docs/fg-oriu.md)")

    def __init__(self, cfg: FGOrIUConfig, ctx):
        super().__init__(cfg, ctx)
        self.forget_bases: dict[int, torch.Tensor] = {}  # merged across requests (not in faithful mode)

    def check_model(self, model, kind):
        super().check_model(model, kind)
        _blocks(model)

    # ---- state across requests: the merged forget subspaces
    def state_dict(self):
        return {f"forget_basis.{index}": basis for index, basis in self.forget_bases.items()}

    def load_state_dict(self, state):
        self.forget_bases = {int(key.split(".")[1]): value for key, value in state.items()}

    # ---- one request
    def setup(self, model, request, data):
        blocks = _blocks(model)
        self.feature_blocks = list(range(len(blocks))) if self.cfg.feature_blocks == "all" else [len(blocks) - 1]
        forget, retain = (self._collect(model, blocks, images, stream, request.index)
                          for images, stream in ((data.forget, 0), (data.retain, 1)))
        power, energy = (4 if self.cfg.faithful else 2), self.cfg.energy
        self.retain_out = {blk: energy_basis(retain["out"][blk], energy, power) for blk in retain["out"]}
        new_forget = {blk: energy_basis(forget["out"][blk], energy, power) for blk in forget["out"]}
        if self.cfg.faithful:  # the released code: rebuilt from this request's forget images only
            self.forget_out = new_forget
        else:
            self.forget_bases = {blk: expand_basis(self.forget_bases.get(blk), forget["out"][blk], energy)
                                 for blk in forget["out"]}
            self.forget_out = self.forget_bases
        if not self.cfg.faithful:  # each adapted layer protected on its own inputs
            self.retain_in = {(blk, name): energy_basis(retain[name][blk], energy) for name in ("fc1", "fc2")
                              for blk in retain[name]}
            self.forget_in = {(blk, name): energy_basis(forget[name][blk], energy) for name in ("fc1", "fc2")
                              for blk in forget[name]}
        module = super().setup(model, request, data)
        self.blocks = _blocks(module.base_model.model)  # the same modules, now holding the LoRA layers
        self.factors = self._factors()
        if not self.cfg.faithful:
            self._project_weights()  # A starts orthogonal to the retained inputs (peft draws it at random)
        return module

    @torch.no_grad()
    def _collect(self, model, blocks, images, stream: int, request: int) -> dict:
        """Features of up to ``subspace_images`` of ``images`` (a seeded sample), in eval mode: each block's output
        CLS and its fc1/fc2 inputs (CLS or every token, ``subspace_tokens``)."""
        if len(images) == 0:
            raise ForgetkitError("fg_oriu needs forget and replay images to compute its subspaces; give the request "
                                 "replay data (protocol.retain_ratio > 0)")
        n = len(images) if not self.cfg.subspace_images else min(self.cfg.subspace_images, len(images))
        pick = torch.randperm(len(images), generator=rng(self.ctx.seed, "subspace_images", request * 2 + stream))[:n]
        was_training = model.training
        model.eval()
        with _capture(blocks, inputs=True) as seen:
            for start in range(0, n, 256):
                x = torch.stack([images[int(i)][0] for i in pick[start:start + 256]]).to(self.ctx.device)
                model.embed(x)
        model.train(was_training)

        def rows(parts):
            t = torch.cat(parts).float()
            if t.dim() == 3:  # tokens: the CLS (the first) or all of them
                t = t[:, 0] if self.cfg.subspace_tokens == "cls" else t.reshape(-1, t.shape[-1])
            return t.cpu()

        return {kind: {blk: rows(parts) for blk, parts in seen[kind].items()} for kind in seen}

    def _factors(self) -> list[tuple[torch.nn.Parameter, int, str, str]]:
        """Every LoRA factor with its block, layer (fc1/fc2) and side (A/B)."""
        found = []
        for index, block in enumerate(self.blocks):
            for name in ("fc1", "fc2"):
                layer = getattr(block.mlp, name)
                for side, holder in (("A", layer.lora_A), ("B", layer.lora_B)):
                    for linear in holder.values():
                        found.append((linear.weight, index, name, side))
        return found

    def extra_terms(self, losses, emb_forget, yf, emb_retain, yr):
        out = self._seen["out"]  # the step's first forward pass: forget and replay images together, LoRA on
        nf = len(emb_forget)
        forget_term = sum(nuclear_push(out[blk][0][:nf], self.forget_out[blk].to(emb_forget.device))
                          for blk in self.feature_blocks)
        retain_term = (sum(outside_pull(out[blk][0][nf:], self.retain_out[blk].to(emb_forget.device))
                           for blk in self.feature_blocks) if len(emb_retain) else emb_forget.new_zeros(()))
        losses["loss"] = (losses["loss"] + (self.cfg.retain_ce_weight - 1.0) * losses["retain"]
                          + self.cfg.forget_subspace_weight * forget_term
                          + self.cfg.retain_subspace_weight * retain_term)
        losses.update(forget_subspace=forget_term, retain_subspace=retain_term)
        return losses

    def training_step(self, batch, step):
        with _capture(self.blocks, detach=False) as self._seen:
            return super().training_step(batch, step)

    # ---- the update: clip, project, step, keep A off the retained inputs
    def before_update(self):
        params = [p for p, *_ in self.factors]
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        with torch.no_grad():
            for param, index, name, side in self.factors:
                if param.grad is not None:
                    param.grad.copy_(self._project_gradient(param.grad, index, name, side))

    def after_update(self):
        if not self.cfg.faithful:
            self._project_weights()

    @torch.no_grad()
    def _project_weights(self):
        for param, index, name, side in self.factors:
            if side == "A":
                param.copy_(project_off(param, self.retain_in[(index, name)].to(param.device)))

    def _project_gradient(self, g: torch.Tensor, index: int, name: str, side: str) -> torch.Tensor:
        if not self.cfg.faithful:
            if side == "B":  # A ⟂ retained inputs already makes ΔW = B·A vanish on them
                return g
            retain = self.retain_in[(index, name)].to(g.device)
            out = project_off(g, retain)
            if self.cfg.project_forget:
                out = out + project_onto(g, self.forget_in[(index, name)].to(g.device))
            return out
        return self._faithful_projection(g, index, name, side)

    def _faithful_projection(self, g: torch.Tensor, index: int, name: str, side: str) -> torch.Tensor:
        """The released code's grad_proj (docs/fg-oriu.md): block-output bases for every factor; fc1.A projected
        on its rows, fc2.B and fc2.A through a reshape (a scrambled basis), fc1.B left as it is."""
        if self.cfg.faithful_block_mixup:  # ImageNet100's name index: the sub-layer (0 or 3), not the block
            index = min(0 if name == "fc1" else 3, len(self.retain_out) - 1)
        retain = self.retain_out[index].to(g.device)
        forget = self.forget_out[index].to(g.device)
        d = retain.shape[0]

        def project(rows):
            out = project_off(rows, retain)
            return out + project_onto(rows, forget) if self.cfg.project_forget else out

        if name == "fc1" and side == "A":
            return project(g)
        if name == "fc2" and side == "B":
            return project(g.reshape(-1, d)).reshape(g.shape)
        if name == "fc2" and side == "A":
            return project(g.reshape(d, -1).T).reshape(g.shape)
        return g  # fc1.B: computed and dropped by the code

    def request_stats(self):
        stats = super().request_stats()
        stats["subspace_dims"] = {
            "forget": {str(blk): int(b.shape[1]) for blk, b in self.forget_out.items()},
            "retain": {str(blk): int(b.shape[1]) for blk, b in self.retain_out.items()}}
        if not self.cfg.faithful:
            stats["subspace_dims"]["retain_inputs"] = {f"{blk}.{name}": int(b.shape[1])
                                                       for (blk, name), b in self.retain_in.items()}
        return stats
