"""Requests and their kinds: what a request hands its method, how it is measured, when it is done, what the ledger
keeps, and how a bench compares runs of it.

A model is edited by a sequence of requests. Each request has a *kind* (``forget``, ``restore``, ``learn``: one
module each in this package). The kind, not the runner, knows:

* its requests, made from the protocol config, and its precondition on the model's ledger (a class cannot be
  forgotten twice without being restored in between);
* the data streams it hands the method (``forget`` + ``retain`` for forgetting);
* its metrics, computed from per-class accuracy before and after the request;
* its verdict: whether the request reached its goal, judged on held-out images after it ran, and the fix to suggest
  when it did not;
* its report, plots and bench comparison.

Nothing here imports torch: the run's checks use the kinds before it is loaded.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import ForgetkitError
from ..registry import Registry

if TYPE_CHECKING:
    from ..data import LabeledImages
    from ..metrics import PerClass

KIND_MODULES = ("forget", "restore", "learn")
"""the modules of this package that register a kind (a new kind: one module, listed here)"""

REQUEST_KINDS: Registry = Registry("request kind", loader=lambda: [
    importlib.import_module(f"forgetkit.requests.{name}") for name in KIND_MODULES])
logger = logging.getLogger("forgetkit")


@dataclass
class Request:
    """One request on the model: its kind, the class indices it is about (to forget, to restore or to learn), the
    classes retained beside them, those forgotten earlier, and the retained classes without data."""

    index: int
    kind: str
    classes: list[int]
    retain: list[int]
    old: list[int]
    missing: list[int] = field(default_factory=list)

    @property
    def forget(self) -> list[int]:
        """Deprecated name of :attr:`classes` (a request may restore or learn them)."""
        warnings.warn("Request.forget is deprecated and will be removed in forgetkit 0.3; use Request.classes",
                      DeprecationWarning, stacklevel=2)
        return self.classes

    @property
    def replay(self) -> list[int]:
        """Retained classes that have replay data (all retained classes but the missing ones)."""
        return [c for c in self.retain if c not in self.missing]


@dataclass
class RequestData:
    """The training images one request may use, one subset per data stream its kind declares (forget: the classes'
    images and the replay images)."""

    streams: dict[str, LabeledImages]

    @property
    def forget(self) -> LabeledImages:
        """The images of the request's classes (the stream named ``forget``)."""
        return self.streams["forget"]

    @property
    def retain(self) -> LabeledImages:
        """The replay images of the retained classes (the stream named ``retain``)."""
        return self.streams["retain"]


_RECORD_FIELDS = ("seconds", "trainable_params", "total_params", "forget_images", "retain_images", "steps",
                  "fingerprint_before", "fingerprint_after", "edit")


