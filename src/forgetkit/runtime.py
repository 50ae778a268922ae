"""Seeding, threads and device: the few process-wide settings a run makes, in one place."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler

from .errors import ForgetkitError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order drawn from the same seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# Every random choice of forgetkit draws from one of these named streams. The numbers are only salts: a stream is
# derived from (seed, request index, salt), so request k's draws never depend on how many numbers request k-1 (or
# model construction, or a crash and resume) consumed. The original code's subsets changed when building the model
# consumed random numbers (docs/gs-lora.md#what-is-implemented).
STREAMS = {
    # per request
    "forget_subset": 1,        # which training images of the forget classes a request may use
    "replay_subset": 2,        # which training images of the retained classes are replay data
    "forget_batches": 11,      # order of the forget stream's class-balanced batches
    "retain_batches": 12,      # order of the replay (retain) stream's class-balanced batches
    "wrong_labels": 31,        # the baselines' random wrong labels
    "second_replay": 41,       # DER++'s second replay stream
    "retrain_init": 51,        # Retrain's fresh initialisation
    "importance_images": 61,   # EWC*/MAS* importance images
    "prototype_images": 71,    # GS-LoRA++ prototype images
    "subspace_images": 72,     # FG-OrIU: the images its subspaces are computed from (per request and stream)
    "lora_init": 81,           # learning: the new LoRA factors' initialisation (LoRA-Sub-DRS)
    "request_global": 91,      # torch's, NumPy's and Python's global generators during a request (dropout)
    "clip_targets": None,      # CLIP text forgetting's random targets (no salt: the documented numbers' draw)
    # verification (per check; the relearning shots per k)
    "verify_images": 101,      # the attacks' and probes' scoring images
    "verify_probe": 102,       # the probe's and k-NN's training images
    "verify_shots": 103,       # relearning: the k images per class (forgotten and retained)
    "verify_rebound": 104,     # retain-only rebound: the retained images of its fine-tune
    # per run (no request index)
    "train_order": 1,          # pre-training: order of the training images
    "augment": 2,              # pre-training: flips (ViT) and caption choice (CLIP)
}


def _derive(seed: int, *parts: int) -> torch.Generator:
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def rng(seed: int, purpose: str, request: int | None = None) -> torch.Generator:
    """The generator of one named purpose (:data:`STREAMS`), derived from the run's seed and the request index."""
    salt = STREAMS[purpose]
    parts = [part for part in (request, salt) if part is not None]
    return _derive(seed, *parts)


def seed_request(seed: int, request: int) -> None:
    """Seed the global generators (dropout and anything else that draws without a generator) for one request, so a
    run resumed at request k continues exactly as the uninterrupted run did."""
    seed_everything(rng(seed, "request_global", request).initial_seed())


def setup_device(device: str = "auto", threads: int = 0) -> torch.device:
    """Pick the device and, on CPU, the number of threads (0 = leave torch's setting: one per core)."""
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


def step_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
                   warmup_prefix: bool = False) -> CosineLRScheduler:
    """The one learning-rate schedule of forgetkit (forgetting requests and both pre-training loops): timm's cosine
    decay counted in optimisation steps, after a linear warm-up from 0. Call ``step_update(step)`` before each step.
    It scales every parameter group's own initial learning rate, so a method may keep per-group rates.

    ``warmup_prefix``: the cosine starts after the warm-up (pre-training) instead of spanning the whole budget with
    the warm-up overlapping its start (forgetting requests).
    """
    return CosineLRScheduler(optimizer, t_initial=max(1, steps - (warmup_steps if warmup_prefix else 0)),
                             lr_min=min_lr, warmup_t=warmup_steps, warmup_prefix=warmup_prefix, t_in_epochs=False)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of the pre-training loops (the learning rate is the scheduler's): backward, update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def process_state():
    """Give the caller back the process-wide settings a run changes: torch's thread count, Python's, NumPy's and
    torch's global random generators (a run seeds them for its own draws), and denormal flushing.

    Denormal floats are flushed to zero during the run: importance weights such as EWC's Fisher (squares of tiny
    gradients) otherwise fill tensors with subnormal numbers that make CPU arithmetic orders of magnitude slower.
    torch cannot report the caller's setting, so it is set back to torch's default (off)."""
    threads = torch.get_num_threads()
    python, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def inference_loader(images, batch_size: int) -> torch.utils.data.DataLoader:
    """The loader of every inference pass (evaluation, features, importance and prototype passes): the images in
    order, unshuffled. One seam, where workers, pinned memory and a device prefetch plug in."""
    return torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def class_means(model: torch.nn.Module, images, classes: list[int], device, batch_size: int = 256) -> torch.Tensor:
    """The mean (un-normalised) embedding of each class's images, rows in ``classes`` order."""
    model.eval()
    dim = model.spec.embed_dim
    sums = torch.zeros(max(classes) + 1 if classes else 0, dim, device=device)
    counts = torch.zeros(len(sums), device=device)
    for x, y in inference_loader(images, batch_size):
        y = y.to(device)
        keep = y < len(sums)
        sums.index_add_(0, y[keep], model.embed(x.to(device))[keep])
        counts.index_add_(0, y[keep], torch.ones(int(keep.sum()), device=device))
    rows = torch.as_tensor(classes, dtype=torch.long, device=device)
    if (counts[rows] == 0).any():
        raise ForgetkitError("a class to learn has no training images; check the data and the protocol")
    return sums[rows] / counts[rows, None]
