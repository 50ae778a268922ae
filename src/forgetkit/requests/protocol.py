"""Forgetting protocols: class order, the sequence of tasks, and the data each task may use.

Continual protocol of the GS-LoRA papers (docs/gs-lora.md), with N classes retained at the first task, K forgotten
per task and T tasks over a seeded class order::

    retain_t = order[0 : N − t·K]
    forget_t = order[N − t·K : N − (t−1)·K]
    old_t    = classes forgotten in tasks < t

Single-step "C-Y" forgetting is the same with T = 1 and K = Y. Deletion requests by name are explicit task lists
(``tasks: [[Sandal, Bag], [Coat]]``). Labels always stay in the original class-index space.
"""

from __future__ import annotations

import random

import torch

from ..classes import resolve_class_names  # noqa: F401 (re-exported)
from ..data import DataSplits
from ..data.datasets import held_out_mask
from ..engine.config import ProtocolConfig
from ..errors import ForgetkitError
from ..runtime import rng
from .base import Request, RequestData


def class_order(num_classes: int, seed: int | None) -> list[int]:
    """Class indices shuffled with Python's ``random`` (seed 1337 reproduces the GS-LoRA papers' order)."""
    order = list(range(num_classes))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def make_tasks(cfg: ProtocolConfig, classes: list[str], forgotten: list[int] | None = None,
               first_index: int = 0) -> list[Request]:
    """The task sequence of a protocol, checked against the dataset's classes.

    ``forgotten``: classes the model forgot in earlier requests (its ledger); they are never retained, and count as
    old classes. ``first_index``: the index of the first request in the model's ledger (per-request random streams and
    per-request settings use it).
    """
    forgotten = list(forgotten or [])
    if forgotten and cfg.tasks is None:
        raise ForgetkitError(f"the model has already forgotten {', '.join(repr(classes[c]) for c in forgotten)}; "
                             f"name the classes of further requests (--classes or protocol.tasks) instead of a "
                             f"numbered protocol")
    if cfg.independent and cfg.tasks is None:
        raise ForgetkitError("protocol.independent compares named requests; list them in protocol.tasks")
    tasks = _make_tasks(cfg, classes, forgotten)
    for task in tasks:
        task.index += first_index
    return tasks


def _make_tasks(cfg: ProtocolConfig, classes: list[str], forgotten: list[int]) -> list[Request]:
    num_classes = len(classes)
    if cfg.tasks is not None:
        if not cfg.tasks:
            raise ForgetkitError("protocol.tasks is empty; give at least one list of classes to forget")
        forget_sets = [resolve_class_names(list(names), classes, f"protocol.tasks[{i}]") for i, names in
                       enumerate(cfg.tasks)]
        if cfg.independent:  # alternatives, each from the start model: any class may appear in several
            return [Request(t, "forget", fs, [c for c in range(num_classes) if c not in fs and c not in forgotten],
                            list(forgotten)) for t, fs in enumerate(forget_sets)]
        seen: set[int] = set()
        for i, fs in enumerate(forget_sets):
            again = seen & set(fs)
            if again:
                raise ForgetkitError(f"protocol.tasks[{i}] forgets {classes[min(again)]!r} again; each class can be "
                                     f"forgotten once")
            seen |= set(fs)
        if cfg.retain_classes is not None:
            keep = resolve_class_names(list(cfg.retain_classes), classes, "protocol.retain_classes")
            overlap = set(keep) & (seen | set(forgotten))
            if overlap:
                raise ForgetkitError(f"class {classes[min(overlap)]!r} is both forgotten and retained; remove it from "
                                     f"protocol.retain_classes or from protocol.tasks")
        else:
            keep = [c for c in range(num_classes) if c not in seen and c not in forgotten]
        if not keep:
            raise ForgetkitError("no class would be retained; forgetting every class leaves nothing to keep")
        missing = []
        if cfg.missing_classes:
            missing = resolve_class_names(list(cfg.missing_classes), classes, "protocol.missing_classes")
            if set(missing) - set(keep):
                raise ForgetkitError(f"missing class {classes[min(set(missing) - set(keep))]!r} is not retained; "
                                     f"missing classes must be among the retained ones")
        tasks, old = [], list(forgotten)
        for t, fs in enumerate(forget_sets):
            later = [c for later_fs in forget_sets[t + 1:] for c in later_fs]
            tasks.append(Request(t, "forget", fs, keep + later, list(old), missing))
            old += fs
        return tasks

    k, t_count = cfg.classes_per_request, cfg.num_tasks
    if k < 1 or t_count < 1:
        raise ForgetkitError("protocol.classes_per_request and protocol.num_tasks must be at least 1")
    n = cfg.first_retained if cfg.first_retained is not None else num_classes - k
    if n + k != num_classes:
        raise ForgetkitError(f"first_retained ({n}) + classes_per_request ({k}) must equal the number of classes "
                             f"({num_classes}); leave first_retained unset to use {num_classes - k}")
    if n - (t_count - 1) * k < 1:
        raise ForgetkitError(f"classes_per_request × num_tasks = {k * t_count} needs more than the {num_classes} "
                             f"classes available (at least one class must remain); lower K or T")
    last_retained = n - (t_count - 1) * k
    if cfg.missing < 0 or cfg.missing >= last_retained:
        raise ForgetkitError(f"protocol.missing ({cfg.missing}) must leave at least one retained class with data "
                             f"in every task (the last task retains {last_retained})")
    order = class_order(num_classes, cfg.order_seed)
    tasks = []
    for t in range(t_count):
        lo, hi = n - t * k, n - (t - 1) * k
        tasks.append(Request(t, "forget", order[lo:hi], order[:lo], order[hi:], order[: cfg.missing]))
    return tasks


