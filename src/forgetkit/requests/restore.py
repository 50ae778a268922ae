"""The restore kind: classes forgotten earlier come back (a withdrawn request), the others keep theirs."""

from __future__ import annotations

from ..classes import resolve_class_names
from ..errors import ForgetkitError
from ..ledger import forgotten_classes
from .base import Request, RequestKind, logger, register_kind, retained_drop


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

    def make_requests(self, cfg, classes, forgotten, first_index, known=None):
        if cfg.requests is None:
            raise ForgetkitError("a restore request names its classes (--classes or protocol.requests)")
        requests, still = [], list(forgotten)
        for i, names in enumerate(cfg.requests):
            restore = resolve_class_names(list(names), classes, f"protocol.requests[{i}]")
            still = [c for c in still if c not in restore]
            requests.append(Request(first_index + i, "restore", restore,
                                    [c for c in range(len(classes)) if c not in forgotten], list(still)))
        return requests

    def describe(self, request, names):
        return {"classes": [names[c] for c in request.classes],
                "restore_classes": [names[c] for c in request.classes],
                "retain_classes": [names[c] for c in request.retain],
                "old_classes": [names[c] for c in request.old]}

    def check(self, request, ledger, classes):
        done = forgotten_classes(ledger)
        for c in request.classes:
            if classes[c] not in done:
                restored = [e for e in ledger if e.get("kind") == "restore" and classes[c] in e.get("classes", [])]
                when = f" (request {restored[-1]['index'] + 1} restored it)" if restored else ""
                raise ForgetkitError(f"class {classes[c]!r} is not forgotten in this model's ledger{when}; only a "
                                     f"forgotten class can be restored")

    def measure(self, request, before, after, pretrained):
        def accs(pc):
            return {"acc_restored": pc.accuracy(request.classes), "acc_r": pc.accuracy(request.retain),
                    "acc_o": pc.accuracy(request.old) if request.old else None,
                    "acc_all": pc.accuracy(request.classes + request.retain + request.old)}

        acc_after, acc_before, acc_base = accs(after), accs(before), accs(pretrained)
        return {"before": acc_before, "after": acc_after, "pretrained": acc_base,
                "regained": acc_after["acc_restored"] - acc_before["acc_restored"],
                "gap_to_base": acc_base["acc_restored"] - acc_after["acc_restored"]}

    def reference(self, request, ledger, source, classes):
        """The model before the earliest request that forgot one of the restored classes, rebuilt from the ledger's
        edits (None when they cannot be replayed: the base is then the only reference)."""
        from ..ledger import replay_ledger

        done = forgotten_classes(ledger)
        first = min(done[classes[c]] for c in request.classes if classes[c] in done)
        if source is None:
            return None
        try:
            model = replay_ledger(source, upto=first)
        except ForgetkitError as err:  # the verdict then names the base model as its reference
            logger.debug("restore: the model before request %d cannot be rebuilt (%s)", first + 1, err)
            return None
        return {"label": f"the model before request {first + 1}", "request": first + 1, "model": model,
                "fingerprint": ledger[first]["fingerprint_before"]}

    def against_reference(self, request, after, fingerprint_after, reference):
        acc = reference["accuracy"]
        ref = {"acc_restored": acc.accuracy(request.classes), "acc_r": acc.accuracy(request.retain)}
        return {"reference": {**ref, "label": reference["label"]}, "exact": fingerprint_after == reference[
            "fingerprint"], "gap_to_reference": ref["acc_restored"] - after.accuracy(request.classes)}

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
        from ..report import restore_report

        return restore_report(results)

    def plot(self, results, out):
        pass
