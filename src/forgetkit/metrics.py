"""Accuracy per class, forgetting metrics (Acc_f, Acc_r, Acc_o, H-Mean) and LoRA group statistics.

Definitions (docs/gs-lora.md#what-is-implemented):

* ``Acc_f``: top-1 accuracy on the test images of the classes forgotten in this task;
* ``Acc_r``: on the classes retained;
* ``Acc_o``: on the classes forgotten in earlier tasks (lower is better; ``None`` on the first task);
* ``Acc_f_all``: on every class forgotten so far (this task's and the earlier ones');
* ``H = 2·Drop·Acc_r / (Drop + Acc_r)`` with ``Drop = max(0, Acc_f(reference) − Acc_f(after))``; the reference
  is the pre-trained model, which is how every published H of the T-PAMI tables recomputes;
* cumulative ``H`` (forgetkit's headline number): the same with the drop of ``Acc_f_all``, so a class forgotten
  earlier that comes back lowers it, where the papers' per-task H does not see it.

Accuracy is plain argmax over all outputs (forgotten classes still compete), weighted by image. ``margin=True`` gives
the original code's CosFace "margin-penalised" accuracy, which subtracts the margin from the true class and so needs
the label. ``batch_mean=B`` gives LIRF's original reporting: the images of the classes asked about, in dataset order,
cut into batches of B, and the mean of the batches' accuracies (the last, smaller batch weighs as much as a full one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .runtime import inference_loader


@dataclass
class PerClass:
    """Correct predictions and image counts per class; with ``batch_mean``, also each image's hit, in dataset order."""

    correct: torch.Tensor
    total: torch.Tensor
    batch_mean: int = 0
    hits: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def accuracy(self, classes: Sequence[int]) -> float | None:
        """Accuracy in percent over the images of ``classes`` (None when there are none)."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        if len(idx) == 0:
            return None
        if self.batch_mean:
            chosen = self.hits[torch.isin(self.labels, idx)].float()
            if len(chosen) == 0:
                return None
            return 100.0 * torch.stack([b.mean() for b in chosen.split(self.batch_mean)]).mean().item()
        total = self.total[idx].sum().item()
        return None if total == 0 else 100.0 * self.correct[idx].sum().item() / total

    def by_name(self, classes: Sequence[str]) -> dict[str, float | None]:
        """Accuracy of every class, keyed by its name."""
        return {name: self.accuracy([c]) for c, name in enumerate(classes)}


@torch.no_grad()
def evaluate_classes(model, dataset, device="cpu", batch_size: int = 256, margin: bool = False,
                     progress: bool = False, batch_mean: int = 0, runtime=None) -> PerClass:
    """Run ``model`` over ``dataset`` once and count correct predictions per class.

    With several processes (``runtime``), each predicts one contiguous share of the images and the predictions are
    gathered in dataset order, so every process holds the counts one process would."""
    if callable(getattr(model, "predict", None)) and not margin:  # a model that caches what it can (CLIP's features)
        return per_class(model.predict(dataset), dataset.targets, len(dataset.classes), batch_mean)
    world = runtime.world_size if runtime is not None else 1
    share = -(-len(dataset) // world)
    mine = range(runtime.rank * share, min(len(dataset), (runtime.rank + 1) * share)) if world > 1 else None
    was_training = model.training
    model.eval()
    loader = inference_loader(dataset.subset(torch.as_tensor(mine)) if mine is not None else dataset, batch_size,
                              device)
    preds, labels = [], []
    for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        logits = model(x, y.to(device) if margin else None)
        # a class-incremental model that has learnt no class yet has no outputs: it predicts none (-1)
        preds.append(logits.argmax(1).cpu() if logits.shape[1] else torch.full((len(y),), -1))
        labels.append(y)
    model.train(was_training)
    if mine is None:
        return per_class(torch.cat(preds), torch.cat(labels), len(dataset.classes), batch_mean)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    padded = torch.full((share,), -1, dtype=torch.long)  # equal shapes for the gather; the padding is cut off
    padded[: len(pred)] = pred
    pred = runtime.all_gather(padded.to(runtime.device)).cpu().flatten()[: len(dataset)]
    return per_class(pred, torch.as_tensor(dataset.targets, dtype=torch.long), len(dataset.classes), batch_mean)


def per_class(pred: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_mean: int = 0) -> PerClass:
    """Counts of correct predictions per class (and, for ``batch_mean``, the hits in order)."""
    hits = pred == labels
    correct, total = torch.bincount(labels[hits], minlength=num_classes), torch.bincount(labels, minlength=num_classes)
    return PerClass(correct, total, batch_mean, hits, labels) if batch_mean else PerClass(correct, total)


def h_mean(acc_f_reference: float, acc_f_after: float, acc_r_after: float) -> float:
    """Harmonic mean of the forgetting drop and the retained accuracy (percent).

    A negative drop (the forgotten classes are recognised better than before) counts as no forgetting: H = 0.
    """
    drop = max(0.0, acc_f_reference - acc_f_after)
    if drop + acc_r_after <= 0:
        return 0.0
    return 2.0 * drop * acc_r_after / (drop + acc_r_after)