class Protocol:
    """A protocol bound to a dataset: tasks, held-out validation images, and per-task subsamples."""

    def __init__(self, cfg: ProtocolConfig, splits: DataSplits, seed: int, forgotten: list[int] | None = None,
                 first_index: int = 0, kind=None, known: int | None = None):
        self.cfg, self.splits, self.seed = cfg, splits, seed
        self.tasks = (kind.make_tasks(cfg, splits.classes, list(forgotten or []), first_index, known)
                      if kind is not None else make_tasks(cfg, splits.classes, forgotten, first_index))
        self._pool, val = self._split_validation()
        self.eval_images = splits.test if cfg.eval_split == "test" else splits.train.subset(val)

    @property
    def setting(self) -> str:
        name = "single_step" if len(self.tasks) == 1 else "continual"
        if self.cfg.shots:
            name += f"_{self.cfg.shots}shot"
        if self.tasks[0].missing:
            name += f"_{len(self.tasks[0].missing)}missing"
        return name

    def _split_validation(self) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Per-class pools of trainable indices, and the validation indices held out of them (the same for every
        seed, and the ones ``forgetkit pretrain --val-per-class`` leaves out)."""
        targets = self.splits.train.targets
        held = held_out_mask(self.splits.train, self.cfg.val_per_class)
        val = torch.nonzero(held).flatten()
        pools = {c: torch.nonzero((targets == c) & ~held).flatten() for c in range(len(self.splits.classes))}
        return pools, val

    def _draw(self, classes: list[int], ratio: float, task: int, purpose: str) -> torch.Tensor:
        gen = rng(self.seed, purpose, task)
        chosen = []
        # classes in index order: the same request draws the same images however its classes were listed (one
        # request at a time on a checkpoint, or inside a protocol whose retained classes are in shuffled order)
        for c in sorted(classes):
            pool = self._pool[c]
            n = self.cfg.shots if self.cfg.shots else max(1, round(ratio * len(pool)))
            if n > len(pool):
                raise ForgetkitError(f"class {self.splits.classes[c]!r} has {len(pool)} training images, fewer than "
                                     f"the {n} asked for; lower protocol.shots")
            chosen.append(pool[torch.randperm(len(pool), generator=gen)[:n]])
        return torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)

    def train_images(self):
        """Every training image a request may draw from (the validation hold-out left out)."""
        return self.splits.train.subset(torch.sort(torch.cat(list(self._pool.values()))).values)

    def task_data(self, task: Request) -> RequestData:
        """Training subsets for ``task``: drawn per class from the run's seed and the task index only."""
        forget = self._draw(task.classes, self.cfg.forget_ratio, task.index, "forget_subset")
        retain = self._draw(task.replay, self.cfg.retain_ratio, task.index, "replay_subset")
        return RequestData({"forget": self.splits.train.subset(forget), "retain": self.splits.train.subset(retain)})
