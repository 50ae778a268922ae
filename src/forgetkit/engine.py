"""The forgetting loop: for each task, draw its data, let the method train for a step budget, merge, evaluate.

Data flows one way: data -> protocol -> model -> method -> engine -> metrics -> report. The engine knows nothing
about any particular method.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler
from tqdm.auto import tqdm

from .config import to_dict
from .data import DataConfig, load_data
from .errors import ForgetkitError
from .methods import MethodContext, build_method
from .methods.base import METHODS, NonFiniteLoss, resolved_method_config
from .metrics import PerClass, evaluate_classes, h_mean
from .models import fingerprint, load_model, save_model
from .protocol import Protocol, ProtocolConfig
from .runtime import balanced_batches, derived_generator, seed_everything, setup_device

BUILTIN_MODELS = {"builtin:fmnist_vit": Path(__file__).parent / "assets" / "fmnist_vit"}


@dataclass
class TrainConfig:
    """Optimisation of each request: a fixed number of steps, whatever the size of the data (AdamW, per-step cosine
    schedule with linear warm-up, re-created per request)."""

    steps: int = field(default=300, metadata={
        "help": "optimisation steps per request; one step sees one forget batch and one replay batch"})
    batch_size: int = field(default=32, metadata={
        "help": "images per stream (forget and replay) per step, drawn class-balanced: every class of a stream "
                "comes round before any comes twice (capped at the stream's size)"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (null = the method's default)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on ≥2-d tensors"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the cosine schedule"})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear learning-rate warm-up (timm's)"})
    log_every: int = field(default=25, metadata={"help": "steps averaged into one row of the loss log"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int = field(default=0, metadata={
        "help": "CPU threads (0 = torch's default, one per core); use 1 when another process shares the cores"})


@dataclass
class EvalConfig:
    """How accuracy is measured, and what a request must reach to pass."""

    margin_accuracy: bool = field(default=False, metadata={
        "help": "CosFace only: the original code's margin-penalised accuracy (uses the label); default plain argmax"})
    batch_size: int = 256
    forget_threshold: float = field(default=5.0, metadata={
        "help": "a request passes only if its forgotten classes' held-out accuracy is at most this (percent)"})
    max_retain_drop: float = field(default=5.0, metadata={
        "help": "... and its retained classes' accuracy is at most this many points below the model before it"})


def verdict(after: dict, before: dict, cfg: EvalConfig) -> dict:
    """Whether a request reached its goal, judged on held-out images after it ran (never during training)."""
    failed = []
    if after["acc_f"] is not None and after["acc_f"] > cfg.forget_threshold:
        failed.append(f"forgotten classes still at {after['acc_f']:.1f} % (goal ≤ {cfg.forget_threshold:g} %)")
    if after["acc_r"] is not None and before["acc_r"] is not None and \
            after["acc_r"] < before["acc_r"] - cfg.max_retain_drop:
        failed.append(f"retained classes fell from {before['acc_r']:.1f} to {after['acc_r']:.1f} % (allowed drop "
                      f"{cfg.max_retain_drop:g} points)")
    return {"pass": not failed, "failed": failed}


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


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    """timm's cosine schedule counted in steps, with its linear warm-up from 0."""
    return CosineLRScheduler(optimizer, t_initial=cfg.steps, lr_min=cfg.min_lr, warmup_t=cfg.warmup_steps,
                             t_in_epochs=False)


def _accs(pc: PerClass, task) -> dict[str, float | None]:
    accs = {"acc_f": pc.accuracy(task.forget), "acc_r": pc.accuracy(task.retain),
            "acc_o": pc.accuracy(task.old) if task.old else None,
            # every class forgotten so far (this request's and the earlier ones'): what relapse shows up in
            "acc_f_all": pc.accuracy(task.forget + task.old)}
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
    if min(cfg.train.steps, cfg.train.batch_size, cfg.train.log_every) < 1:
        raise ForgetkitError(f"train.steps ({cfg.train.steps}), train.batch_size ({cfg.train.batch_size}) and "
                             f"train.log_every ({cfg.train.log_every}) must be at least 1; the default budget is "
                             f"train.steps=300")
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
    ctx = MethodContext(device=device, seed=cfg.seed, num_classes=len(splits.classes), steps=cfg.train.steps,
                        batch_size=cfg.train.batch_size)
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
        scheduler = _scheduler(optimizer, cfg.train)
        forget_batches = balanced_batches(data.forget, cfg.train.batch_size,
                                          derived_generator(cfg.seed, task.index, 11), device)
        retain_batches = balanced_batches(data.retain, cfg.train.batch_size,
                                          derived_generator(cfg.seed, task.index, 12), device) or itertools.repeat(None)
        if forget_batches is None:
            raise ForgetkitError(f"task {task.index} has no forget images; check the protocol ratios/shots")
        sums: dict[str, float] = {}
        for step in tqdm(range(cfg.train.steps), desc=f"task {task.index + 1}/{len(protocol.tasks)}",
                         disable=not progress, leave=False):
            scheduler.step_update(step)
            try:
                losses = method.step(next(forget_batches), next(retain_batches), step, optimizer)
            except NonFiniteLoss as err:
                _save_last_good(method, manifest, splits.classes, out / "last_good", task)
                raise ForgetkitError(
                    f"loss became {err.value} at task {task.index}, step {step}; the last good model (before this "
                    f"step) is saved in {out / 'last_good'}. Lower train.lr or the method's loss weights") from None
            method.end_step(step)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                count = (step % cfg.train.log_every) + 1
                loss_log.append({"task": task.index, "step": step + 1, **{k: v / count for k, v in sums.items()}})
                sums = {}
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
            "h_cumulative": h_mean(at_pretrained["acc_f_all"], after["acc_f_all"], after["acc_r"]),
            "h_mean_from_task_start": h_mean(at_start["acc_f"], after["acc_f"], after["acc_r"]),
            "per_class": {"before": before.by_name(splits.classes), "after": current.by_name(splits.classes)},
            "verdict": verdict(after, at_start, cfg.eval),
            "seconds": round(seconds, 2),
            "trainable_params": trainable,
            "total_params": total_params,
            "forget_images": len(data.forget),
            "retain_images": len(data.retain),
            "steps": cfg.train.steps,
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
                       "per_class": pretrained.by_name(splits.classes), "fingerprint": manifest.get("fingerprint")},
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
        "h_cumulative_avg": avg(t["h_cumulative"] for t in tasks),
        "acc_f_avg": avg(t["after"]["acc_f"] for t in tasks),
        "acc_r_avg": avg(t["after"]["acc_r"] for t in tasks),
        "acc_o_avg": avg(t["after"]["acc_o"] for t in tasks),
        "seconds_total": round(sum(t["seconds"] for t in tasks), 2),
    }


def _save_last_good(method, manifest, classes, directory: Path, task) -> None:
    model = method.finish_task().cpu()
    history = list(manifest.get("history", [])) + [{"interrupted_task": task.index, "reason": "non-finite loss"}]
    save_model(model, directory, classes, history=history)
