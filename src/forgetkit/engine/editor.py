"""One request on one model: :class:`Editor` lets the method fit it (by default, the runner's step loop), evaluates,
judges and keeps the edit (docs/ledger.md). It knows no method and no request kind by name: methods declare what they
support and require, kinds what they measure and judge."""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ForgetkitError
from ..io import save_weights
from ..methods import MethodContext, build_method
from ..methods.base import METHODS, Method
from ..methods.configs import MethodConfig
from ..metrics import PerClass, evaluate_classes
from ..models import fingerprint
from ..models.checkpoint import save_checkpoint
from ..requests import Request, RequestData, RequestKind, RequestRecord
from ..runstate import RunLog, crash_point
from ..runtime import NonFiniteLoss, Runtime, balanced_batches, rng, seed_request, step_scheduler
from .config import EvalConfig, TrainConfig


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
    """a :class:`forgetkit.verification.Verifier` run after every request (eval.verify), or None"""
    runtime: Runtime | None = None
    """processes, precision and accumulation (None: one process on ``device``, float32)"""

    @classmethod
    def create(cls, method_config: MethodConfig, kind: RequestKind, model, classes: list[str], eval_images,
               train: TrainConfig, thresholds: EvalConfig, seed: int, device, progress: bool = False,
               other_images: dict | None = None, ledger: list[dict] | None = None, source: Path | None = None,
               runtime: Runtime | None = None):
        """Build the method for ``model`` (checked before any work) and the editor around it: what a file-writing
        run and an in-memory :func:`forgetkit.unlearn` share."""
        ctx = MethodContext(device=device, seed=seed, num_classes=len(classes), steps=train.steps,
                            batch_size=train.batch_size, classes=classes, ledger=list(ledger or []), source=source,
                            runtime=runtime)
        method = build_method(method_config, ctx)
        method.check_model(model, kind.name)
        lr = train.lr if train.lr is not None else METHODS.get(method_config.name).default_lr
        return cls(method, kind, classes, eval_images, train, thresholds, seed, lr, device, progress,
                   other_images or {}, runtime=method.runtime)

    def evaluate(self, model) -> PerClass:
        return evaluate_classes(model, self.eval_images, device=self.device, batch_size=self.eval.batch_size,
                                margin=self.eval.margin_accuracy, progress=self.progress,
                                batch_mean=self.eval.batch_mean, runtime=self.runtime)

    def evaluate_other(self, model) -> dict[str, float]:
        """Accuracy on each of ``eval.other_data`` over its own classes (zero-shot models): collateral damage."""
        return {name: 100.0 * (model.predict(images, images.classes) == images.targets).float().mean().item()
                for name, images in self.other_images.items()}

    def run(self, model: torch.nn.Module, request: Request, data: RequestData, before: PerClass, pretrained: PerClass,
            log: RunLog | None = None, edit_dir: Path | None = None, last_good: Path | None = None):
        """One request: let the method fit it (by default, the step loop below), evaluate, judge.

        Returns (model, its :class:`~forgetkit.requests.RequestRecord`, loss rows, per-class accuracy after)."""
        start = time.time()
        seed_request(self.seed, request.index)
        method = self.method
        fingerprint_before = fingerprint(model)
        reference = self.kind.reference(request, method.ctx.ledger, method.ctx.source, self.classes)
        if reference is not None:  # measured before the request: it may rebuild weights the method then changes
            reference["accuracy"] = self.evaluate(reference.pop("model").to(self.device))
        other_before = self.evaluate_other(model)
        original = copy.deepcopy(model) if edit_dir is not None else None
        loss_rows: list[dict] = []
        method.fit(model, request, data, lambda: self._train_steps(request, data, log, last_good, loss_rows))
        trainable = method.trainable_count()
        stats = method.request_stats()
        staging = edit_dir.with_name(f".{edit_dir.name}.tmp") if edit_dir is not None else None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        saved_edit = method.save_edit(staging) if staging is not None else False
        model = method.finish()
        model.eval()
        edit = None
        if staging is not None:  # written aside, then renamed into place: never half an edit
            edit = _record_edit(method, original, model, staging, saved_edit)
            shutil.rmtree(edit_dir, ignore_errors=True)
            os.replace(staging, edit_dir)
            edit["path"] = f"edits/{edit_dir.name}"
        seconds = time.time() - start
        after = self.evaluate(model)
        metrics = self.kind.measure(request, before, after, pretrained)
        if reference is not None:
            metrics.update(self.kind.against_reference(request, after, fingerprint(model), reference))
        metrics.update(self.kind.model_metrics(request, model, self.eval_images, self.classes, self.device))
        forgotten = self.kind.forgotten_after(request)
        if self.verifier is not None and forgotten:
            metrics["verify"] = self.verifier(model, forgotten, list(request.retain))
        if self.other_images:
            for side, values in (("before", other_before), ("after", self.evaluate_other(model))):
                metrics[side]["acc_other"] = sum(values.values()) / len(values)
                metrics[side]["acc_other_per_dataset"] = values
        names = self.classes
        record = RequestRecord(
            request.index, self.kind.name, {**self.kind.describe(request, names), **metrics},
            # the classes the request is about (for learning: only the classes the model knows)
            {side: {names[c]: pc.accuracy([c]) for c in sorted(request.classes + request.retain + request.old)}
             for side, pc in (("before", before), ("after", after))},
            self.kind.verdict(metrics, self.eval), round(seconds, 2), trainable,
            sum(p.numel() for p in model.parameters()), len(data.forget), len(data.retain), self.train.steps,
            fingerprint_before, fingerprint(model), edit, stats)
        if log is not None:  # the request's numbers: its accuracies after, and the kind's summary values
            numbers = {**metrics["after"], **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
            log.log(request.index, self.train.steps, {k: v for k, v in numbers.items() if isinstance(v, (int, float))},
                    (request.index + 1) * self.train.steps)
        return model, record, loss_rows, after

    def _train_steps(self, request: Request, data: RequestData, log: RunLog | None, last_good: Path | None,
                     loss_rows: list[dict]) -> None:
        """The runner's step loop: ``train.steps`` optimisation steps, each on one class-balanced batch of every
        stream the request kind declares (forget: forget and retain), the learning rate on the shared schedule,
        losses logged as they go."""
        method, cfg = self.method, self.train
        optimizer = method.make_optimizer(self.lr, cfg.weight_decay)
        scheduler = step_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr)
        optimizer = method.runtime.setup_optimizer(optimizer)  # after the schedule: it shares the param groups
        if not self.kind.streams:
            raise ForgetkitError(f"{self.kind.name} requests hand no data to a step loop; method {method.name} "
                                 f"must fit them itself (forgetkit methods lists which do)")
        # the request kind's data streams, in its order (forget: forget, retain), each class-balanced and endless
        streams = [balanced_batches(data.streams.get(name), cfg.batch_size, rng(self.seed, f"{name}_batches",
                                                                             request.index), self.device)
                   for name in self.kind.streams]
        if streams[0] is None:
            raise ForgetkitError(f"request {request.index + 1} has no {self.kind.streams[0]} images; check the "
                                 f"protocol ratios/shots")
        streams = [stream or itertools.repeat(None) for stream in streams]
        sums: dict[str, float] = {}
        for step in tqdm(range(cfg.steps), desc=f"request {request.index + 1}", disable=not self.progress,
                         leave=False):
            scheduler.step_update(step)
            crash_point(f"request_{request.index}_step_{step}")
            try:
                losses = method.step({name: next(stream) for name, stream in zip(self.kind.streams, streams)},
                                     step, optimizer)
            except NonFiniteLoss as err:
                if last_good is not None:
                    save_checkpoint(method.finish().cpu(), last_good, self.classes, ledger=[], interrupted={
                        "request": request.index, "reason": "non-finite loss", "step": step})
                where = f"; the last good model (before this step) is saved in {last_good}" if last_good else ""
                raise ForgetkitError(f"loss became {err.value} at request {request.index + 1}, step {step}{where}. "
                                     f"Lower train.lr or the method's loss weights") from None
            method.end_step(step)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                count = (step % cfg.log_every) + 1
                row = {"task": request.index, "step": step + 1, **{k: v / count for k, v in sums.items()}}
                loss_rows.append(row)
                if log is not None:
                    log.log(request.index, step + 1, {k: v for k, v in row.items() if k not in ("task", "step")},
                            request.index * cfg.steps + step + 1)
                sums = {}


def _record_edit(method: Method, original, model, edit_dir: Path, saved_edit: bool) -> dict:
    """The request's edit as the ledger keeps it: the method's own (a LoRA adapter, a text projection) when applying
    it to the model before the request gives the model after it bit for bit (checked here), else the weights after
    the request."""
    if saved_edit and fingerprint(method.apply_edit(original, edit_dir)) == fingerprint(model):
        return {"type": method.edit_type}
    save_weights(edit_dir / "model.safetensors", model.state_dict())
    return {"type": "weights"}
