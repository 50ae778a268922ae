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

    def check(self, task, ledger: list[dict], classes: list[str]) -> None:
        """Refuse a request the ledger makes impossible, before any work."""

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


def _accuracies(pc: PerClass, task) -> dict[str, float | None]:
    accs = {"acc_f": pc.accuracy(task.forget), "acc_r": pc.accuracy(task.retain),
            "acc_o": pc.accuracy(task.old) if task.old else None,
            # every class forgotten so far (this request's and the earlier ones'): what relapse shows up in
            "acc_f_all": pc.accuracy(task.forget + task.old)}
    if task.missing:  # Acc_r counts the missing classes (as T-PAMI Table 5); Acc_m and Acc_r with data apart
        accs["acc_m"] = pc.accuracy(task.missing)
        accs["acc_r_data"] = pc.accuracy(task.replay)
    return accs


@register_kind("forget")
class Forget(RequestKind):
    """Forget classes: their held-out accuracy falls to a threshold, the other classes keep theirs."""

    streams = ("forget", "retain")
    fix_hint = ("try a larger budget (-o train.steps=600) or, if retained classes fell, more replay images or "
                "-o method.alpha=0 (docs/gs-lora.md); --allow-fail accepts the result")

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
        if after["acc_r"] is not None and before["acc_r"] is not None and \
                after["acc_r"] < before["acc_r"] - thresholds.max_retain_drop:
            failed.append(f"retained classes fell from {before['acc_r']:.1f} to {after['acc_r']:.1f} % (allowed "
                          f"drop {thresholds.max_retain_drop:g} points)")
        return {"pass": not failed, "failed": failed}
