"""Seeding, threads and device: the few process-wide settings a run makes, in one place."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler

from .data.datasets import PIXEL_CACHE, set_pixel_cache
from .errors import ForgetkitError
from .extras import require


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
    "verify_novel": 105,       # never-seen classes (eval.verify.novel): their probe and scoring images
    "verify_novel_classes": 106,  # which of them stand in for a request's forgotten classes
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
    loader = DeviceBatches(dataset, device, batch_sampler=sampler)
    return ((x, y.to(device)) for x, y in loader)


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
    threads, loader, cache = torch.get_num_threads(), dict(_LOADER), PIXEL_CACHE["budget"]
    python, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        _LOADER.update(loader)
        PIXEL_CACHE["budget"] = cache
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def inference_loader(images, batch_size: int, device=None) -> DeviceBatches:
    """The loader of every inference pass (evaluation, features, importance and prototype passes): the images in
    order, unshuffled, normalised on ``device`` (default the CPU), labels on the CPU, with the run's workers and
    pinned memory (:func:`set_loader_options`)."""
    return DeviceBatches(images, device or "cpu", batch_size=batch_size, shuffle=False)


class _PixelItems(torch.utils.data.Dataset):
    """A labelled image dataset's items as uint8 pixels where they can stay uint8 (:meth:`LabeledImages.item`)."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images.item(index, defer=True)

    def collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of uint8 pixels (or of normalised images, where some could not stay uint8).

        Decoded images are height × width × channels in memory: stacked in that order they are one contiguous copy
        (25 times faster than stacking their channels-first views) and the batch is a channels-last view, which
        :meth:`Preprocess.normalise` turns into the usual layout while it makes the batch float."""
        images, labels = [image for image, _ in items], torch.as_tensor([label for _, label in items])
        if any(image.dtype != torch.uint8 for image in images):
            images = [self.images.preprocess.normalise(image[None])[0] if image.dtype == torch.uint8 else image
                      for image in images]
        elif all(image.permute(1, 2, 0).is_contiguous() for image in images):
            channels_last = [image.permute(1, 2, 0) for image in images]
            return torch.utils.data.default_collate(channels_last).permute(0, 3, 1, 2), labels
        return torch.utils.data.default_collate(images), labels


class DeviceBatches:
    """A DataLoader whose batches reach ``device`` normalised. forgetkit's own datasets hand it uint8 images at the
    model's size; they are batched as uint8 (a quarter of float32's bytes through the workers' shared memory, the
    pinned buffer and the copy to a GPU) and normalised a whole batch at a time on ``device``, with the same
    operations as one image at a time (:meth:`Preprocess.normalise`). Any other dataset's batches are moved as they
    are."""

    def __init__(self, images, device, **loader_args):
        self.device = torch.device(device)
        self.preprocess = getattr(images, "preprocess", None)
        if callable(getattr(images, "item", None)):
            source = _PixelItems(images)
            loader_args["collate_fn"] = source.collate
        else:
            source = images
        self.loader = torch.utils.data.DataLoader(source, **loader_args, **_loader_options())

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8 and self.preprocess is not None:
                x = self.preprocess.normalise(x)
            yield x, y


_LOADER = {"num_workers": 0, "pin_memory": False}
"""the DataLoader settings of every loader a run makes (process-wide, like torch's thread count)"""


def set_loader_options(workers: int, pin_memory: bool) -> None:
    """Decode and preprocess images in ``workers`` processes (0: in this one) and, for a GPU, into pinned memory:
    the settings of the training streams' and every inference pass's loaders (``train.workers``)."""
    _LOADER.update(num_workers=workers, pin_memory=pin_memory)


def _loader_options() -> dict:
    options = dict(_LOADER)
    if options["num_workers"]:
        options["prefetch_factor"] = 4  # batches each worker prepares ahead
    return options


@torch.no_grad()
def class_means(model: torch.nn.Module, images, classes: list[int], device, batch_size: int = 256) -> torch.Tensor:
    """The mean (un-normalised) embedding of each class's images, rows in ``classes`` order."""
    model.eval()
    dim = model.spec.embed_dim
    sums = torch.zeros(max(classes) + 1 if classes else 0, dim, device=device)
    counts = torch.zeros(len(sums), device=device)
    for x, y in inference_loader(images, batch_size, device):
        y = y.to(device)
        keep = y < len(sums)
        sums.index_add_(0, y[keep], model.embed(x)[keep])
        counts.index_add_(0, y[keep], torch.ones(int(keep.sum()), device=device))
    rows = torch.as_tensor(classes, dtype=torch.long, device=device)
    if (counts[rows] == 0).any():
        raise ForgetkitError("a class to learn has no training images; check the data and the protocol")
    return sums[rows] / counts[rows, None]


_KEEPING = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (``train.cpu_memory: keep``); whether it did.

    By default glibc hands every freed block of more than a few MB back to the operating system, and the next
    batch or activation of that size faults its pages in again, zero-filled: on the 2-core machine that took longer
    than the arithmetic of a float batch (docs/scaling.md). These are the settings PyTorch's CPU tuning guide gets
    by preloading jemalloc or tcmalloc: blocks up to 32 MB come from the heap, and up to 1 GB of free heap is kept.
    They change no number, only where memory comes from; they last for the process (glibc cannot report the
    values it had, so nothing sets them back). Elsewhere than Linux with glibc this does nothing."""
    global _KEEPING
    if _KEEPING:
        return True
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's malloc.h
    _KEEPING = bool(mallopt(m_mmap_threshold, 32 * 2**20) and mallopt(m_trim_threshold, 2**30)
                    and mallopt(m_top_pad, 256 * 2**20))
    return _KEEPING


class NonFiniteLoss(Exception):
    """Raised by :meth:`Runtime.update` before an update when a loss is NaN or infinite."""

    def __init__(self, value: float):
        super().__init__(value)
        self.value = value


_WORKER = False
_FABRICS: dict = {}
"""the one Fabric this process launched (keyed by its settings), which every later run of the process reuses"""


def quiet_worker() -> None:
    """Silence this process's reports: it is one of several and not rank 0, which prints and logs for all (errors
    still reach stderr)."""
    global _WORKER
    _WORKER = True
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the process's stdout until it exits)
    logging.getLogger("forgetkit").setLevel(logging.ERROR)


def is_worker() -> bool:
    """True in a process of several that is not rank 0 (it reports nothing; the CLI prints only rank 0's verdict)."""
    return _WORKER


class Runtime:
    """The one seam between a request's training and the hardware: device, processes, precision and gradient
    accumulation. Methods call it (:meth:`autocast`, :meth:`backward`, :meth:`update`, :meth:`all_gather`,
    :attr:`is_writer`) and never know how many processes run or in which precision.

    One process in float32 (the default) needs no engine: every call is the plain torch call, so the numbers are
    those of forgetkit without the seam. Anything more (``train.devices`` > 1, ``train.precision`` mixed, a run
    launched by ``torchrun`` or SLURM) goes through Lightning Fabric: its launcher and cluster environments, its
    process group, collectives and precision plugins (the ``dist`` extra).

    Several processes split every step's global batch (the same draw on every rank, from the run's seed) into
    equal shares and average their gradients with one all-reduce of the trainable parameters' gradients before the
    update, which is what DDP computes. Methods reach their modules through many paths (students, teachers, split
    backbones), which a DDP wrapper would not see, and LoRA leaves parameters without gradients, DDP's
    unused-parameter trap; the explicit all-reduce has neither problem (docs/scaling.md).
    """

    def __init__(self, device: torch.device, fabric=None, accumulate: int = 1):
        self.device, self.fabric, self.accumulate = device, fabric, accumulate

    @classmethod
    def create(cls, train) -> Runtime:
        """The runtime of a :class:`~forgetkit.engine.config.TrainConfig` (its device, threads, devices, strategy,
        precision and accumulate)."""
        runtime = cls._create(train)
        set_loader_options(train.workers, runtime.device.type == "cuda")
        set_pixel_cache(train.cache_gb)
        if train.cpu_memory == "keep" and runtime.device.type == "cpu":
            keep_freed_memory()
        return runtime

    @classmethod
    def _create(cls, train) -> Runtime:
        device = setup_device(train.device, train.threads)  # checks the device, sets the threads
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun, or Fabric's launcher re-running us
        if train.devices == 1 and train.precision == "32" and train.strategy == "auto" and not launched:
            return cls(device, accumulate=train.accumulate)
        fabric_module = require("lightning_fabric", f"train.devices={train.devices} / train.precision="
                                                    f"{train.precision} / a multi-process launch")
        accelerator = {"auto": "auto", "cpu": "cpu", "mps": "mps"}.get(train.device, "cuda")
        devices, num_nodes = train.devices, train.num_nodes
        if launched and train.devices == 1:  # torchrun: its processes per node and its nodes
            world = int(os.environ["WORLD_SIZE"])
            devices = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            num_nodes = max(1, world // devices)
        if ":" in train.device:
            devices = [int(train.device.split(":")[1])]
        strategy = "ddp" if (launched or train.devices > 1) and train.strategy == "auto" else train.strategy
        key = (accelerator, str(devices), strategy, train.precision, num_nodes)
        several = launched or train.devices * train.num_nodes > 1
        if key not in _FABRICS:  # several processes launch once: the runs of a bench share them
            if _FABRICS and several:
                raise ForgetkitError("the runs of one process must share train.device, train.devices, "
                                     "train.strategy, train.precision and train.num_nodes; run the others "
                                     "separately")
            try:
                fabric = fabric_module.Fabric(accelerator=accelerator, devices=devices, strategy=strategy,
                                              precision=train.precision, num_nodes=num_nodes)
            except (ValueError, RuntimeError, TypeError) as err:
                raise ForgetkitError(f"cannot set up train.device={train.device}, train.devices={train.devices}, "
                                     f"train.strategy={train.strategy}, train.precision={train.precision}: "
                                     f"{str(err).splitlines()[0]}") from None
            fabric.launch()
            if not several:  # one process: nothing to share, a new Fabric per run
                return cls(fabric.device, fabric, train.accumulate)
            _FABRICS[key] = fabric
        fabric = _FABRICS[key]
        if fabric.global_rank != 0:
            quiet_worker()
        return cls(fabric.device, fabric, train.accumulate)

    # ---- processes
    @property
    def world_size(self) -> int:
        return self.fabric.world_size if self.fabric is not None else 1

    @property
    def rank(self) -> int:
        return self.fabric.global_rank if self.fabric is not None else 0

    @property
    def is_writer(self) -> bool:
        """Only this process writes (results, ledger, checkpoints, logs, edits)."""
        return self.rank == 0

    def acquire_output(self, lock) -> None:
        """Take the output folder's lock (:class:`forgetkit.outputs.OutputLock`, made with ``later=True``) in the
        process that writes; the others write nothing and take none."""
        if self.is_writer:
            lock.acquire()

    def barrier(self) -> None:
        if self.world_size > 1:
            self.fabric.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (a picklable value; Fabric's collective)."""
        return self.fabric.broadcast(obj, src=0) if self.world_size > 1 else obj

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on every rank), stacked on a new first dimension."""
        if self.world_size == 1:
            return tensor[None]
        return self.fabric.all_gather(tensor)

    # ---- the step
    def autocast(self):
        """The forward pass's precision context (Fabric's precision plugin; nothing in float32)."""
        return self.fabric.autocast() if self.fabric is not None else contextlib.nullcontext()

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer as the precision plugin steps it (16-mixed: through its gradient scaler)."""
        return self.fabric.setup_optimizers(optimizer) if self.fabric is not None else optimizer

    def shares(self, batch: dict) -> list[dict]:
        """This process's part of every stream of a step's global ``batch``, cut into ``accumulate`` micro-batches
        (each stream's images split as evenly as they go). One process, no accumulation: ``[batch]`` itself."""
        parts = self.world_size * self.accumulate
        if parts == 1:
            return [batch]
        cut = {}
        for name, stream in batch.items():
            if stream is None:
                cut[name] = [None] * parts
                continue
            x, y = stream
            if len(y) < parts:
                raise ForgetkitError(f"the {name} stream has {len(y)} images a step, fewer than train.devices × "
                                     f"train.accumulate = {parts}; raise train.batch_size or lower those")
            cut[name] = list(zip(x.tensor_split(parts), y.tensor_split(parts)))
        mine = range(self.rank * self.accumulate, (self.rank + 1) * self.accumulate)
        return [{name: cut[name][i] for name in batch} for i in mine]

    def update(self, losses_of: Callable[[dict], dict[str, torch.Tensor]], batch: dict,
               optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
               before_step: Callable[[], None] | None = None,
               after_step: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
        """One update from the named losses ``losses_of`` gives on ``batch`` (a dict of ``(images, labels)``
        streams; the key ``loss`` is optimised): this process's share of the batch in ``accumulate`` micro-batches,
        each forward in the run's precision and checked finite before any update, the gradients of ``params``
        averaged over the processes, then ``before_step`` (gradient hooks), the optimiser step and ``after_step``.
        Returns the losses (averaged over the micro-batches). One process in float32: zero_grad, forward,
        backward, step, as a plain loop does."""
        parts = self.shares(batch)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for part in parts:
            with self.autocast():
                losses = losses_of(part)
            if not torch.isfinite(losses["loss"]):
                raise NonFiniteLoss(losses["loss"].item())
            self.backward(losses["loss"], len(parts))
            if len(parts) == 1:
                totals = losses
            else:
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value.detach().float() / len(parts)
        self.finish_update(optimizer, params, before_step, after_step)
        return totals

    def finish_update(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                      before_step: Callable[[], None] | None = None,
                      after_step: Callable[[], None] | None = None) -> None:
        """After the backward passes: the gradients averaged over the processes, ``before_step``, the optimiser
        step (through Fabric's wrapper, :meth:`setup_optimizer`, when it steps the precision), ``after_step``."""
        self.sync_gradients(params, optimizer)
        if before_step is not None:
            before_step()
        optimizer.step()
        if after_step is not None:
            after_step()

    def backward(self, loss: torch.Tensor, parts: int = 1) -> None:
        """Backward of one micro-batch's loss, weighted so that the ``parts`` micro-batches add up to their mean."""
        loss = loss / parts if parts > 1 else loss
        if self.fabric is not None:
            self.fabric.backward(loss)
        else:
            loss.backward()

    def sync_gradients(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """Before the method's gradient hooks: unscale (16-mixed) and average the gradients over the processes.

        One flat all-reduce of every trainable gradient, with a flag per parameter, so a parameter no process
        computed a gradient for keeps none (AdamW skips it, as in one process) and the collectives match on every
        rank whatever each rank's data touched."""
        if self.fabric is None:
            return
        scaler = getattr(self.fabric.strategy.precision, "scaler", None)
        if scaler is not None:  # the hooks (clipping, projections) read true gradients
            scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
        if self.world_size == 1:
            return
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params])
        reduced = self.fabric.all_reduce(torch.cat([flags, flat]), reduce_op="sum")
        flags, flat = reduced[: len(params)], reduced[len(params):] / self.world_size
        offset = 0
        for param, flag in zip(params, flags.tolist()):
            n = param.numel()
            param.grad = flat[offset: offset + n].view_as(param).to(param.dtype) if flag else None
            offset += n
