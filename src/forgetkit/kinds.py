"""Request kinds: what a request hands its method, how it is measured, when it is done, what the ledger keeps.

A model is edited by a sequence of requests. Each request has a *kind* (registered here; ``forget`` now, ``restore``
and ``learn`` with their systems). The kind, not the runner, knows:

* its precondition on the model's ledger (a class cannot be forgotten twice without being restored in between);
* the data streams it hands the method (``forget`` + ``retain`` for forgetting);
* its metrics, computed from per-class accuracy before and after the request;
* its verdict: whether the request reached its goal, judged on held-out images after it ran;
* the fix to suggest when it did not.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from .errors import BUDGET_HINT, ForgetkitError
from .ledger import forgotten_classes
from .registry import Registry

if TYPE_CHECKING:  # the kinds themselves need no torch: the run's checks use them before it is imported
    from .metrics import PerClass


REQUEST_KINDS: Registry = Registry("request kind")
logger = logging.getLogger("forgetkit")


def register_kind(name: str):
    def decorator(cls):
        cls.name = name
        REQUEST_KINDS.register(name)(cls)
        return cls

    return decorator


class RequestKind:
    """Base class of request kinds (stateless: one instance serves every request of its kind)."""

    name: ClassVar[str] = ""
    streams: ClassVar[tuple[str, ...]] = ()
    fix_hint: ClassVar[str] = ""
    default_method: ClassVar[str | None] = None
    """the method a request of this kind uses when none is named (None: the config's)"""
    adds_classes: ClassVar[bool] = False
    """each request adds its classes to those the model knows (learn)"""

    def make_tasks(self, cfg, classes: list[str], forgotten: list[int], first_index: int,
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

    def reference(self, task, ledger: list[dict], source, classes: list[str]) -> dict | None:
        """The model a request is judged against besides the one before it, as ``{"label", "fingerprint",
        "model"}`` (restore: the model before the withdrawn request), or None."""
        return None

    def against_reference(self, task, after: PerClass, fingerprint_after: str, reference: dict) -> dict:
        """Metrics of the model after the request against :meth:`reference` (its accuracy is in
        ``reference["accuracy"]``)."""
        return {}

    def forgotten_after(self, task) -> list[int]:
        """The classes the model should have forgotten after the request (what verification checks)."""
        return list(task.old)

    def model_metrics(self, task, model, images, names: list[str], device) -> dict:
        """Numbers of the model after the request that per-class accuracy cannot give (learn: prototype gaps)."""
        return {}

    def summary(self, records: list[dict]) -> dict:
        """Run-level numbers over all requests, besides the averages every kind gets."""
        return {}

    def describe(self, task, names: list[str]) -> dict:
        """The request's classes by name, for results.json (``classes``: the classes the request is about)."""
        raise NotImplementedError

    def check(self, task, ledger: list[dict], classes: list[str]) -> None:
        """Refuse a request the ledger makes impossible, before any work."""

    def report(self, results: dict) -> str:
        """The run's report.md."""
        raise NotImplementedError

    ledger_metrics: ClassVar[tuple[str, ...]] = ("after",)
    """the request's results the ledger keeps (besides kind, classes, method, config, verdict, fingerprints, edit)"""

    def plot(self, results: dict, out) -> None:
        """The run's plots."""

    def measure(self, task, before: PerClass, after: PerClass, pretrained: PerClass) -> dict:
        raise NotImplementedError

    def verdict(self, metrics: dict, thresholds) -> dict:
        raise NotImplementedError


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
    the rebound at most ``rebound_limit`` points (docs/verify.md says how far that check can be trusted)."""
    if not verify:
        return []
    model, reference, failed = verify["model"], verify.get("reference"), []
    rebound = model["retain_rebound"]["rebound"]
    if reference is None:
        if cfg.rebound_limit is not None and rebound > cfg.rebound_limit:
            failed.append(f"retain-only fine-tuning brings the forgotten classes back by {rebound:.1f} points "
                          f"(allowed {cfg.rebound_limit:g}; no reference given)")
        return failed
    tol = cfg.deep_tolerance
    for key, label in (("probe_forgotten", "a linear probe"), ("knn_forgotten", "k-NN"),
                       ("prototype_forgotten", "the prototype attack")):
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


def _accuracies(pc: PerClass, task) -> dict[str, float | None]:
    accs = {"acc_f": pc.accuracy(task.classes), "acc_r": pc.accuracy(task.retain),
            "acc_o": pc.accuracy(task.old) if task.old else None,
            # every class forgotten so far (this request's and the earlier ones'): what relapse shows up in
            "acc_f_all": pc.accuracy(task.classes + task.old),
            # the whole test set, sample-weighted (LIRF's Avg Acc)
            "acc_all": pc.accuracy(task.classes + task.retain + task.old)}
    if task.missing:  # Acc_r counts the missing classes (as T-PAMI Table 5); Acc_m and Acc_r with data apart
        accs["acc_m"] = pc.accuracy(task.missing)
        accs["acc_r_data"] = pc.accuracy(task.replay)
    return accs


@register_kind("forget")
class Forget(RequestKind):
    """Forget classes: their held-out accuracy falls to a threshold, the other classes keep theirs."""

    streams = ("forget", "retain")
    ledger_metrics = ("after", "h_mean", "h_cumulative")
    fix_hint = f"{BUDGET_HINT} (docs/baselines.md)"

    def make_tasks(self, cfg, classes, forgotten, first_index, known=None):
        from .protocol import make_tasks

        return make_tasks(cfg, classes, forgotten, first_index)

    def describe(self, task, names):
        return {"classes": [names[c] for c in task.classes],
                "forget_classes": [names[c] for c in task.classes],
                "retain_classes": [names[c] for c in task.retain],
                "old_classes": [names[c] for c in task.old],
                "missing_classes": [names[c] for c in task.missing]}

    def report(self, results):
        from .report import markdown_report

        return markdown_report(results)

    def plot(self, results, out):
        from .report import plot_accuracy, plot_group_norms

        plot_accuracy(results, out / "accuracy.png")
        plot_group_norms(results, out / "group_norms.png")

    def check(self, task, ledger, classes):
        done = forgotten_classes(ledger)
        for c in task.classes:
            if classes[c] in done:
                entry = ledger[done[classes[c]]]
                raise ForgetkitError(
                    f"class {classes[c]!r} was already forgotten by request {entry['index'] + 1} of this model's "
                    f"ledger ({entry.get('method')}, {entry.get('time', 'time unknown')}); restore it first, or "
                    f"leave it out of this request")

    def forgotten_after(self, task):
        return list(task.classes) + list(task.old)

    def measure(self, task, before, after, pretrained):
        from .metrics import h_mean

        acc_after, acc_before, acc_pre = (_accuracies(pc, task) for pc in (after, before, pretrained))
        return {
            "before": acc_before,
            "after": acc_after,
            "pretrained": acc_pre,
            "h_mean": h_mean(acc_pre["acc_f"], acc_after["acc_f"], acc_after["acc_r"]),
            "h_cumulative": h_mean(acc_pre["acc_f_all"], acc_after["acc_f_all"], acc_after["acc_r"]),
            "h_mean_from_task_start": h_mean(acc_before["acc_f"], acc_after["acc_f"], acc_after["acc_r"]),
        }

    def verdict(self, metrics, thresholds):
        """Forgotten classes at most ``forget_threshold`` %, retained classes within ``max_retain_drop`` points of the
        model before the request."""
        after, before = metrics["after"], metrics["before"]
        failed = []
        if after["acc_f"] is not None and after["acc_f"] > thresholds.forget_threshold:
            failed.append(f"forgotten classes still at {after['acc_f']:.1f} % (goal ≤ "
                          f"{thresholds.forget_threshold:g} %)")
        failed += retained_drop(after, before, thresholds.max_retain_drop, "the model before the request")
        if "verify" not in metrics:
            return {"pass": not failed, "failed": failed}
        deep = deep_failures(metrics["verify"], thresholds.verify)
        return {"pass": not failed and not deep, "failed": failed + deep, "deep_failed": deep}


@register_kind("restore")
class Restore(RequestKind):
    """Give back classes forgotten earlier (a withdrawn request): their accuracy returns to the base model's, the
    other classes keep theirs, and the classes still forgotten stay forgotten."""

    streams = ()
    ledger_metrics = ("after", "regained", "gap_to_base", "gap_to_reference", "exact")
    default_method = "undo"
    fix_hint = ("undoing the latest request is exact (it passes); undoing an older one and LIRF's withdrawal are "
                "approximate: restore the latest requests first, or forget again with a larger budget "
                "(docs/ledger.md)")

    def make_tasks(self, cfg, classes, forgotten, first_index, known=None):
        from .protocol import Request, resolve_class_names

        if cfg.tasks is None:
            raise ForgetkitError("a restore request names its classes (--classes or protocol.tasks)")
        tasks, still = [], list(forgotten)
        for i, names in enumerate(cfg.tasks):
            restore = resolve_class_names(list(names), classes, f"protocol.tasks[{i}]")
            still = [c for c in still if c not in restore]
            tasks.append(Request(first_index + i, "restore", restore,
                                 [c for c in range(len(classes)) if c not in forgotten], list(still)))
        return tasks

    def describe(self, task, names):
        return {"classes": [names[c] for c in task.classes],
                "restore_classes": [names[c] for c in task.classes],
                "retain_classes": [names[c] for c in task.retain],
                "old_classes": [names[c] for c in task.old]}

    def check(self, task, ledger, classes):
        done = forgotten_classes(ledger)
        for c in task.classes:
            if classes[c] not in done:
                restored = [e for e in ledger if e.get("kind") == "restore" and classes[c] in e.get("classes", [])]
                when = f" (request {restored[-1]['index'] + 1} restored it)" if restored else ""
                raise ForgetkitError(f"class {classes[c]!r} is not forgotten in this model's ledger{when}; only a "
                                     f"forgotten class can be restored")

    def measure(self, task, before, after, pretrained):
        def accs(pc):
            return {"acc_restored": pc.accuracy(task.classes), "acc_r": pc.accuracy(task.retain),
                    "acc_o": pc.accuracy(task.old) if task.old else None,
                    "acc_all": pc.accuracy(task.classes + task.retain + task.old)}

        acc_after, acc_before, acc_base = accs(after), accs(before), accs(pretrained)
        return {"before": acc_before, "after": acc_after, "pretrained": acc_base,
                "regained": acc_after["acc_restored"] - acc_before["acc_restored"],
                "gap_to_base": acc_base["acc_restored"] - acc_after["acc_restored"]}

    def reference(self, task, ledger, source, classes):
        """The model before the earliest request that forgot one of the restored classes, rebuilt from the ledger's
        edits (None when they cannot be replayed: the base is then the only reference)."""
        from .ledger import replay_ledger

        done = forgotten_classes(ledger)
        first = min(done[classes[c]] for c in task.classes if classes[c] in done)
        if source is None:
            return None
        try:
            model = replay_ledger(source, upto=first)
        except ForgetkitError as err:  # the verdict then names the base model as its reference
            logger.debug("restore: the model before request %d cannot be rebuilt (%s)", first + 1, err)
            return None
        return {"label": f"the model before request {first + 1}", "request": first + 1, "model": model,
                "fingerprint": ledger[first]["fingerprint_before"]}

    def against_reference(self, task, after, fingerprint_after, reference):
        acc = reference["accuracy"]
        ref = {"acc_restored": acc.accuracy(task.classes), "acc_r": acc.accuracy(task.retain)}
        return {"reference": {**ref, "label": reference["label"]}, "exact": fingerprint_after == reference[
            "fingerprint"], "gap_to_reference": ref["acc_restored"] - after.accuracy(task.classes)}

    def verdict(self, metrics, thresholds):
        """An undo that gives back the weights before the withdrawn request bit for bit (the fingerprint the ledger
        recorded) passes: it is that model. Any other restore is judged against that model (rebuilt from the
        ledger; the base model when it cannot be): restored classes within ``max_restore_gap`` points of it,
        retained classes within ``max_retain_drop`` of it, and classes still forgotten at most
        ``forget_threshold``.

        Retained classes are not judged against the model just before the restore: forgetting a class often raises
        the others (one competitor fewer), and an exact undo rightly gives that back too."""
        after = metrics["after"]
        failed = []
        if metrics.get("exact"):
            return {"pass": True, "failed": [], "exact": True}
        reference = metrics.get("reference") or {**metrics["pretrained"], "label": "the base model"}
        gap = reference["acc_restored"] - after["acc_restored"]
        if gap > thresholds.max_restore_gap:
            failed.append(f"restored classes at {after['acc_restored']:.1f} %, {gap:.1f} points below "
                          f"{reference['label']} (allowed {thresholds.max_restore_gap:g})")
        failed += retained_drop(after, reference, thresholds.max_retain_drop, reference["label"])
        if after["acc_o"] is not None and after["acc_o"] > thresholds.forget_threshold:
            failed.append(f"classes still forgotten came back to {after['acc_o']:.1f} %")
        return {"pass": not failed, "failed": failed}

    def report(self, results):
        from .report import restore_report

        return restore_report(results)

    def plot(self, results, out):
        pass


@register_kind("learn")
class Learn(RequestKind):
    """Learn new classes: the model recognises them afterwards, the classes it knew keep their accuracy as far as
    they can, and the classes it forgot stay forgotten.

    The run's classes are the model's known classes first, then the classes to learn in the order they are learnt
    (so the model always knows a prefix of them), then any other class of the data. Every class the model knows is
    kept: images of those the data lacks come from the data the model records (:meth:`complete_data`). Only
    ``protocol.backbone: true`` starts from the model's features alone, knowing none of its classes (its head is
    replaced by the prototypes of what it learns)."""

    streams = ("forget", "retain")  # the new classes' images; the known classes' (only the joint upper bound reads)
    ledger_metrics = ("after",)
    default_method = "lora_sub_drs"
    adds_classes = True
    fix_hint = "learn longer (-o train.steps=...), or check that the new classes' images are labelled right"

    def complete_data(self, splits, manifest, model_name, cfg):
        """The data to learn from, plus the images of every class the model knows that it lacks, read from the data
        the model records: a learn request keeps every class (its prototype is read from its images the first time,
        and its test images measure what the request cost it). ``protocol.backbone`` drops them instead."""
        lacking = [name for name in manifest["classes"] if name not in splits.classes]
        if cfg.backbone or not lacking:
            return splits
        from .data import load_data
        from .data.config import model_data_config

        shown = ", ".join(repr(n) for n in lacking[:4]) + (" ..." if len(lacking) > 4 else "")
        fix = ("add their images to the data (ROOT/train/<class>/ and ROOT/test/<class>/), or pass -o "
               "protocol.backbone=true to drop the model's classes and learn from its features alone")
        try:
            own = load_data(model_data_config(manifest, model_name))
        except ForgetkitError as err:
            raise ForgetkitError(f"the data lacks {len(lacking)} class(es) the model knows ({shown}) and the data "
                                 f"the model records cannot be read ({err}); {fix}") from None
        if any(name not in own.classes for name in lacking):
            raise ForgetkitError(f"the data lacks {len(lacking)} class(es) the model knows ({shown}), and so does "
                                 f"the data it records; {fix}")
        logger.warning("learn: %d class(es) the model knows are not in the data given (%s); their images come from "
                       "the data the model records (%s)", len(lacking), shown, own.name)
        return splits.merged(own.select(lacking))

    def run_classes(self, model_classes, data_classes, model, cfg):
        from .protocol import class_order, resolve_class_names

        if cfg.backbone:  # asked for: the model's features only, none of its classes
            known = []
        else:
            known = super().run_classes(model_classes, data_classes, model, cfg)[0]
        rest = [name for name in data_classes if name not in known]
        if cfg.tasks is not None:
            wanted = [name for names in cfg.tasks for name in names]
            resolve_class_names(wanted, data_classes, "the classes to learn")
            already = [name for name in wanted if name in known]
            if already:
                raise ForgetkitError(f"the model already knows {', '.join(repr(n) for n in already)}; learn only "
                                     f"new classes (a forgotten class comes back with forgetkit restore)")
        else:
            order = class_order(len(rest), cfg.order_seed)
            wanted = [rest[i] for i in order]
        return known + wanted + [name for name in rest if name not in wanted], len(known)

    def make_tasks(self, cfg, classes, forgotten, first_index, known=None):
        from .protocol import Request

        known = len(classes) if known is None else known
        if cfg.tasks is not None:
            sizes = [len(names) for names in cfg.tasks]
        else:
            first = cfg.initial_classes or cfg.classes_per_request
            sizes = [first] + [cfg.classes_per_request] * (cfg.num_tasks - 1)
        if min(sizes) < 1:
            raise ForgetkitError("every learn request needs at least one class (protocol.initial_classes, "
                                 "protocol.classes_per_request)")
        if known + sum(sizes) > len(classes):
            raise ForgetkitError(f"the protocol learns {sum(sizes)} classes but the data has only "
                                 f"{len(classes) - known} the model does not know; lower protocol.num_tasks or "
                                 f"protocol.classes_per_request")
        tasks, start = [], known
        for i, size in enumerate(sizes):
            new = list(range(start, start + size))
            tasks.append(Request(first_index + i, "learn", new, [c for c in range(start) if c not in forgotten],
                                 list(forgotten)))
            start += size
        return tasks

    def describe(self, task, names):
        return {"classes": [names[c] for c in task.classes], "learn_classes": [names[c] for c in task.classes],
                "known_classes": [names[c] for c in task.retain], "old_classes": [names[c] for c in task.old]}

    def check(self, task, ledger, classes):
        done = forgotten_classes(ledger)
        for c in task.classes:
            if classes[c] in done:  # run_classes never lets this through; a guard for hand-built protocols
                raise ForgetkitError(f"class {classes[c]!r} was forgotten by request {done[classes[c]] + 1}; restore "
                                     f"it instead of learning it again")

    def measure(self, task, before, after, pretrained):
        def accs(pc):
            return {"acc_new": pc.accuracy(task.classes), "acc_old": pc.accuracy(task.retain) if task.retain else None,
                    "acc_seen": pc.accuracy(task.classes + task.retain),
                    "acc_o": pc.accuracy(task.old) if task.old else None}

        acc_after, acc_before = accs(after), accs(before)
        old_drop = (acc_before["acc_old"] - acc_after["acc_old"]) if task.retain else None
        return {"before": acc_before, "after": acc_after, "old_drop": old_drop}

    def verdict(self, metrics, thresholds):
        """New classes at least ``min_learn_accuracy`` %, known classes within ``max_retain_drop`` points of the model
        before the request, forgotten classes at most ``forget_threshold`` %."""
        after, failed = metrics["after"], []
        if after["acc_new"] is not None and after["acc_new"] < thresholds.min_learn_accuracy:
            failed.append(f"new classes at {after['acc_new']:.1f} % (goal ≥ {thresholds.min_learn_accuracy:g} %)")
        if metrics["old_drop"] is not None and metrics["old_drop"] > thresholds.max_retain_drop:
            failed.append(f"known classes fell {metrics['old_drop']:.1f} points (allowed "
                          f"{thresholds.max_retain_drop:g})")
        if after["acc_o"] is not None and after["acc_o"] > thresholds.forget_threshold:
            failed.append(f"forgotten classes came back to {after['acc_o']:.1f} %")
        return {"pass": not failed, "failed": failed}

    def model_metrics(self, task, model, images, names, device):
        """Each known class's prototype gap: ``1 − cos`` between its stored prototype and the mean embedding of its
        evaluation images under the model now. The gap when a class was learnt is the train/test difference; how
        much it grew since is the class's feature drift (:meth:`summary`)."""
        if getattr(model.spec, "head", None) != "prototype":
            return {}
        import torch

        from .runtime import class_means

        known = sorted(task.retain + task.classes)
        now = class_means(model, images.subset(images.indices_of(known)), known, device)
        with torch.no_grad():
            gaps = 1 - torch.nn.functional.cosine_similarity(model.head.prototypes[known], now)
        return {"prototype_gap": {names[c]: gap for c, gap in zip(known, gaps.tolist())}}

    def summary(self, records):
        """Class-incremental numbers over the requests: the accuracy matrix (row i: after request i; column j: the
        classes of request j), last accuracy, average incremental accuracy, and forgetting (each request's classes:
        best accuracy on them after it was learnt minus the last)."""
        def acc(record, names):
            values = [record["per_class"]["after"][n] for n in names if record["per_class"]["after"].get(n) is not None]
            return sum(values) / len(values) if values else None

        matrix = [[acc(r, c["learn_classes"]) if j <= i else None for j, c in enumerate(records)]
                  for i, r in enumerate(records)]
        forgetting = [max(row[j] for row in matrix[j:]) - matrix[-1][j] for j in range(len(records) - 1)]
        # feature drift: how much each class's prototype gap grew since the request that learnt it, averaged over
        # the classes learnt in this run and known before each request
        learnt = {name: r["prototype_gap"][name] for r in records for name in r["learn_classes"]
                  if name in r.get("prototype_gap", {})}
        drift = []
        for r in records:
            grown = [r["prototype_gap"][n] - learnt[n] for n in r["known_classes"] if n in learnt]
            drift.append(sum(grown) / len(grown) if grown else None)
        return {"accuracy_matrix": matrix, "last_accuracy": records[-1]["after"]["acc_seen"],
                "average_incremental_accuracy": sum(r["after"]["acc_seen"] for r in records) / len(records),
                "forgetting": sum(forgetting) / len(forgetting) if forgetting else None, "feature_drift": drift}

    def report(self, results):
        from .report import learn_report

        return learn_report(results)

    def plot(self, results, out):
        from .report import plot_learning

        plot_learning(results, out / "learning.png")
