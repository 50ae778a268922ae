"""The learn kind: new classes join those the model knows (class-incremental learning)."""

from __future__ import annotations

from pathlib import Path

from ..classes import resolve_class_names
from ..errors import ForgetkitError
from ..ledger import forgotten_classes
from .base import Request, RequestKind, RunRecord, logger, register_kind


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
        from ..data import load_data
        from ..data.config import model_data_config

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
        from .protocol import class_order

        if cfg.backbone:  # asked for: the model's features only, none of its classes
            known = []
        else:
            known = super().run_classes(model_classes, data_classes, model, cfg)[0]
        rest = [name for name in data_classes if name not in known]
        if cfg.requests is not None:
            wanted = [name for names in cfg.requests for name in names]
            resolve_class_names(wanted, data_classes, "the classes to learn")
            already = [name for name in wanted if name in known]
            if already:
                raise ForgetkitError(f"the model already knows {', '.join(repr(n) for n in already)}; learn only "
                                     f"new classes (a forgotten class comes back with forgetkit restore)")
        else:
            order = class_order(len(rest), cfg.order_seed)
            wanted = [rest[i] for i in order]
        return known + wanted + [name for name in rest if name not in wanted], len(known)

    def compare(self, out, runs, spec, highlight):
        return write_learn_comparison(out, runs, spec, highlight)

    def make_requests(self, cfg, classes, forgotten, first_index, known=None):
        known = len(classes) if known is None else known
        if cfg.requests is not None:
            sizes = [len(names) for names in cfg.requests]
        else:
            first = cfg.initial_classes or cfg.classes_per_request
            sizes = [first] + [cfg.classes_per_request] * (cfg.num_requests - 1)
        if min(sizes) < 1:
            raise ForgetkitError("every learn request needs at least one class (protocol.initial_classes, "
                                 "protocol.classes_per_request)")
        if known + sum(sizes) > len(classes):
            raise ForgetkitError(f"the protocol learns {sum(sizes)} classes but the data has only "
                                 f"{len(classes) - known} the model does not know; lower protocol.num_requests or "
                                 f"protocol.classes_per_request")
        requests, start = [], known
        for i, size in enumerate(sizes):
            new = list(range(start, start + size))
            requests.append(Request(first_index + i, "learn", new, [c for c in range(start) if c not in forgotten],
                                    list(forgotten)))
            start += size
        return requests

    def describe(self, request, names):
        return {"classes": [names[c] for c in request.classes], "learn_classes": [names[c] for c in request.classes],
                "known_classes": [names[c] for c in request.retain], "old_classes": [names[c] for c in request.old]}

    def check(self, request, ledger, classes):
        done = forgotten_classes(ledger)
        for c in request.classes:
            if classes[c] in done:  # run_classes never lets this through; a guard for hand-built protocols
                raise ForgetkitError(f"class {classes[c]!r} was forgotten by request {done[classes[c]] + 1}; restore "
                                     f"it instead of learning it again")

    def measure(self, request, before, after, pretrained):
        def accs(pc):
            return {"acc_new": pc.accuracy(request.classes),
                    "acc_old": pc.accuracy(request.retain) if request.retain else None,
                    "acc_seen": pc.accuracy(request.classes + request.retain),
                    "acc_o": pc.accuracy(request.old) if request.old else None}

        acc_after, acc_before = accs(after), accs(before)
        old_drop = (acc_before["acc_old"] - acc_after["acc_old"]) if request.retain else None
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

    def model_metrics(self, request, model, images, names, device):
        """Each known class's prototype gap: ``1 − cos`` between its stored prototype and the mean embedding of its
        evaluation images under the model now. The gap when a class was learnt is the train/test difference; how
        much it grew since is the class's feature drift (:meth:`summary`)."""
        if getattr(model.spec, "head", None) != "prototype":
            return {}
        import torch

        from ..runtime import class_means

        known = sorted(request.retain + request.classes)
        now = class_means(model, images.subset(images.indices_of(known)), known, device)
        with torch.no_grad():
            gaps = 1 - torch.nn.functional.cosine_similarity(model.head.prototypes[known], now)
        return {"prototype_gap": {names[c]: gap for c, gap in zip(known, gaps.tolist())}}

    def summary(self, records):
        """Class-incremental numbers over the requests: the accuracy matrix (row i: after request i; column j: the
        classes of request j), last accuracy, average incremental accuracy, and forgetting (each request's classes:
        best accuracy on them after it was learnt minus the last)."""
        def acc(record, names):
            values = [record.per_class["after"][n] for n in names if record.per_class["after"].get(n) is not None]
            return sum(values) / len(values) if values else None

        matrix = [[acc(r, c.classes) if j <= i else None for j, c in enumerate(records)]
                  for i, r in enumerate(records)]
        forgetting = [max(row[j] for row in matrix[j:]) - matrix[-1][j] for j in range(len(records) - 1)]
        # feature drift: how much each class's prototype gap grew since the request that learnt it, averaged over
        # the classes learnt in this run and known before each request
        gaps = [r.details.get("prototype_gap", {}) for r in records]
        learnt = {name: gap[name] for r, gap in zip(records, gaps) for name in r.classes if name in gap}
        drift = []
        for r, gap in zip(records, gaps):
            grown = [gap[n] - learnt[n] for n in r.details["known_classes"] if n in learnt]
            drift.append(sum(grown) / len(grown) if grown else None)
        return {"accuracy_matrix": matrix, "last_accuracy": records[-1].after["acc_seen"],
                "average_incremental_accuracy": sum(r.after["acc_seen"] for r in records) / len(records),
                "forgetting": sum(forgetting) / len(forgetting) if forgetting else None, "feature_drift": drift}

    def report(self, results):
        from ..report import learn_report

        return learn_report(results)

    def plot(self, results, out):
        from ..report import plot_learning

        plot_learning(results, out / "learning.png")