@dataclass
class RequestRecord:
    """One finished request as ``results.json`` keeps it (one entry of its ``tasks``), typed.

    ``details`` are what the request's kind reports (its classes by name, its metrics ``before``/``after``, H, the
    verification), ``stats`` what the method adds (group norms, subspace sizes); :meth:`to_dict` writes the schema of
    ``results.json`` unchanged, key order included, and :meth:`from_dict` reads it back."""

    index: int
    kind: str
    details: dict
    per_class: dict
    verdict: dict
    seconds: float
    trainable_params: int
    total_params: int
    forget_images: int
    retain_images: int
    steps: int
    fingerprint_before: str
    fingerprint_after: str
    edit: dict | None
    stats: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """The classes the request is about, by name."""
        return self.details["classes"]

    @property
    def before(self) -> dict:
        return self.details["before"]

    @property
    def after(self) -> dict:
        return self.details["after"]

    @property
    def passed(self) -> bool:
        return bool(self.verdict["pass"])

    @property
    def failed(self) -> list[str]:
        """Why the request missed its goal, one line per missed check (empty when it passed)."""
        return list(self.verdict["failed"])

    @property
    def retain_classes(self) -> list[str]:
        """The classes the request keeps (forget requests; empty for the other kinds)."""
        return self.details.get("retain_classes", [])

    @property
    def missing_classes(self) -> list[str]:
        """The retained classes without replay data (the missing-class setting)."""
        return self.details.get("missing_classes", [])

    @property
    def old_classes(self) -> list[str]:
        """The classes forgotten before this request that must stay forgotten, by name."""
        return self.details.get("old_classes", [])

    @property
    def pretrained(self) -> dict:
        """The request's metrics on the pre-trained (base) model."""
        return self.details.get("pretrained", {})

    @property
    def h_mean(self) -> float | None:
        """H of the request's classes' drop and Acc_r (forget requests; None for the other kinds)."""
        return self.details.get("h_mean")

    @property
    def h_cumulative(self) -> float | None:
        """H of every class forgotten so far against Acc_r (forget requests; None for the other kinds)."""
        return self.details.get("h_cumulative")

    @property
    def verify(self) -> dict | None:
        """The in-run verification after the request (``eval.verify.enabled``), or None."""
        return self.details.get("verify")

    def to_dict(self) -> dict:
        return {"index": self.index, "kind": self.kind, **self.details, "per_class": self.per_class,
                "verdict": self.verdict, **{name: getattr(self, name) for name in _RECORD_FIELDS}, **self.stats}

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        keys = list(data)
        head, tail = keys[2:keys.index("per_class")], keys[keys.index("edit") + 1:]
        return cls(data["index"], data["kind"], {k: data[k] for k in head}, data["per_class"], data["verdict"],
                   *(data[name] for name in _RECORD_FIELDS), stats={k: data[k] for k in tail})


_RUN_HEAD = ("method", "dataset", "setting", "seed", "eval_split", "accuracy", "pretrained")


@dataclass
class RunRecord:
    """A finished run as ``results.json`` keeps it, typed: what every run of every kind returns
    (:func:`forgetkit.run_requests`, :func:`forgetkit.forget`, ...) and :meth:`read` loads.

    ``requests`` are the run's :class:`RequestRecord` in order (``results.json`` calls them ``tasks``); ``summary``
    holds the averages every kind gets and the kind's own run-level numbers; :meth:`to_dict` writes the schema of
    ``results.json`` unchanged, key order included."""

    method: str
    dataset: str
    setting: str
    seed: int
    eval_split: str
    accuracy: str
    pretrained: dict
    requests: list[RequestRecord]
    kind: str
    summary: dict
    loss_log: list[dict]
    ledger: list[dict]

    @property
    def passed(self) -> bool:
        """Every request reached its goal."""
        return all(r.passed for r in self.requests)

    def to_dict(self) -> dict:
        return {**{name: getattr(self, name) for name in _RUN_HEAD}, "tasks": [r.to_dict() for r in self.requests],
                "kind": self.kind, "summary": self.summary, "loss_log": self.loss_log, "ledger": self.ledger}

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        return cls(*(data[name] for name in _RUN_HEAD), [RequestRecord.from_dict(t) for t in data["tasks"]],
                   data["kind"], data["summary"], data["loss_log"], data["ledger"])

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """A finished run's record from its folder or its ``results.json``."""
        import json

        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise ForgetkitError(f"{path} not found: give the folder of a finished run (it holds results.json)")
        return cls.from_dict(json.loads(path.read_text()))

    def __getitem__(self, key: str):
        # the results were a plain dict before; dict reads keep working, with a warning, for one release
        warnings.warn(f"results[{key!r}] is deprecated: the results are a RunRecord, read its attributes "
                      f"(requests for 'tasks'), or call to_dict()", DeprecationWarning, stacklevel=2)
        return self.to_dict()[key]


def register_kind(name: str):
    def decorator(cls):
        cls.name = name
        REQUEST_KINDS.register(name)(cls)
        return cls

    return decorator


