"""Pre-train a ViT classifier from scratch on a dataset and save it as a forgetkit checkpoint.

The GS-LoRA papers pre-train their own Face Transformer; forgetkit does the same for its embedded Fashion-MNIST
demo, since no pre-trained weights can be downloaded here.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import to_dict
from .data import load_data
from .data.datasets import held_out_mask
from .engine.config import PretrainConfig
from .engine.plan import plan_pretrain
from .errors import ForgetkitError
from .metrics import evaluate_classes
from .models import create_model, save_model
from .outputs import OutputLock
from .runtime import DeviceBatches, Runtime, adamw, process_state, rng, seed_everything, step_scheduler


def pretrain(cfg: PretrainConfig, progress: bool = True, overwrite: bool = False):
    """Train ``cfg.arch`` on ``cfg.data`` and save it to ``cfg.out``; returns ``(model, info)``.

    Runs on the runtime seam as a forgetting run does (docs/scaling.md): one process, or several (``devices``,
    ``torchrun``, SLURM) sharing every batch, in ``precision``, with ``workers`` and ``accumulate``; only rank 0
    writes the checkpoint.

    Args:
        cfg: the recipe.
        progress: progress bars.
        overwrite: replace a checkpoint already in ``cfg.out`` (refused otherwise, before any work).
    """
    plan_pretrain(cfg, overwrite)
    with OutputLock(Path(cfg.out), later=True) as lock, process_state():
        return _pretrain(cfg, progress, lock)


def _pretrain(cfg: PretrainConfig, progress: bool, lock: OutputLock):
    runtime = Runtime.create(cfg)
    runtime.acquire_output(lock)
    device = runtime.device
    seed_everything(cfg.seed)
    splits = load_data(cfg.data)
    if len(splits.classes) < 2:
        raise ForgetkitError(f"{splits.name} has {len(splits.classes)} class; a classifier needs at least two "
                             f"(add class folders, or check data.classes)")
    model = create_model(cfg.arch, len(splits.classes)).to(device)
    splits.with_preprocess(model.spec.preprocess)
    train = splits.train.subset(torch.nonzero(~held_out_mask(splits.train, cfg.val_per_class)).flatten())
    loader = DeviceBatches(train, device, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                           generator=rng(cfg.seed, "train_order"))  # the same order on every rank
    if len(loader) == 0:
        raise ForgetkitError(f"{len(train)} training images are fewer than one batch (batch_size {cfg.batch_size}), "
                             f"so no step would train; lower batch_size (-o batch_size=...) or add images")
    params = list(model.parameters())
    opt = adamw(params, cfg.lr, cfg.weight_decay)
    scheduler = step_scheduler(opt, cfg.epochs * len(loader), cfg.warmup_steps, warmup_prefix=True)
    opt = runtime.setup_optimizer(opt)  # after the schedule: it shares the param groups

    def losses_of(part):
        x, y = part["train"]
        return {"loss": F.cross_entropy(model(x, y), y)}

    flip_gen = rng(cfg.seed, "augment")
    start, step = time.time(), 0
    model.train()
    for epoch in range(cfg.epochs):
        bar = tqdm(loader, desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}", disable=not progress or
                   not runtime.is_writer, leave=False)
        for x, y in bar:
            y = y.to(device)
            if cfg.hflip:  # drawn for the whole batch, so every rank flips the same images
                flip = torch.rand(len(x), generator=flip_gen) < 0.5
                x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(-1), x)
            scheduler.step_update(step)
            loss = runtime.update(losses_of, {"train": (x, y)}, opt, params)["loss"]
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - start
    model.eval()
    per_class = evaluate_classes(model, splits.test, device=device, progress=progress, runtime=runtime)
    acc = 100.0 * per_class.correct.sum().item() / per_class.total.sum().item()
    manifest_extra = {
        "pretrain": {"config": to_dict(cfg), "test_accuracy": acc, "seconds": round(seconds, 1),
                     "dataset": splits.name, "train_images": len(train)},
        "ledger": [],
        "data": cfg.data.recorded(),
    }
    model = model.cpu()
    if runtime.is_writer:
        save_model(model, Path(cfg.out), splits.classes, **manifest_extra)
    runtime.barrier()  # the other ranks return once the checkpoint is written
    return model, {"test_accuracy": acc, "seconds": seconds, "out": cfg.out, "train_images": len(train)}
