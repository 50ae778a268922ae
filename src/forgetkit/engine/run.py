"""A run: :func:`run_requests` plans (every check before any work, engine/plan.py), then runs a sequence of requests
through one :class:`~forgetkit.engine.editor.Editor`, saving the run's state after each (docs/ledger.md), and writes
the results, the report and the edited model.

Data flows one way: data -> protocol -> model -> method -> editor -> metrics -> report.
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch

from ..config import to_dict
from ..data import load_data
from ..errors import ForgetkitError
from ..ledger import forgotten_classes
from ..methods.base import model_capabilities
from ..metrics import PerClass
from ..models import fingerprint, load_external_weights
from ..models.checkpoint import save_checkpoint
from ..models.formats import is_classifier_arch, load_checkpoint
from ..models.presets import ModelSpec
from ..models.vit import ForgetModel
from ..outputs import OutputLock
from ..requests import REQUEST_KINDS, RequestRecord, RunRecord
from ..requests.protocol import Protocol
from ..runstate import RunLog, RunState, crash_point
from ..runtime import Runtime, process_state, seed_everything
from ..verification import build_verifier
from .config import RunConfig, TrainConfig
from .editor import Editor
from .plan import plan_run

logger = logging.getLogger("forgetkit")


def ledger_entry(record: RequestRecord, method_spec: dict, train: TrainConfig) -> dict:
    """The ledger's view of one finished request (its kind says which of its results the ledger keeps)."""
    return {"index": record.index, "kind": record.kind, "classes": record.classes,
            "method": method_spec["name"], "config": {"method": method_spec, "train": to_dict(train)},
            "verdict": record.verdict,
            "metrics": {k: record.details[k] for k in REQUEST_KINDS.get(record.kind).ledger_metrics},
            "fingerprint_before": record.fingerprint_before, "fingerprint_after": record.fingerprint_after,
            "edit": record.edit, "time": datetime.now(UTC).isoformat(timespec="seconds")}


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


def run_requests(cfg: RunConfig, progress: bool = True, overwrite: bool = False,
                 model: torch.nn.Module | None = None, resume: bool = False,
                 verification_memo: dict | None = None) -> RunRecord:
    """Run a sequence of requests (a protocol) on a model, saving the state after every request; returns the run's
    :class:`~forgetkit.requests.RunRecord` (also written as ``results.json``, the marker of a finished run).

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
        verification_memo: with ``eval.verify``, the rows of the pre-trained model and the references measured by
            earlier runs of this process (:class:`~forgetkit.verification.Verifier`'s ``memo``); a bench passes one.
    """
    plan = plan_run(cfg, overwrite=overwrite, resume=resume, model_given=model is not None)
    if plan.finished:
        return RunRecord.read(plan.out)
    with OutputLock(plan.out, later=True) as lock, process_state():
        return _run(cfg, plan, progress, resume, model, lock, verification_memo)


def run_forgetting(*args, **kwargs) -> RunRecord:
    """Deprecated name of :func:`run_requests` (every request kind runs through it, not only forgetting)."""
    warnings.warn("run_forgetting is deprecated and will be removed in forgetkit 0.3; use run_requests",
                  DeprecationWarning, stacklevel=2)
    return run_requests(*args, **kwargs)