class RequestKind:
    """Base class of request kinds (stateless: one instance serves every request of its kind)."""

    def __init_subclass__(cls, **kwargs):
        """A kind written for forgetkit 0.1 (``make_tasks``) keeps working for one release, with a warning."""
        super().__init_subclass__(**kwargs)
        if "make_tasks" in cls.__dict__ and "make_requests" not in cls.__dict__:
            warnings.warn(f"{cls.__name__}.make_tasks is deprecated and will be removed in forgetkit 0.3; name it "
                          f"make_requests", DeprecationWarning, stacklevel=2)
            cls.make_requests = cls.__dict__["make_tasks"]

    name: ClassVar[str] = ""
    streams: ClassVar[tuple[str, ...]] = ()
    fix_hint: ClassVar[str] = ""
    default_method: ClassVar[str | None] = None
    """the method a request of this kind uses when none is named (None: the config's)"""
    adds_classes: ClassVar[bool] = False
    """each request adds its classes to those the model knows (learn)"""

    def make_requests(self, cfg, classes: list[str], forgotten: list[int], first_index: int,
                      known: int | None = None) -> list:
        """The requests of a protocol config (``cfg``: a ProtocolConfig), given the classes forgotten so far and the
        classes the model knows (``classes[:known]``; None: all of them)."""
        raise NotImplementedError

    def run_classes(self, model_classes: list[str], data_classes: list[str], model, cfg) -> tuple[list[str], int]:
        """The run's classes, in the order labels will index them, and how many of them the model knows (a prefix).
        Default: the model's classes, which the data must all have (its other classes are left out)."""
        missing = [name for name in model_classes if name not in data_classes]
        if missing:
            raise ForgetkitError(f"the model was trained on classes {model_classes[:5]}..., the data has "
                                 f"{data_classes[:5]}... (without {', '.join(repr(n) for n in missing[:3])}); use "
                                 f"the dataset the model was trained on")
        return list(model_classes), len(model_classes)

    def complete_data(self, splits, manifest: dict, model_name: str, cfg):
        """The run's data, completed with what the request needs that the user did not give (learn: the known
        classes' images). Default: as given."""
        return splits

    def reference(self, request, ledger: list[dict], source, classes: list[str]) -> dict | None:
        """The model a request is judged against besides the one before it, as ``{"label", "fingerprint",
        "model"}`` (restore: the model before the withdrawn request), or None."""
        return None

    def against_reference(self, request, after: PerClass, fingerprint_after: str, reference: dict) -> dict:
        """Metrics of the model after the request against :meth:`reference` (its accuracy is in
        ``reference["accuracy"]``)."""
        return {}

    def forgotten_after(self, request) -> list[int]:
        """The classes the model should have forgotten after the request (what verification checks)."""
        return list(request.old)

    def model_metrics(self, request, model, images, names: list[str], device) -> dict:
        """Numbers of the model after the request that per-class accuracy cannot give (learn: prototype gaps)."""
        return {}

    def summary(self, records: list[RequestRecord]) -> dict:
        """Run-level numbers over all requests, besides the averages every kind gets."""
        return {}

    def summary_lines(self, results: RunRecord, wall: float) -> str:
        """What the CLI prints after a run: by default the first table of the kind's report."""
        return self.report(results).split("\n\n## ")[0]

    def describe(self, request, names: list[str]) -> dict:
        """The request's classes by name, for results.json (``classes``: the classes the request is about)."""
        raise NotImplementedError

    def check(self, request, ledger: list[dict], classes: list[str]) -> None:
        """Refuse a request the ledger makes impossible, before any work."""

    def report(self, results: RunRecord) -> str:
        """The run's report.md."""
        raise NotImplementedError

    ledger_metrics: ClassVar[tuple[str, ...]] = ("after",)
    """the request's results the ledger keeps (besides kind, classes, method, config, verdict, fingerprints, edit)"""

    def plot(self, results: RunRecord, out) -> None:
        """The run's plots."""

    def measure(self, request, before: PerClass, after: PerClass, pretrained: PerClass) -> dict:
        raise NotImplementedError

    def verdict(self, metrics: dict, thresholds) -> dict:
        raise NotImplementedError

    def compare(self, out: Path, runs: dict[str, RunRecord], spec: dict, highlight: set[str]) -> list[dict]:
        """Write a bench's comparison of finished runs of this kind into ``out`` (``comparison.md``, ``.csv``,
        ``.json`` with ``spec``, and ``.png``, the ``highlight`` runs drawn bold); returns the CSV rows."""
        raise ForgetkitError(f"forgetkit bench has no comparison of {self.name} runs; run {self.name} requests with "
                             f"forgetkit {self.name}")


