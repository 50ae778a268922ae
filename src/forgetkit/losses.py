"""The forgetting losses of GS-LoRA, as pure functions (docs/gs-lora.md#what-is-implemented)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def bounded_forget_loss(logits: torch.Tensor, labels: torch.Tensor, bound: float, per_sample: bool = False
                        ) -> torch.Tensor:
    """``ReLU(BND − CE)`` on the batch-mean cross-entropy of forget samples (the paper).

    Minimising it raises the forget CE until it reaches ``bound`` and then stops (zero gradient), instead of
    the unbounded gradient ascent that destroys the model. ``per_sample`` bounds each sample's CE instead,
    ``mean_i ReLU(BND − CE_i)``: the batch mean can reach the bound with some samples pushed far and the others
    not moved at all (e.g. one of two forgotten classes), each sample's bound cannot.
    """
    if per_sample:
        return F.relu(bound - F.cross_entropy(logits, labels, reduction="none")).mean()
    return F.relu(bound - F.cross_entropy(logits, labels))


def class_mass_loss(logits: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``mean_i −log(1 − Σ_{c∈classes} softmax(logits_i)_c)``: keeps the predicted mass off ``classes``.

    Zero when no probability falls on ``classes``, and bounded in its push: unlike gradient ascent on their CE, its
    gradient vanishes once the mass is gone. GS-LoRA's ``forgotten_mass_weight`` applies it to forget images over
    every class forgotten so far, so that they land on retained classes.
    """
    if not classes or not len(logits):
        return logits.new_zeros(())
    log_mass = torch.logsumexp(F.log_softmax(logits, dim=1)[:, classes], dim=1)
    # log(1 − e^m) computed stably; the clamp keeps a fully collapsed row finite
    return -torch.log(-torch.expm1(log_mass.clamp(max=-1e-6))).mean()


def group_lasso(groups: Iterable[Iterable[torch.Tensor]]) -> torch.Tensor:
    """``Σ_g sqrt(Σ_{P∈g} ||P||_F²)``: the L2 norm of each group, summed, which drives whole groups to zero."""
    norms = [torch.sqrt(sum((p ** 2).sum() for p in group)) for group in groups]
    return torch.stack(norms).sum()


@torch.no_grad()
def group_soft_threshold(groups: Iterable[Iterable[torch.Tensor]], threshold: float) -> None:
    """In place, the proximal step of the standard group lasso ``threshold · Σ_g √p_g ||g||`` (p_g: the group's
    parameter count, Yuan & Lin's weight): each group shrinks by ``threshold·√p_g`` in norm, and a group whose norm is
    below that becomes exactly zero (the block-wise soft threshold).

    The √p_g weight is what makes one ``threshold`` mean the same on any model: an Adam step moves a group by at most
    about ``lr·√p_g``, so ``threshold = lr·α`` shrinks every group by the same fraction α of its largest step,
    whatever the width of the model or the LoRA rank."""
    for group in groups:
        group = list(group)
        norm = torch.sqrt(sum((p ** 2).sum() for p in group))
        size = sum(p.numel() for p in group)
        scale = torch.clamp(1 - threshold * size ** 0.5 / norm.clamp_min(1e-12), min=0.0)
        for p in group:
            p.mul_(scale)


def group_norms(groups: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """The norm of each group, as the lasso sees it."""
    with torch.no_grad():
        return {k: float(torch.sqrt(sum((p ** 2).sum() for p in g))) for k, g in groups.items()}


def augmented_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float,
                           old_prototypes: torch.Tensor | None = None) -> torch.Tensor:
    """LoRA-Sub-DRS's augmented triplet loss (docs/learning.md#methods), vectorised: on L2-normalised features,

    ``mean_i ReLU(e_ap(i) − e_an(i) + m)``, ``e_ap(i) = max_{j: y_j = y_i} d_ij`` (the self pair included) and
    ``e_an(i) = min(min_{j: y_j ≠ y_i} d_ij, min_c ‖f_i − p̂_c‖)`` over the old classes' normalised prototypes p̂_c.
    A sample with no in-batch negative takes ``e_ap(i) + m`` as its in-batch term (as the original), so only the
    old prototypes can make it count. Distances are clamped at 1e-6 as the original's.
    """
    f = F.normalize(features, dim=1)
    dist = torch.cdist(f, f).clamp_min(1e-6)
    same = labels[:, None] == labels[None, :]
    hardest_positive = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(dim=1)
    hardest_negative = torch.where(torch.isinf(hardest_negative), hardest_positive + margin, hardest_negative)
    if old_prototypes is not None and len(old_prototypes):
        to_old = torch.cdist(f, F.normalize(old_prototypes, dim=1)).clamp_min(1e-6)
        hardest_negative = torch.minimum(hardest_negative, to_old.amin(dim=1))
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def class_mean_gap(features: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over the classes in ``labels`` of the squared distance from their features' mean to the mean of
    ``reference`` features, in units of the reference features' per-dimension variance (detached). Zero when every
    class sits on the reference centre, where a linear probe can no longer tell the classes apart by their means."""
    centre, spread = reference.mean(0).detach(), reference.var(0, unbiased=False).mean().detach().clamp_min(1e-8)
    classes, index = torch.unique(labels, return_inverse=True)
    sums = features.new_zeros(len(classes), features.shape[1]).index_add_(0, index, features)
    means = sums / torch.bincount(index, minlength=len(classes)).unsqueeze(1)
    return (means - centre).pow(2).sum(1).mean() / spread / features.shape[1]


def feature_relabel_loss(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each forget image's features to its target's (the features a retained image had
    before the request), in units of the targets' mean squared norm. At zero the forget images' features sit on
    retained images' features: a probe, k-NN or prototypes fitted on them find retained classes, not the forgotten
    ones."""
    scale = targets.pow(2).sum(1).mean().detach().clamp_min(1e-8)
    return (features - targets.detach()).pow(2).sum(1).mean() / scale