def _run(cfg: RunConfig, plan, progress: bool, resume: bool, model, lock: OutputLock,
         verification_memo: dict | None) -> RunRecord:
    from ..report import write_outputs

    out, model_dir, config = plan.out, plan.model_dir, plan.config
    method_spec = config["method"]
    runtime = Runtime.create(cfg.train)  # one process, or this one of several (docs/scaling.md)
    device, writer = runtime.device, runtime.is_writer
    seed_everything(cfg.seed)
    kind = REQUEST_KINDS.get(cfg.kind)()
    source, data_cfg = plan.source, plan.data
    imported = model is None and plan.manifest.get("format") == "external" and is_classifier_arch(cfg.model_arch)
    if model is None and not imported:
        model, manifest = load_checkpoint(source, cfg.model_arch)
    else:
        manifest = None
    splits = load_data(data_cfg)
    if imported:  # a ViT's weights file: its head's classes are the data's (as forgetkit import-weights makes them)
        model = load_external_weights(source, cfg.model_arch, len(splits.classes))
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
    _check_requests(cfg, kind, protocol, prior_ledger, classes, model)
    model = model.to(device)
    other_images = {}
    for other_cfg in cfg.eval.other_data:
        other = load_data(other_cfg)
        other_images[other.name] = other.test.with_preprocess(model.spec.preprocess)
    editor = Editor.create(cfg.method, kind, model, classes, protocol.eval_images, cfg.train, cfg.eval, cfg.seed,
                           device, progress and writer, other_images, ledger=prior_ledger, source=source,
                           runtime=runtime)  # checks the method
    method = editor.method
    if cfg.eval.verify.enabled:
        editor.verifier = build_verifier(cfg.eval.verify, model, manifest, protocol, classes, cfg.seed, device,
                                         verification_memo)
    start_model = copy.deepcopy(model) if cfg.protocol.independent else None

    runtime.acquire_output(lock)  # every input checked: from here on the run writes its folder
    state = RunState(out)
    saved = state.load(config) if resume else None
    if saved is not None:
        saved, weights, method_state = saved
        if start_model is None:  # independent requests start from the loaded model, not from the last one
            model = _with_saved_shape(model, saved.get("spec"), device)
            model.load_state_dict(weights)
        method.load_state_dict(method_state)
        records = [RequestRecord.from_dict(t) for t in saved["tasks"]]
        loss_log, ledger = saved["loss_log"], saved["ledger"]
        pretrained, current, at_start = (_per_class_from_json(saved[k]) for k in (
            "pretrained_counts", "current_counts", "start_counts"))
        log = RunLog(out, keep_rows=saved["log_rows"], purge_step=len(records) * cfg.train.steps) if writer else None
        logger.info("resuming %s after %d finished request(s)", out, len(records))
    else:
        if resume:
            logger.info("nothing of %s had finished: starting from the first request", out)
        if writer:
            for stale in (state.root, out / "tensorboard", model_dir / "edits"):  # a run started again starts clean
                shutil.rmtree(stale, ignore_errors=True)
            state.begin(config)
            if cfg.save_model and source is not None:
                _copy_edits(source, model_dir, prior_ledger)
        records, loss_log, ledger = [], [], list(prior_ledger)
        current = at_start = editor.evaluate(model)
        pretrained = _base_accuracy(manifest, current, cfg.protocol.eval_split)
        log = RunLog(out) if writer else None
    try:
        for request in protocol.requests[len(records):]:
            if start_model is not None:
                model, current = copy.deepcopy(start_model), at_start
            model, record, rows, current = editor.run(
                model, request, protocol.request_data(request), current, pretrained, log,
                edit_dir=model_dir / "edits" / f"request_{request.index:03d}" if cfg.save_model and writer else None,
                last_good=out / "last_good" if writer else None)
            records.append(record)
            loss_log += rows
            ledger.append(ledger_entry(record, method_spec, cfg.train))
            crash_point(f"request_{request.index}_done")
            if not writer:
                continue
            state.save(len(records), model, method.state_dict(), {
                "config": config, "tasks": [r.to_dict() for r in records], "loss_log": loss_log, "ledger": ledger,
                "pretrained_counts": _per_class_to_json(pretrained), "current_counts": _per_class_to_json(current),
                "start_counts": _per_class_to_json(at_start),
                "spec": _spec_of(model), "log_rows": log.count})
    finally:
        if log is not None:
            log.close()

    results = RunRecord(
        method=method_spec["name"], dataset=splits.name, setting=protocol.setting, seed=cfg.seed,
        eval_split=cfg.protocol.eval_split, accuracy="margin" if cfg.eval.margin_accuracy else "argmax",
        # over the classes the model knew at the start
        pretrained={"acc": pretrained.accuracy(range(known)), "per_class": pretrained.by_name(classes[:known]),
                    "fingerprint": manifest.get("fingerprint")},
        requests=records, kind=kind.name, summary={**_summary(records), **kind.summary(records)},
        loss_log=loss_log, ledger=ledger)
    if not writer:  # the other processes wait for rank 0's files, then return the same record
        runtime.barrier()
        return results
    if cfg.save_model:
        base = manifest.get("base") or {"path": _recorded_path(cfg.model, source),
                                        "fingerprint": manifest["fingerprint"],
                                        "accuracy": {"eval_split": cfg.protocol.eval_split,
                                                     **_per_class_to_json(pretrained)}}
        known_after = known + (sum(len(t.classes) for t in protocol.requests) if kind.adds_classes else 0)
        save_checkpoint(model.cpu(), model_dir, classes[:known_after], ledger=ledger, base=base,
                        data=data_cfg.recorded())
    write_outputs(out, results, config, kind)  # results.json last: the marker of a finished run
    shutil.rmtree(state.root, ignore_errors=True)  # the finished run needs no state (it can be a model's size)
    runtime.barrier()
    return results


def _check_requests(cfg: RunConfig, kind, protocol: Protocol, ledger: list[dict], classes: list[str], model) -> None:
    """What the run's inputs can only tell once the model and the data are loaded, checked before any work (the rest
    is in engine/plan.py; the method's check of the model is :meth:`Editor.create`'s): every request against the
    model's ledger, and the evaluation's other datasets against the model."""
    for request in protocol.requests:
        kind.check(request, ledger, classes)
    if cfg.eval.other_data and "zero_shot" not in model_capabilities(model):
        raise ForgetkitError("eval.other_data needs a zero-shot model (a CLIP) that can classify other datasets' "
                             "classes; remove it for this model")


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


def _summary(records: list[RequestRecord]) -> dict:
    """Averages over the requests of every number the requests report."""
    def avg(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    summary = {f"{key}_avg": avg(r.details.get(key) for r in records)
               for key in ("h_mean", "h_cumulative", "regained", "gap_to_base") if key in records[0].details}
    for key, value in records[0].after.items():
        if not isinstance(value, dict):
            summary[f"{key}_avg"] = avg(r.after[key] for r in records)
    summary["seconds_total"] = round(sum(r.seconds for r in records), 2)
    return summary