def retained_drop(after: dict, reference: dict, limit: float, reference_name: str) -> list[str]:
    """The verdict's retained-classes check: a failure line when Acc_r fell more than ``limit`` points below the
    reference's."""
    if after["acc_r"] is None or reference["acc_r"] is None or after["acc_r"] >= reference["acc_r"] - limit:
        return []
    return [f"retained classes fell from {reference['acc_r']:.1f} % ({reference_name}) to {after['acc_r']:.1f} % "
            f"(allowed drop {limit:g} points)"]


def deep_failures(verify: dict | None, cfg) -> list[str]:
    """The verdict's deep checks on a verification (``eval.verify``, ``forgetkit verify``; ``cfg``: a VerifyConfig):
    failure lines when the forgotten classes are recoverable from the features more than from a model that never
    learnt them. With a reference row: probe, k-NN and prototype attack at most ``deep_tolerance`` points above the
    reference's, the retain-only rebound at most that many above its, relearning at least as many steps. Without one:
    the rebound at most ``rebound_limit`` points and, with never-seen classes (``eval.verify.novel``), the three
    probes at most ``novel_tolerance`` points above what they read on those (docs/verify.md says how far these
    checks can be trusted)."""
    if not verify:
        return []
    model, reference, failed = verify["model"], verify.get("reference"), []
    rebound = model["retain_rebound"]["rebound"]
    probes = (("probe", "a linear probe"), ("knn", "k-NN"), ("prototype", "the prototype attack"))
    if reference is None:
        if cfg.rebound_limit is not None and rebound > cfg.rebound_limit:
            failed.append(f"retain-only fine-tuning brings the forgotten classes back by {rebound:.1f} points "
                          f"(allowed {cfg.rebound_limit:g}; no reference given)")
        if cfg.novel_tolerance is not None and "probe_novel" in model:
            for key, label in probes:
                seen, novel = model[f"{key}_forgotten"], model[f"{key}_novel"]
                if seen > novel + cfg.novel_tolerance:
                    failed.append(f"{label} recognises the forgotten classes at {seen:.1f} % (classes the model "
                                  f"never saw: {novel:.1f} %, allowed +{cfg.novel_tolerance:g}; no reference given)")
        return failed
    tol = cfg.deep_tolerance
    for check, label in probes:
        key = f"{check}_forgotten"
        if model[key] > reference[key] + tol:
            failed.append(f"{label} recognises the forgotten classes at {model[key]:.1f} % (a model that never "
                          f"learnt them: {reference[key]:.1f} %, allowed +{tol:g})")
    ref_rebound = reference["retain_rebound"]["rebound"]
    if rebound > ref_rebound + tol:
        failed.append(f"retain-only fine-tuning brings the forgotten classes back by {rebound:.1f} points (the "
                      f"reference: {ref_rebound:.1f}, allowed +{tol:g})")
    for k, steps in model["relearn_steps"].items():
        ref_steps = reference["relearn_steps"][k]
        if steps is not None and (ref_steps is None or steps < ref_steps):
            failed.append(f"{k} images per class relearn the forgotten classes in {steps} steps (the reference: "
                          f"{'more than the cap' if ref_steps is None else ref_steps})")
    return failed
