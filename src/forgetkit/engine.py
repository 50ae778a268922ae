"""The forgetting loop: for each task, subsample, let the method train, merge, evaluate.

Data flows one way: data -> protocol -> model -> method -> engine -> metrics -> report. The engine knows nothing
about any particular method.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import to_dict
from .data import DataConfig, load_data
from .errors import ForgetkitError
from .methods import MethodContext, build_method
from .methods.base import METHODS, NonFiniteLoss, resolved_method_config
from .metrics import PerClass, evaluate_classes, h_mean
from .models import fingerprint, load_model, save_model
from .protocol import Protocol, ProtocolConfig
from .runtime import cycle, derived_generator, seed_everything, setup_device

BUILTIN_MODELS = {"builtin:fmnist_vit": Path(__file__).parent / "assets" / "fmnist_vit"}


@dataclass
class TrainConfig:
    """Optimisation of each task (AdamW, cosine schedule stepped per epoch, re-created per task)."""

    epochs: int = field(default=5, metadata={"help": "epochs per task; an epoch is one pass over the larger of the "
                                                     "forget and retain subsets, cycling the smaller"})
    batch_size: int = field(default=32, metadata={"help": "images per stream (forget and retain) per step"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (null = the method's default)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on ≥2-d tensors"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the cosine schedule"})
    warmup_epochs: int = field(default=0, metadata={"help": "epochs of linear learning-rate warm-up"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = torch's default, one per core)"})


@dataclass
class EvalConfig:
    """How accuracy is measured."""

    margin_accuracy: bool = field(default=False, metadata={
        "help": "CosFace only: the original code's margin-penalised accuracy (uses the label); default plain argmax"})
    batch_size: int = 256


@dataclass
class RunConfig:
    """A whole forgetting run; saved as ``config.yaml`` next to its results."""

    model: str = field(default="builtin:fmnist_vit", metadata={
        "help": "forgetkit checkpoint folder, or builtin:fmnist_vit (the shipped Fashion-MNIST ViT)"})
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "gs_lora"}, metadata={
        "help": "name: a registered method, plus that method's fields"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = field(default=0, metadata={"help": "seed of every random choice of the run"})
    output_dir: str = field(default="runs/forget", metadata={"help": "where results, report and model go"})
    save_model: bool = field(default=True, metadata={"help": "save the edited model and per-task adapters"})


def resolve_model_path(name: str) -> Path:
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if name.startswith("builtin:"):
        raise ForgetkitError(f"unknown built-in model '{name}'; known: {', '.join(BUILTIN_MODELS)}")
    return Path(name)


def _cosine_lr(cfg: TrainConfig, base_lr: float, epoch: int) -> float:
    if epoch < cfg.warmup_epochs:
        return base_lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    t = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
    return cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def _loader(dataset, batch_size: int, generator: torch.Generator):
    if len(dataset) == 0:
        return None
    return torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                       drop_last=False, generator=generator)


def _accs(pc: PerClass, task) -> dict[str, float | None]:
    accs = {"acc_f": pc.accuracy(task.forget), "acc_r": pc.accuracy(task.retain),
            "acc_o": pc.accuracy(task.old) if task.old else None}
    if task.missing:  # Acc_r counts the missing classes (as T-PAMI Table 5); Acc_m and Acc_r with data apart
        accs["acc_m"] = pc.accuracy(task.missing)
        accs["acc_r_data"] = pc.accuracy(task.replay)
    return accs


def run_forgetting(cfg: RunConfig, progress: bool = True, overwrite: bool = False,
                   model: torch.nn.Module | None = None) -> dict:
    """Run a forgetting protocol end to end and write its outputs; returns the results dict.

    ``model``, when given, replaces ``cfg.model``: any classifier with ``embed``, ``head`` and a ``spec`` giving
    ``preprocess``, ``lora_targets`` and ``group_pattern``, whose classes are the data's (e.g. CLIP's image tower
    with a zero-shot head). It is edited in place, and only forgetkit ViTs can be saved (``save_model: false``).
    """
    from .report import write_outputs

    out = Path(cfg.output_dir)
    if (out / "results.json").exists() and not overwrite:
        raise ForgetkitError(f"{out} already holds results.json; choose another output_dir or pass --overwrite")
    method_spec = resolved_method_config(cfg.method)  # validates the method section before any work
    device = setup_device(cfg.train.device, cfg.train.threads)
    seed_everything(cfg.seed)

    splits = load_data(cfg.data)
    if model is None:
        model, manifest = load_model(resolve_model_path(cfg.model))
    else:
        if cfg.save_model:
            raise ForgetkitError("a model passed in directly cannot be saved as a forgetkit checkpoint; set "
                                 "save_model: false")
        manifest = {"classes": list(splits.classes), "fingerprint": fingerprint(model), "history": []}
    if list(manifest["classes"]) != list(splits.classes):
        raise ForgetkitError(f"the model was trained on classes {manifest['classes'][:5]}..., the data has "
                             f"{splits.classes[:5]}...; use the dataset the model was trained on")
    splits.with_preprocess(model.spec.preprocess)
    protocol = Protocol(cfg.protocol, splits, cfg.seed)
    model = model.to(device)
    ctx = MethodContext(device=device, seed=cfg.seed, num_classes=len(splits.classes), epochs=cfg.train.epochs)
    method = build_method(method_spec, ctx)
    lr = cfg.train.lr if cfg.train.lr is not None else METHODS.get(method_spec["name"]).default_lr

    def evaluate(m) -> PerClass:
        return evaluate_classes(m, protocol.eval_images, device=device, batch_size=cfg.eval.batch_size,
                                margin=cfg.eval.margin_accuracy, progress=progress)

    pretrained = evaluate(model)
    current = pretrained
    total_params = sum(p.numel() for p in model.parameters())
    task_results, loss_log = [], []
    for task in protocol.tasks:
        start = time.time()
        data = protocol.task_data(task)
        before = current
        method.setup_task(model, task, data)
        trainable = method.trainable_count()
        optimizer = method.make_optimizer(lr, cfg.train.weight_decay)
        forget_loader = _loader(data.forget, cfg.train.batch_size, derived_generator(cfg.seed, task.index, 11))
        retain_loader = _loader(data.retain, cfg.train.batch_size, derived_generator(cfg.seed, task.index, 12))
        if forget_loader is None:
            raise ForgetkitError(f"task {task.index} has no forget images; check the protocol ratios/shots")
        steps = max(len(forget_loader), len(retain_loader) if retain_loader else 0)
        forget_iter = cycle(forget_loader)
        retain_iter = cycle(retain_loader) if retain_loader else itertools.repeat(None)
        bar = tqdm(total=cfg.train.epochs * steps, desc=f"task {task.index + 1}/{len(protocol.tasks)}",
                   disable=not progress, leave=False)
        for epoch in range(cfg.train.epochs):
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(cfg.train, lr, epoch)
            sums: dict[str, float] = {}
            for step in range(steps):
                xf, yf = next(forget_iter)
                retain_batch = next(retain_iter)
                retain_batch = (retain_batch[0].to(device), retain_batch[1].to(device)) if retain_batch else None
                try:
                    losses = method.step((xf.to(device), yf.to(device)), retain_batch, epoch, optimizer)
                except NonFiniteLoss as err:
                    _save_last_good(method, manifest, splits.classes, out / "last_good", task)
                    raise ForgetkitError(
                        f"loss became {err.value} at task {task.index}, epoch {epoch}, step {step}; the last good "
                        f"model (before this step) is saved in {out / 'last_good'}. Lower train.lr or the "
                        f"method's loss weights") from None
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})
            method.end_epoch(epoch)
            loss_log.append({"task": task.index, "epoch": epoch, **{k: v / steps for k, v in sums.items()}})
        bar.close()
        stats = method.task_stats()
        if cfg.save_model:
            method.save_task(out / "adapters" / f"task_{task.index}")
        model = method.finish_task()
        model.eval()
        seconds = time.time() - start
        current = evaluate(model)
        after, at_start, at_pretrained = _accs(current, task), _accs(before, task), _accs(pretrained, task)
        task_results.append({
            "index": task.index,
            "forget_classes": [splits.classes[c] for c in task.forget],
            "retain_classes": [splits.classes[c] for c in task.retain],
            "old_classes": [splits.classes[c] for c in task.old],
            "missing_classes": [splits.classes[c] for c in task.missing],
            "before": at_start,
            "after": after,
            "pretrained": at_pretrained,
            "h_mean": h_mean(at_pretrained["acc_f"], after["acc_f"], after["acc_r"]),
            "h_mean_from_task_start": h_mean(at_start["acc_f"], after["acc_f"], after["acc_r"]),
            "seconds": round(seconds, 2),
            "trainable_params": trainable,
            "total_params": total_params,
            "forget_images": len(data.forget),
            "retain_images": len(data.retain),
            "steps": steps * cfg.train.epochs,
            **stats,
        })

    results = {
        "method": method_spec["name"],
        "dataset": splits.name,
        "setting": protocol.setting,
        "seed": cfg.seed,
        "eval_split": cfg.protocol.eval_split,
        "accuracy": "margin" if cfg.eval.margin_accuracy else "argmax",
        "pretrained": {"acc": pretrained.accuracy(range(len(splits.classes))),
                       "fingerprint": manifest.get("fingerprint")},
        "tasks": task_results,
        "summary": _summary(task_results),
        "loss_log": loss_log,
    }
    if cfg.save_model:
        history = list(manifest.get("history", [])) + [
            {"method": method_spec["name"], "forgotten": t["forget_classes"]} for t in task_results]
        save_model(model.cpu(), out / "model", splits.classes, history=history,
                   source_fingerprint=manifest.get("fingerprint"))
    write_outputs(out, results, to_dict(cfg) | {"method": method_spec})
    return results


def _summary(tasks: list[dict]) -> dict:
    def avg(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {
        "h_mean_avg": avg(t["h_mean"] for t in tasks),
        "acc_f_avg": avg(t["after"]["acc_f"] for t in tasks),
        "acc_r_avg": avg(t["after"]["acc_r"] for t in tasks),
        "acc_o_avg": avg(t["after"]["acc_o"] for t in tasks),
        "seconds_total": round(sum(t["seconds"] for t in tasks), 2),
    }


def _save_last_good(method, manifest, classes, directory: Path, task) -> None:
    model = method.finish_task().cpu()
    history = list(manifest.get("history", [])) + [{"interrupted_task": task.index, "reason": "non-finite loss"}]
    save_model(model, directory, classes, history=history)