def write_learn_comparison(out: Path, all_results: dict[str, RunRecord], spec: dict, highlight: set[str]) -> list[dict]:
    """The learn kind's bench comparison: best last accuracy first; per request, the accuracy on all classes seen."""
    from ..io import write_json, write_text
    from ..report import fmt, write_csv

    all_results = dict(sorted(all_results.items(), key=lambda kv: -(kv[1].summary["last_accuracy"] or 0.0)))
    rows = [{"method": name, "request": t.index + 1, "acc_seen": t.after["acc_seen"],
             "acc_new": t.after["acc_new"], "acc_old": t.after["acc_old"],
             "feature_drift": drift, "seconds": t.seconds}
            for name, results in all_results.items()
            for t, drift in zip(results.requests, results.summary["feature_drift"])]
    columns = list(rows[0])
    write_csv(out / "comparison.csv", rows, columns)
    first = next(iter(all_results.values()))
    lines = [f"# Class-incremental comparison on {first.dataset}, {len(first.requests)} requests, seed "
             f"{first.seed}", "",
             "Accuracy in percent on every class learnt so far (nearest class mean), after each request. Methods are "
             "sorted by last accuracy; forgetting is the mean drop of each request's classes from their best.", "",
             "| method | last accuracy | average incremental accuracy | forgetting | " + " | ".join(
                 f"after {i + 1}" for i in range(len(first.requests))) + " | mean feature drift | seconds / "
             "request |", "|---|---|---|---|" + "---|" * len(first.requests) + "---|---|"]
    for name, r in all_results.items():
        s, requests = r.summary, r.requests
        drift = [d for d in s["feature_drift"] if d is not None]
        lines.append(f"| {name} | {fmt(s['last_accuracy'])} | {fmt(s['average_incremental_accuracy'])} | "
                     f"{fmt(s['forgetting'])} | " + " | ".join(fmt(t.after["acc_seen"]) for t in requests)
                     + f" | {fmt(sum(drift) / len(drift) if drift else None, 4)} | "
                     f"{s['seconds_total'] / len(requests):.1f} |")
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    write_json(out / "comparison.json", {"spec": spec, "rows": rows})
    plot_learn_comparison(all_results, out / "comparison.png", highlight)
    return rows


def plot_learn_comparison(all_results: dict[str, RunRecord], path: Path, highlight: set[str]) -> None:
    from ..io import atomic_write
    from ..report import new_figure

    fig, ax = new_figure(figsize=(7, 4.2))
    markers = "os^vD<>phX*P"
    for i, (name, results) in enumerate(all_results.items()):
        requests = results.requests
        ax.plot(range(1, len(requests) + 1), [t.after["acc_seen"] for t in requests], marker=markers[i % len(markers)],
                linewidth=2.6 if name in highlight else 1.2, label=name)
    ax.set_xlabel("request (classes learnt so far grow)")
    ax.set_ylabel("accuracy on all seen classes (%)")
    ax.set_ylim(0, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("class-incremental learning (higher is better)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
