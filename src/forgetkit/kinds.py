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

from typing import ClassVar

from .errors import ForgetkitError
from .metrics import PerClass, h_mean
from .registry import Registry

REQUEST_KINDS: Registry = Registry("request kind")


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

    def make_tasks(self, cfg, classes: list[str], forgotten: list[int], first_index: int) -> list:
        """The requests of a protocol config (``cfg``: a ProtocolConfig), given the classes forgotten so far."""
        raise NotImplementedError

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


def forgotten_classes(ledger: list[dict]) -> dict[str, int]:
    """Class name -> index of the ledger entry that forgot it, for every class forgotten and not restored since."""
    forgotten: dict[str, int] = {}
    for entry in ledger:
        for name in entry.get("classes", []):
            if entry.get("kind") == "forget":
                forgotten[name] = entry["index"]
            elif entry.get("kind") == "restore":
                forgotten.pop(name, None)
    return forgotten


def retained_drop(after: dict, reference: dict, limit: float, reference_name: str) -> list[str]:
    """The verdict's retained-classes check: a failure line when Acc_r fell more than ``limit`` points below the
    reference's."""
    if after["acc_r"] is None or reference["acc_r"] is None or after["acc_r"] >= reference["acc_r"] - limit:
        return []
    return [f"retained classes fell from {reference['acc_r']:.1f} % ({reference_name}) to {after['acc_r']:.1f} % "
            f"(allowed drop {limit:g} points)"]


def _accuracies(pc: PerClass, task) -> dict[str, float | None]:
    accs = {"acc_f": pc.accuracy(task.forget), "acc_r": pc.accuracy(task.retain),
            "acc_o": pc.accuracy(task.old) if task.old else None,
            # every class forgotten so far (this request's and the earlier ones'): what relapse shows up in
            "acc_f_all": pc.accuracy(task.forget + task.old),
            # the whole test set, sample-weighted (LIRF's Avg Acc)
            "acc_all": pc.accuracy(task.forget + task.retain + task.old)}
    if task.missing:  # Acc_r counts the missing classes (as T-PAMI Table 5); Acc_m and Acc_r with data apart
        accs["acc_m"] = pc.accuracy(task.missing)
        accs["acc_r_data"] = pc.accuracy(task.replay)
    return accs


@register_kind("forget")
class Forget(RequestKind):
    """Forget classes: their held-out accuracy falls to a threshold, the other classes keep theirs."""

    streams = ("forget", "retain")
    ledger_metrics = ("after", "h_mean", "h_cumulative")
    fix_hint = ("try a larger budget (-o train.steps=600) or, if retained classes fell, more replay images or "
                "-o method.alpha=0 (docs/gs-lora.md); --allow-fail accepts the result")

    def make_tasks(self, cfg, classes, forgotten, first_index):
        from .protocol import make_tasks

        return make_tasks(cfg, classes, forgotten, first_index)

    def describe(self, task, names):
        return {"classes": [names[c] for c in task.forget],
                "forget_classes": [names[c] for c in task.forget],
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
        for c in task.forget:
            if classes[c] in done:
                entry = ledger[done[classes[c]]]
                raise ForgetkitError(
                    f"class {classes[c]!r} was already forgotten by request {entry['index'] + 1} of this model's "
                    f"ledger ({entry.get('method')}, {entry.get('time', 'time unknown')}); restore it first, or "
                    f"leave it out of this request")

    def measure(self, task, before, after, pretrained):
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
        return {"pass": not failed, "failed": failed}


@register_kind("restore")
class Restore(RequestKind):
    """Give back classes forgotten earlier (a withdrawn request): their accuracy returns to the base model's, the
    other classes keep theirs, and the classes still forgotten stay forgotten."""

    streams = ()
    ledger_metrics = ("after", "regained", "gap_to_base")
    default_method = "undo"
    fix_hint = ("only an undo of the latest request is exact; undoing an older one and LIRF's withdrawal are "
                "approximate (docs/ledger.md); --allow-fail accepts the result")

    def make_tasks(self, cfg, classes, forgotten, first_index):
        from .protocol import Task, resolve_class_names

        if cfg.tasks is None:
            raise ForgetkitError("a restore request names its classes (--classes or protocol.tasks)")
        tasks, still = [], list(forgotten)
        for i, names in enumerate(cfg.tasks):
            restore = resolve_class_names(list(names), classes, f"protocol.tasks[{i}]")
            still = [c for c in still if c not in restore]
            tasks.append(Task(first_index + i, restore, [c for c in range(len(classes)) if c not in forgotten],
                              list(still)))
        return tasks

    def describe(self, task, names):
        return {"classes": [names[c] for c in task.forget],
                "restore_classes": [names[c] for c in task.forget],
                "retain_classes": [names[c] for c in task.retain],
                "old_classes": [names[c] for c in task.old]}

    def check(self, task, ledger, classes):
        done = forgotten_classes(ledger)
        for c in task.forget:
            if classes[c] not in done:
                restored = [e for e in ledger if e.get("kind") == "restore" and classes[c] in e.get("classes", [])]
                when = f" (request {restored[-1]['index'] + 1} restored it)" if restored else ""
                raise ForgetkitError(f"class {classes[c]!r} is not forgotten in this model's ledger{when}; only a "
                                     f"forgotten class can be restored")

    def measure(self, task, before, after, pretrained):
        def accs(pc):
            return {"acc_restored": pc.accuracy(task.forget), "acc_r": pc.accuracy(task.retain),
                    "acc_o": pc.accuracy(task.old) if task.old else None,
                    "acc_all": pc.accuracy(task.forget + task.retain + task.old)}

        acc_after, acc_before, acc_base = accs(after), accs(before), accs(pretrained)
        return {"before": acc_before, "after": acc_after, "pretrained": acc_base,
                "regained": acc_after["acc_restored"] - acc_before["acc_restored"],
                "gap_to_base": acc_base["acc_restored"] - acc_after["acc_restored"]}

    def verdict(self, metrics, thresholds):
        """Restored classes within ``max_restore_gap`` points of the base model, retained classes within
        ``max_retain_drop`` of the base model, classes still forgotten at most ``forget_threshold``.

        The retained classes are judged against the base, not the model before the restore: forgetting a class often
        raises the others (one competitor fewer), and an exact undo rightly gives that back too."""
        after, base = metrics["after"], metrics["pretrained"]
        failed = []
        if metrics["gap_to_base"] > thresholds.max_restore_gap:
            failed.append(f"restored classes at {after['acc_restored']:.1f} %, {metrics['gap_to_base']:.1f} points "
                          f"below the base model (allowed {thresholds.max_restore_gap:g})")
        failed += retained_drop(after, base, thresholds.max_retain_drop, "the base model")
        if after["acc_o"] is not None and after["acc_o"] > thresholds.forget_threshold:
            failed.append(f"classes still forgotten came back to {after['acc_o']:.1f} %")
        return {"pass": not failed, "failed": failed}

    def report(self, results):
        from .report import restore_report

        return restore_report(results)

    def plot(self, results, out):
        pass
