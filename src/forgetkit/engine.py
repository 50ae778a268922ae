"""The runner: every request on every model goes through :class:`Editor` (fit, evaluate, judge, keep the edit), and
:func:`run_forgetting` runs a sequence of them, saving the run's state after each (docs/ledger.md).

Data flows one way: data -> protocol -> model -> method -> runner -> metrics -> report. The runner knows no method
and no request kind by name: methods declare what they support and require, kinds what they measure and judge.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import to_dict
from .data import load_data
from .errors import ForgetkitError
from .io import read_json, save_weights
from .kinds import REQUEST_KINDS, RequestKind, forgotten_classes
from .methods import MethodContext, build_method
from .methods.base import METHODS, Method, NonFiniteLoss, model_capabilities
from .methods.configs import MethodConfig
from .metrics import PerClass, evaluate_classes
from .models import fingerprint, save_model
from .models.formats import load_checkpoint, resolve_model_path
from .models.presets import ModelSpec
from .models.vit import ForgetModel
from .outputs import OutputLock
from .plan import plan_run
from .protocol import Protocol, Task, TaskData
from .run_config import EvalConfig, RunConfig, TrainConfig, VerifyConfig
from .runstate import RunLog, RunState, crash_point
from .runtime import balanced_batches, process_state, rng, seed_everything, seed_request, setup_device, step_scheduler

logger = logging.getLogger("forgetkit")


def save_checkpoint(model: torch.nn.Module, directory: Path, classes: list[str], **extra) -> Path:
    """Save ``model`` as the kind of checkpoint it was loaded from (a model may define ``save_checkpoint``)."""
    own = getattr(model, "save_checkpoint", None)
    return own(directory, classes, **extra) if own else save_model(model, directory, classes, **extra)


@dataclass
class Editor:
    """What every request of a run shares: the method, the evaluation images and the settings."""

    method: Method
    kind: RequestKind
    classes: list[str]
    eval_images: Any
    train: TrainConfig
    eval: EvalConfig
    seed: int
    lr: float
    device: torch.device
    progress: bool = False
    other_images: dict = field(default_factory=dict)
    verifier: Any = None
    """a :class:`forgetkit.verify.Verifier` run after every request (eval.verify), or None"""

    @classmethod
    def create(cls, method_config: MethodConfig, kind: RequestKind, model, classes: list[str], eval_images,
               train: TrainConfig, thresholds: EvalConfig, seed: int, device, progress: bool = False,
               other_images: dict | None = None, ledger: list[dict] | None = None, source: Path | None = None):
        """Build the method for ``model`` (checked before any work) and the editor around it: what a file-writing
        run and an in-memory :func:`forgetkit.unlearn` share."""
        ctx = MethodContext(device=device, seed=seed, num_classes=len(classes), steps=train.steps,
                            batch_size=train.batch_size, classes=classes, ledger=list(ledger or []), source=source)
        method = build_method(method_config, ctx)
        method.check_model(model, kind.name)
        lr = train.lr if train.lr is not None else METHODS.get(method_config.name).default_lr
        return cls(method, kind, classes, eval_images, train, thresholds, seed, lr, device, progress,
                   other_images or {})

    def evaluate(self, model) -> PerClass:
        return evaluate_classes(model, self.eval_images, device=self.device, batch_size=self.eval.batch_size,
                                margin=self.eval.margin_accuracy, progress=self.progress,
                                batch_mean=self.eval.batch_mean)

    def evaluate_other(self, model) -> dict[str, float]:
        """Accuracy on each of ``eval.other_data`` over its own classes (zero-shot models): collateral damage."""
        return {name: 100.0 * (model.predict(images, images.classes) == images.targets).float().mean().item()
                for name, images in self.other_images.items()}

    def run(self, model: torch.nn.Module, task: Task, data: TaskData, before: PerClass, pretrained: PerClass,
            log: RunLog | None = None, edit_dir: Path | None = None, last_good: Path | None = None):
        """One request: let the method fit it (by default, the step loop below), evaluate, judge.

        Returns (model, record, loss rows, per-class accuracy after)."""
        start = time.time()
        seed_request(self.seed, task.index)
        method = self.method
        fingerprint_before = fingerprint(model)
        reference = self.kind.reference(task, method.ctx.ledger, method.ctx.source, self.classes)
        if reference is not None:  # measured before the request: it may rebuild weights the method then changes
            reference["accuracy"] = self.evaluate(reference.pop("model").to(self.device))
        other_before = self.evaluate_other(model)
        original = copy.deepcopy(model) if edit_dir is not None else None
        loss_rows: list[dict] = []
        method.fit(model, task, data, lambda: self._train_steps(task, data, log, last_good, loss_rows))
        trainable = method.trainable_count()
        stats = method.task_stats()
        staging = edit_dir.with_name(f".{edit_dir.name}.tmp") if edit_dir is not None else None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        saved_edit = method.save_task(staging) if staging is not None else False
        model = method.finish_task()
        model.eval()
        edit = None
        if staging is not None:  # written aside, then renamed into place: never half an edit
            edit = _record_edit(method, original, model, staging, saved_edit)
            shutil.rmtree(edit_dir, ignore_errors=True)
            os.replace(staging, edit_dir)
            edit["path"] = f"edits/{edit_dir.name}"
        seconds = time.time() - start
        after = self.evaluate(model)
        metrics = self.kind.measure(task, before, after, pretrained)
        if reference is not None:
            metrics.update(self.kind.against_reference(task, after, fingerprint(model), reference))
        metrics.update(self.kind.model_metrics(task, model, self.eval_images, self.classes, self.device))
        forgotten = self.kind.forgotten_after(task)
        if self.verifier is not None and forgotten:
            metrics["verify"] = self.verifier(model, forgotten, list(task.retain))
        if self.other_images:
            for side, values in (("before", other_before), ("after", self.evaluate_other(model))):
                metrics[side]["acc_other"] = sum(values.values()) / len(values)
                metrics[side]["acc_other_per_dataset"] = values
        names = self.classes
        record = {
            "index": task.index,
            "kind": self.kind.name,
            **self.kind.describe(task, names),
            **metrics,
            # the classes the request is about (for learning: only the classes the model knows)
            "per_class": {side: {names[c]: pc.accuracy([c]) for c in sorted(task.forget + task.retain + task.old)}
                          for side, pc in (("before", before), ("after", after))},
            "verdict": self.kind.verdict(metrics, self.eval),
            "seconds": round(seconds, 2),
            "trainable_params": trainable,
            "total_params": sum(p.numel() for p in model.parameters()),
            "forget_images": len(data.forget),
            "retain_images": len(data.retain),
            "steps": self.train.steps,
            "fingerprint_before": fingerprint_before,
            "fingerprint_after": fingerprint(model),
            "edit": edit,
            **stats,
        }
        if log is not None:  # the request's numbers: its accuracies after, and the kind's summary values
            numbers = {**metrics["after"], **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
            log.log(task.index, self.train.steps, {k: v for k, v in numbers.items() if isinstance(v, (int, float))},
                    (task.index + 1) * self.train.steps)
        return model, record, loss_rows, after

    def _train_steps(self, task: Task, data: TaskData, log: RunLog | None, last_good: Path | None,
                     loss_rows: list[dict]) -> None:
        """The runner's step loop: ``train.steps`` optimisation steps, each on one class-balanced batch of every
        stream the request kind declares (forget: forget and retain), the learning rate on the shared schedule,
        losses logged as they go."""
        method, cfg = self.method, self.train
        optimizer = method.make_optimizer(self.lr, cfg.weight_decay)
        scheduler = step_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr)
        if not self.kind.streams:
            raise ForgetkitError(f"{self.kind.name} requests hand no data to a step loop; method {method.name} "
                                 f"must fit them itself (forgetkit methods lists which do)")
        # the request kind's data streams, in its order (forget: forget, retain), each class-balanced and endless
        streams = [balanced_batches(getattr(data, name), cfg.batch_size, rng(self.seed, f"{name}_batches",
                                                                             task.index), self.device)
                   for name in self.kind.streams]
        if streams[0] is None:
            raise ForgetkitError(f"request {task.index + 1} has no {self.kind.streams[0]} images; check the "
                                 f"protocol ratios/shots")
        streams = [stream or itertools.repeat(None) for stream in streams]
        sums: dict[str, float] = {}
        for step in tqdm(range(cfg.steps), desc=f"request {task.index + 1}", disable=not self.progress,
                         leave=False):
            scheduler.step_update(step)
            crash_point(f"request_{task.index}_step_{step}")
            try:
                losses = method.step(*[next(stream) for stream in streams], step, optimizer)
            except NonFiniteLoss as err:
                if last_good is not None:
                    save_checkpoint(method.finish_task().cpu(), last_good, self.classes, ledger=[], interrupted={
                        "request": task.index, "reason": "non-finite loss", "step": step})
                where = f"; the last good model (before this step) is saved in {last_good}" if last_good else ""
                raise ForgetkitError(f"loss became {err.value} at request {task.index + 1}, step {step}{where}. "
                                     f"Lower train.lr or the method's loss weights") from None
            method.end_step(step)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                count = (step % cfg.log_every) + 1
                row = {"task": task.index, "step": step + 1, **{k: v / count for k, v in sums.items()}}
                loss_rows.append(row)
                if log is not None:
                    log.log(task.index, step + 1, {k: v for k, v in row.items() if k not in ("task", "step")},
                            task.index * cfg.steps + step + 1)
                sums = {}


def _record_edit(method: Method, original, model, edit_dir: Path, saved_edit: bool) -> dict:
    """The request's edit as the ledger keeps it: the method's own (a LoRA adapter, a text projection) when applying
    it to the model before the request gives the model after it bit for bit (checked here), else the weights after
    the request."""
    if saved_edit and fingerprint(method.apply_edit(original, edit_dir)) == fingerprint(model):
        return {"type": method.edit_type}
    save_weights(edit_dir / "model.safetensors", model.state_dict())
    return {"type": "weights"}


def ledger_entry(record: dict, method_spec: dict, train: TrainConfig) -> dict:
    """The ledger's view of one finished request (its kind says which of its results the ledger keeps)."""
    return {"index": record["index"], "kind": record["kind"], "classes": record["classes"],
            "method": method_spec["name"], "config": {"method": method_spec, "train": to_dict(train)},
            "verdict": record["verdict"],
            "metrics": {k: record[k] for k in REQUEST_KINDS.get(record["kind"]).ledger_metrics},
            "fingerprint_before": record["fingerprint_before"], "fingerprint_after": record["fingerprint_after"],
            "edit": record["edit"], "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _per_class_to_json(pc: PerClass) -> dict:
    data = {"correct": pc.correct.tolist(), "total": pc.total.tolist()}
    if pc.batch_mean:
        data.update(batch_mean=pc.batch_mean, hits=pc.hits.tolist(), labels=pc.labels.tolist())
    return data


def _per_class_from_json(data: dict) -> PerClass:
    if data.get("batch_mean"):
        return PerClass(torch.tensor(data["correct"]), torch.tensor(data["total"]), data["batch_mean"],
                        torch.tensor(data["hits"]), torch.tensor(data["labels"]))
    return PerClass(torch.tensor(data["correct"]), torch.tensor(data["total"]))


def run_forgetting(cfg: RunConfig, progress: bool = True, overwrite: bool = False,
                   model: torch.nn.Module | None = None, resume: bool = False) -> dict:
    """Run a sequence of requests (a protocol) on a model, saving the state after every request; returns the results
    dict (also written as ``results.json``, the marker of a finished run).

    Args:
        cfg: the whole run config (:func:`forgetkit.load_config` makes one).
        progress: show progress bars.
        overwrite: replace a finished or unfinished run already in ``cfg.output_dir``.
        model: when given, replaces ``cfg.model``: any classifier with ``embed``, ``head`` and a ``spec`` giving
            ``preprocess``, ``lora_targets`` and ``group_pattern``, whose classes are the data's (e.g. CLIP's image
            tower with a zero-shot head). It is edited in place, and cannot be saved (``save_model: false``).
        resume: continue a run killed at any point from its last finished request (from the start if none had
            finished); the results equal those of an uninterrupted run but for timings. A finished run with the
            same config is returned as it is; another config is refused.
    """
    plan = plan_run(cfg, overwrite=overwrite, resume=resume, model_given=model is not None)
    if plan.finished:
        return read_json(plan.out / "results.json")
    with OutputLock(plan.out, later=True) as lock, process_state():
        return _run(cfg, plan, progress, resume, model, lock)


def _run(cfg: RunConfig, plan, progress: bool, resume: bool, model, lock: OutputLock) -> dict:
    from .report import write_outputs

    out, model_dir, config = plan.out, plan.model_dir, plan.config
    method_spec = config["method"]
    device = setup_device(cfg.train.device, cfg.train.threads)
    seed_everything(cfg.seed)
    kind = REQUEST_KINDS.get(cfg.kind)()
    source, data_cfg = plan.source, plan.data
    if model is None:
        model, manifest = load_checkpoint(source, cfg.model_arch)
    else:
        manifest = None
    splits = load_data(data_cfg)
    if manifest is None:
        manifest = {"classes": list(splits.classes), "fingerprint": fingerprint(model), "ledger": []}
    if manifest["classes"] is None:  # a zero-shot model classifies the data's classes by name
        model.use_classes(list(splits.classes), dataset=splits.name)
        known = len(splits.classes)
    else:  # the kind orders the classes (labels index them) and says how many the model knows
        splits = kind.complete_data(splits, manifest, cfg.model, cfg.protocol)
        run_classes, known = kind.run_classes(list(manifest["classes"]), list(splits.classes), model, cfg.protocol)
        splits = splits.select(run_classes)
    classes = list(splits.classes)
    prior_ledger = list(manifest.get("ledger", []))
    splits.with_preprocess(model.spec.preprocess)
    forgotten = [classes.index(name) for name in forgotten_classes(prior_ledger) if name in classes]
    protocol = Protocol(cfg.protocol, splits, cfg.seed, forgotten=forgotten, first_index=len(prior_ledger),
                        kind=kind, known=known)
    for task in protocol.tasks:  # every request checked against the model's ledger before any work
        kind.check(task, prior_ledger, classes)
    model = model.to(device)
    if cfg.eval.other_data and "zero_shot" not in model_capabilities(model):
        raise ForgetkitError("eval.other_data needs a zero-shot model (a CLIP) that can classify other datasets' "
                             "classes; remove it for this model")
    other_images = {}
    for other_cfg in cfg.eval.other_data:
        other = load_data(other_cfg)
        other_images[other.name] = other.test.with_preprocess(model.spec.preprocess)
    editor = Editor.create(cfg.method, kind, model, classes, protocol.eval_images, cfg.train, cfg.eval, cfg.seed,
                           device, progress, other_images, ledger=prior_ledger, source=source)
    method = editor.method
    if cfg.eval.verify.enabled:
        editor.verifier = build_verifier(cfg.eval.verify, model, manifest, protocol, classes, cfg.seed, device)
    start_model = copy.deepcopy(model) if cfg.protocol.independent else None

    lock.acquire()  # every input checked: from here on the run writes its folder
    state = RunState(out)
    saved = state.load(config) if resume else None
    if saved is not None:
        saved, weights, method_state = saved
        if start_model is None:  # independent requests start from the loaded model, not from the last one
            model = _with_saved_shape(model, saved.get("spec"), device)
            model.load_state_dict(weights)
        method.load_state_dict(method_state)
        records, loss_log, ledger = saved["tasks"], saved["loss_log"], saved["ledger"]
        pretrained, current, at_start = (_per_class_from_json(saved[k]) for k in (
            "pretrained_counts", "current_counts", "start_counts"))
        log = RunLog(out, keep_rows=saved["log_rows"], purge_step=len(records) * cfg.train.steps)
        logger.info("resuming %s after %d finished request(s)", out, len(records))
    else:
        if resume:
            logger.info("nothing of %s had finished: starting from the first request", out)
        for stale in (state.root, out / "tensorboard", model_dir / "edits"):  # a run started again starts clean
            shutil.rmtree(stale, ignore_errors=True)
        state.begin(config)
        if cfg.save_model and source is not None:
            _copy_edits(source, model_dir, prior_ledger)
        records, loss_log, ledger = [], [], list(prior_ledger)
        current = at_start = editor.evaluate(model)
        pretrained = _base_accuracy(manifest, current, cfg.protocol.eval_split)
        log = RunLog(out)
    try:
        for task in protocol.tasks[len(records):]:
            if start_model is not None:
                model, current = copy.deepcopy(start_model), at_start
            model, record, rows, current = editor.run(
                model, task, protocol.task_data(task), current, pretrained, log,
                edit_dir=model_dir / "edits" / f"request_{task.index:03d}" if cfg.save_model else None,
                last_good=out / "last_good")
            records.append(record)
            loss_log += rows
            ledger.append(ledger_entry(record, method_spec, cfg.train))
            crash_point(f"request_{task.index}_done")
            state.save(len(records), model, method.state_dict(), {
                "config": config, "tasks": records, "loss_log": loss_log, "ledger": ledger,
                "pretrained_counts": _per_class_to_json(pretrained), "current_counts": _per_class_to_json(current),
                "start_counts": _per_class_to_json(at_start),
                "spec": _spec_of(model), "log_rows": log.count})
    finally:
        log.close()

    results = {
        "method": method_spec["name"],
        "dataset": splits.name,
        "setting": protocol.setting,
        "seed": cfg.seed,
        "eval_split": cfg.protocol.eval_split,
        "accuracy": "margin" if cfg.eval.margin_accuracy else "argmax",
        "pretrained": {"acc": pretrained.accuracy(range(known)),  # over the classes the model knew at the start
                       "per_class": pretrained.by_name(classes[:known]), "fingerprint": manifest.get("fingerprint")},
        "tasks": records,
        "kind": kind.name,
        "summary": {**_summary(records), **kind.summary(records)},
        "loss_log": loss_log,
        "ledger": ledger,
    }
    if cfg.save_model:
        base = manifest.get("base") or {"path": _recorded_path(cfg.model, source),
                                        "fingerprint": manifest["fingerprint"],
                                        "accuracy": {"eval_split": cfg.protocol.eval_split,
                                                     **_per_class_to_json(pretrained)}}
        known_after = known + (sum(len(t.forget) for t in protocol.tasks) if kind.adds_classes else 0)
        save_checkpoint(model.cpu(), model_dir, classes[:known_after], ledger=ledger, base=base,
                        data=data_cfg.recorded())
    write_outputs(out, results, config, kind)  # results.json last: the marker of a finished run
    shutil.rmtree(state.root, ignore_errors=True)  # the finished run needs no state (it can be a model's size)
    return results


def _recorded_path(name: str, source: Path) -> str:
    """A model as a checkpoint records it: builtin names as they are, else its checkpoint folder made absolute (so
    the checkpoint works from any folder)."""
    return name if name.startswith("builtin:") else str(Path(source).resolve())


def _spec_of(model) -> dict | None:
    spec = getattr(model, "spec", None)
    return spec.to_dict() if callable(getattr(spec, "to_dict", None)) else None


def _with_saved_shape(model, saved_spec: dict | None, device):
    """The model to load a saved state into: the run's own, or, when the saved state has another shape (a learn
    request grew the head), a forgetkit ViT rebuilt from the saved spec."""
    if saved_spec is None or saved_spec == _spec_of(model):
        return model
    return ForgetModel(ModelSpec.from_dict(saved_spec)).to(device)


def build_verifier(cfg: VerifyConfig, model, manifest: dict, protocol: Protocol, classes: list[str], seed: int,
                   device):
    """The run's :class:`~forgetkit.verify.Verifier`, on the members and non-members of
    :func:`~forgetkit.verify.membership_images` (non-members from the run's evaluation split); the pre-trained row is
    the ledger's base model (or the model at the start), the references those of ``eval.verify.reference``."""
    from .verify import Verifier, held_per_class, membership_images

    pretrained, base_manifest, references = verification_models(manifest, classes, device, reference=cfg.reference)
    base_manifest = base_manifest if pretrained is not None else manifest
    pretrained = pretrained if pretrained is not None else copy.deepcopy(model)
    reference_held = [held_per_class(r.manifest) for r in references]
    members, nonmembers = membership_images(
        protocol.splits.train, protocol.splits.test, protocol.cfg.eval_split, held_per_class(base_manifest) or 0,
        protocol.cfg.val_per_class, min((h for h in reference_held if h is not None), default=None))
    return Verifier(cfg, members, nonmembers, seed, device, pretrained.eval(), references=references,
                    exact=isinstance(cfg.reference, list))


def verification_models(manifest: dict, classes: list[str], device, base: str | None = None,
                        reference: str | list[str] | None = None) -> tuple:
    """The rows a verification reads a model against: the pre-trained model (``base``, else the ledger's base; None
    when there is neither) with its manifest, and the references (one checkpoint or a list), each with its head
    aligned to ``classes`` and its manifest as ``.manifest``."""
    from .verify import align_head

    base = base or (manifest.get("base") or {}).get("path")
    pretrained, base_manifest = load_checkpoint(resolve_model_path(base)) if base else (None, {})
    references = []
    for path in ([reference] if isinstance(reference, str) else reference or []):
        aligned, ref_manifest = load_checkpoint(resolve_model_path(path))
        aligned = align_head(aligned, list(ref_manifest["classes"]), classes).to(device)
        aligned.manifest = ref_manifest
        references.append(aligned)
    return (pretrained.to(device) if pretrained is not None else None), base_manifest, references


def _base_accuracy(manifest: dict, start: PerClass, eval_split: str) -> PerClass:
    """The reference of H and cumulative H: the base checkpoint's per-class accuracy, as the first run on it
    measured and its edited checkpoints carry it, when measured on the same images; else the model at the start of
    this run (for the base itself, the same thing). So a class forgotten by an earlier command still counts its full
    drop in cumulative H."""
    recorded = (manifest.get("base") or {}).get("accuracy")
    if (recorded and recorded["eval_split"] == eval_split and recorded["total"] == start.total.tolist()
            and recorded.get("batch_mean", 0) == start.batch_mean):
        return _per_class_from_json(recorded)
    return start


def _copy_edits(source: Path, model_dir: Path, ledger: list[dict]) -> None:
    """Carry the earlier requests' edits into the new model folder, so that its ledger is complete on its own."""
    for entry in ledger:
        if entry.get("edit"):
            src, dst = source / entry["edit"]["path"], model_dir / entry["edit"]["path"]
            if src.is_dir() and not dst.exists():
                shutil.copytree(src, dst)


def _summary(tasks: list[dict]) -> dict:
    """Averages over the requests of every number the requests report."""
    def avg(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    summary = {f"{key}_avg": avg(t.get(key) for t in tasks) for key in ("h_mean", "h_cumulative", "regained",
                                                                         "gap_to_base") if key in tasks[0]}
    for key in tasks[0]["after"]:
        if not isinstance(tasks[0]["after"][key], dict):
            summary[f"{key}_avg"] = avg(t["after"][key] for t in tasks)
    summary["seconds_total"] = round(sum(t["seconds"] for t in tasks), 2)
    return summary
