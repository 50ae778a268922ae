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
import warnings

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


def make_requests(cfg: ProtocolConfig, classes: list[str], forgotten: list[int] | None = None,
                  first_index: int = 0) -> list[Request]:
    """The request sequence of a protocol, checked against the dataset's classes.

    ``forgotten``: classes the model forgot in earlier requests (its ledger); they are never retained, and count as
    old classes. ``first_index``: the index of the first request in the model's ledger (per-request random streams and
    per-request settings use it).
    """
    forgotten = list(forgotten or [])
    if forgotten and cfg.requests is None:
        raise ForgetkitError(f"the model has already forgotten {', '.join(repr(classes[c]) for c in forgotten)}; "
                             f"name the classes of further requests (--classes or protocol.requests) instead of a "
                             f"numbered protocol")
    if cfg.independent and cfg.requests is None:
        raise ForgetkitError("protocol.independent compares named requests; list them in protocol.requests")
    requests = _make_requests(cfg, classes, forgotten)
    for request in requests:
        request.index += first_index
    return requests


def _make_requests(cfg: ProtocolConfig, classes: list[str], forgotten: list[int]) -> list[Request]:
    num_classes = len(classes)
    if cfg.requests is not None:
        if not cfg.requests:
            raise ForgetkitError("protocol.requests is empty; give at least one list of classes to forget")
        forget_sets = [resolve_class_names(list(names), classes, f"protocol.requests[{i}]") for i, names in
                       enumerate(cfg.requests)]
        if cfg.independent:  # alternatives, each from the start model: any class may appear in several
            return [Request(t, "forget", fs, [c for c in range(num_classes) if c not in fs and c not in forgotten],
                            list(forgotten)) for t, fs in enumerate(forget_sets)]
        seen: set[int] = set()
        for i, fs in enumerate(forget_sets):
            again = seen & set(fs)
            if again:
                raise ForgetkitError(f"protocol.requests[{i}] forgets {classes[min(again)]!r} again; each class can be "
                                     f"forgotten once")
            seen |= set(fs)
        if cfg.retain_classes is not None:
            keep = resolve_class_names(list(cfg.retain_classes), classes, "protocol.retain_classes")
            overlap = set(keep) & (seen | set(forgotten))
            if overlap:
                raise ForgetkitError(f"class {classes[min(overlap)]!r} is both forgotten and retained; remove it from "
                                     f"protocol.retain_classes or from protocol.requests")
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
        requests, old = [], list(forgotten)
        for t, fs in enumerate(forget_sets):
            later = [c for later_fs in forget_sets[t + 1:] for c in later_fs]
            requests.append(Request(t, "forget", fs, keep + later, list(old), missing))
            old += fs
        return requests

    k, t_count = cfg.classes_per_request, cfg.num_requests
    if k < 1 or t_count < 1:
        raise ForgetkitError("protocol.classes_per_request and protocol.num_requests must be at least 1")
    n = cfg.first_retained if cfg.first_retained is not None else num_classes - k
    if n + k != num_classes:
        raise ForgetkitError(f"first_retained ({n}) + classes_per_request ({k}) must equal the number of classes "
                             f"({num_classes}); leave first_retained unset to use {num_classes - k}")
    if n - (t_count - 1) * k < 1:
        raise ForgetkitError(f"classes_per_request × num_requests = {k * t_count} needs more than the {num_classes} "
                             f"classes available (at least one class must remain); lower K or T")
    last_retained = n - (t_count - 1) * k
    if cfg.missing < 0 or cfg.missing >= last_retained:
        raise ForgetkitError(f"protocol.missing ({cfg.missing}) must leave at least one retained class with data "
                             f"in every task (the last task retains {last_retained})")
    order = class_order(num_classes, cfg.order_seed)
    requests = []
    for t in range(t_count):
        lo, hi = n - t * k, n - (t - 1) * k
        requests.append(Request(t, "forget", order[lo:hi], order[:lo], order[hi:], order[: cfg.missing]))
    return requests


def make_tasks(*args, **kwargs) -> list[Request]:
    """Deprecated name of :func:`make_requests`."""
    warnings.warn("make_tasks is deprecated and will be removed in forgetkit 0.3; use make_requests",
                  DeprecationWarning, stacklevel=2)
    return make_requests(*args, **kwargs)


class Protocol:
    """A protocol bound to a dataset: its requests, held-out validation images, and per-request subsamples."""

    def __init__(self, cfg: ProtocolConfig, splits: DataSplits, seed: int, forgotten: list[int] | None = None,
                 first_index: int = 0, kind=None, known: int | None = None):
        self.cfg, self.splits, self.seed = cfg, splits, seed
        self.requests = (kind.make_requests(cfg, splits.classes, list(forgotten or []), first_index, known)
                         if kind is not None else make_requests(cfg, splits.classes, forgotten, first_index))
        self._pool, val = self._split_validation()
        self.eval_images = splits.test if cfg.eval_split == "test" else splits.train.subset(val)

    @property
    def tasks(self) -> list[Request]:
        warnings.warn("Protocol.tasks is deprecated and will be removed in forgetkit 0.3; use Protocol.requests",
                      DeprecationWarning, stacklevel=2)
        return self.requests

    def task_data(self, request: Request) -> RequestData:
        warnings.warn("Protocol.task_data is deprecated and will be removed in forgetkit 0.3; use "
                      "Protocol.request_data", DeprecationWarning, stacklevel=2)
        return self.request_data(request)

    @property
    def setting(self) -> str:
        name = "single_step" if len(self.requests) == 1 else "continual"
        if self.cfg.shots:
            name += f"_{self.cfg.shots}shot"
        if self.requests[0].missing:
            name += f"_{len(self.requests[0].missing)}missing"
        return name

    def _split_validation(self) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Per-class pools of trainable indices, and the validation indices held out of them (the same for every
        seed, and the ones ``forgetkit pretrain --val-per-class`` leaves out)."""
        targets = self.splits.train.targets
        held = held_out_mask(self.splits.train, self.cfg.val_per_class)
        val = torch.nonzero(held).flatten()
        pools = {c: torch.nonzero((targets == c) & ~held).flatten() for c in range(len(self.splits.classes))}
        return pools, val

    def _draw(self, classes: list[int], ratio: float, request: int, purpose: str) -> torch.Tensor:
        gen = rng(self.seed, purpose, request)
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

    def request_data(self, request: Request) -> RequestData:
        """Training subsets for ``task``: drawn per class from the run's seed and the task index only."""
        forget = self._draw(request.classes, self.cfg.forget_ratio, request.index, "forget_subset")
        retain = self._draw(request.replay, self.cfg.retain_ratio, request.index, "replay_subset")
        return RequestData({"forget": self.splits.train.subset(forget), "retain": self.splits.train.subset(retain)})
