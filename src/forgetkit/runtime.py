"""Seeding, threads and device: the few process-wide settings a run makes, in one place."""

from __future__ import annotations

import random
from typing import Callable, Iterable

import numpy as np
import torch

from .errors import ForgetkitError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order drawn from the same seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def derived_generator(seed: int, *parts: int) -> torch.Generator:
    """A generator for one purpose (a task's subsample, a loader's order), derived from the run's seed only.

    Deriving it from (seed, parts) instead of consuming a global stream means that nothing else a run does (such
    as building a model) shifts which images are drawn: the original code's subsets changed when model
    construction consumed random numbers (gs-lora.md §3.6).
    """
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def setup_device(device: str = "auto", threads: int = 0) -> torch.device:
    """Pick the device and, on CPU, the number of threads (0 = leave torch's setting: one per core).

    Denormal floats are flushed to zero: importance weights such as EWC's Fisher (squares of tiny gradients)
    otherwise fill tensors with subnormal numbers that make CPU arithmetic orders of magnitude slower.
    """
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ForgetkitError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ForgetkitError(f"device {device} asked for but CUDA is not available; use device: cpu")
    return dev


class BalancedBatchSampler:
    """Endless batches of dataset indices in which the classes take turns.

    Classes come in a shuffled order, and every class comes round once before any comes twice; within a class the
    images come in a shuffled order, each once before any repeats. So a batch of B images over C classes holds
    min(B, C) distinct classes, and every class is seen within ceil(C / B) steps whatever the class count or the
    number of images per class: a step budget then means the same on 10 classes and on 1,000.
    """

    def __init__(self, targets: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.batch_size, self.generator = batch_size, generator
        self.by_class = [torch.nonzero(targets == c).flatten() for c in torch.unique(targets).tolist()]

    def _endless(self, items: torch.Tensor):
        while True:
            yield from items[torch.randperm(len(items), generator=self.generator)].tolist()

    def __iter__(self):
        images = [self._endless(idx) for idx in self.by_class]
        classes = self._endless(torch.arange(len(self.by_class)))
        while True:
            yield [next(images[next(classes)]) for _ in range(self.batch_size)]


def balanced_batches(dataset, batch_size: int, generator: torch.Generator, device):
    """Endless class-balanced ``(images, labels)`` batches of ``dataset`` on ``device`` (batch capped at the dataset's
    size); None for an empty dataset."""
    if len(dataset) == 0:
        return None
    sampler = BalancedBatchSampler(dataset.targets, min(batch_size, len(dataset)), generator)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    return ((x.to(device), y.to(device)) for x, y in loader)


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
          decay: Callable[[torch.nn.Parameter], bool] = lambda p: p.ndim >= 2) -> torch.optim.AdamW:
    """AdamW with weight decay on the tensors ``decay`` accepts (default: ≥2-d, as timm's optimiser factory) and none
    on the others (biases, norms, tokens)."""
    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if decay(p)], "weight_decay": weight_decay},
                              {"params": [p for p in params if not decay(p)], "weight_decay": 0.0}], lr=lr)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One scheduled step of the pre-training loops: set the learning rate of every group, backward, update."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
