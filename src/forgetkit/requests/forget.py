"""The forget kind: classes whose held-out accuracy falls to a threshold while the others keep theirs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BUDGET_HINT, ForgetkitError
from ..extras import require
from ..ledger import forgotten_classes
from .base import RequestKind, RunRecord, deep_failures, register_kind, retained_drop

if TYPE_CHECKING:
    from ..metrics import PerClass

CSV_COLUMNS = ["method", "task", "h_cumulative", "h_mean", "acc_r", "acc_f", "acc_o", "acc_f_all", "seconds",
               "trainable_ratio"]



def _accuracies(pc: PerClass, request) -> dict[str, float | None]:
    accs = {"acc_f": pc.accuracy(request.classes), "acc_r": pc.accuracy(request.retain),
            "acc_o": pc.accuracy(request.old) if request.old else None,
            # every class forgotten so far (this request's and the earlier ones'): what relapse shows up in
            "acc_f_all": pc.accuracy(request.classes + request.old),
            # the whole test set, sample-weighted (LIRF's Avg Acc)
            "acc_all": pc.accuracy(request.classes + request.retain + request.old)}
    if request.missing:  # Acc_r counts the missing classes (as T-PAMI Table 5); Acc_m and Acc_r with data apart
        accs["acc_m"] = pc.accuracy(request.missing)
        accs["acc_r_data"] = pc.accuracy(request.replay)
    return accs


@register_kind("forget")
class Forget(RequestKind):
    """Forget classes: their held-out accuracy falls to a threshold, the other classes keep theirs."""

    streams = ("forget", "retain")
    ledger_metrics = ("after", "h_mean", "h_cumulative")
    fix_hint = f"{BUDGET_HINT} (docs/baselines.md)"

    def make_requests(self, cfg, classes, forgotten, first_index, known=None):
        from .protocol import make_requests

        return make_requests(cfg, classes, forgotten, first_index)

    def describe(self, request, names):
        return {"classes": [names[c] for c in request.classes],
                "forget_classes": [names[c] for c in request.classes],
                "retain_classes": [names[c] for c in request.retain],
                "old_classes": [names[c] for c in request.old],
                "missing_classes": [names[c] for c in request.missing]}

    def report(self, results):
        from ..report import markdown_report

        return markdown_report(results)

    def plot(self, results, out):
        from ..report import plot_accuracy, plot_group_norms

        plot_accuracy(results, out / "accuracy.png")
        plot_group_norms(results, out / "group_norms.png")

    def summary_lines(self, results, wall):
        from ..report import results_table

        s = results.summary
        return (results_table([(results.method, results.requests)])
                + f"\n\naverage cumulative H {s['h_cumulative_avg']:.2f}  H {s['h_mean_avg']:.2f}  Acc_f "
                  f"{s['acc_f_avg']:.2f}  Acc_r {s['acc_r_avg']:.2f}  ({s['seconds_total']:.0f} s of training, "
                  f"{wall:.0f} s in all with loading, evaluation and saving)")

    def compare(self, out, runs, spec, highlight):
        return write_comparison(out, runs, spec, highlight)

    def check(self, request, ledger, classes):
        done = forgotten_classes(ledger)
        for c in request.classes:
            if classes[c] in done:
                entry = ledger[done[classes[c]]]
                raise ForgetkitError(
                    f"class {classes[c]!r} was already forgotten by request {entry['index'] + 1} of this model's "
                    f"ledger ({entry.get('method')}, {entry.get('time', 'time unknown')}); restore it first, or "
                    f"leave it out of this request")

    def forgotten_after(self, request):
        return list(request.classes) + list(request.old)

    def measure(self, request, before, after, pretrained):
        from ..metrics import h_mean

        acc_after, acc_before, acc_pre = (_accuracies(pc, request) for pc in (after, before, pretrained))
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


def comparison_rows(all_results: dict[str, RunRecord]) -> list[dict]:
    from ..report import request_label

    rows = []
    for name, results in all_results.items():
        for t in results.requests:
            a = t.after
            row = {"method": name, "task": request_label(t), "h_cumulative": t.h_cumulative, "h_mean": t.h_mean,
                   "acc_r": a["acc_r"], "acc_f": a["acc_f"], "acc_o": a["acc_o"], "acc_f_all": a["acc_f_all"],
                   "seconds": t.seconds,
                   "trainable_ratio": 100.0 * t.trainable_params / t.total_params}
            if "acc_m" in a:  # missing-class protocols: Acc_m, and Acc_r of the classes with replay data
                row.update(acc_m=a["acc_m"], acc_r_data=a["acc_r_data"])
            if "acc_other" in a:  # zero-shot models: accuracy on the other datasets (eval.other_data)
                row.update(acc_other=a["acc_other"])
            rows.append(row)
    return rows


def write_comparison(out: Path, all_results: dict[str, RunRecord], spec: dict, highlight: set[str]) -> list[dict]:
    """The forget kind's bench comparison: best method first by average cumulative H; returns the CSV rows."""
    from ..io import write_json, write_text
    from ..report import fmt, results_table, write_csv

    all_results = dict(sorted(all_results.items(), key=lambda kv: -(kv[1].summary["h_cumulative_avg"] or 0.0)))
    rows = comparison_rows(all_results)
    columns = CSV_COLUMNS + (["acc_m", "acc_r_data"] if any("acc_m" in r for r in rows) else []) + (
        ["acc_other"] if any("acc_other" in r for r in rows) else [])
    write_csv(out / "comparison.csv", rows, columns)
    first = next(iter(all_results.values()))
    missing = any("acc_m" in r for r in rows)
    cells = "H / Acc_r / Acc_f / Acc_o / Acc_m (Acc_r includes the missing classes)" if missing else \
        "H / Acc_r / Acc_f / Acc_o"
    lines = [f"# Comparison on {first.dataset} ({first.setting}), seed {first.seed}", "",
             f"Cells: {cells} (percent). H uses the drop of Acc_f from the pre-trained model. Methods are sorted by "
             f"average cumulative H: the H of every class forgotten so far (Acc_f_all) against Acc_r, which a "
             f"class forgotten earlier that comes back lowers.", "",
             results_table([(n, r.requests) for n, r in all_results.items()]), "",
             "| method | avg cumulative H | avg H | avg Acc_r | avg Acc_f | avg Acc_o | "
             + ("avg other data | " if "acc_other" in columns else "") + "trainable | seconds / task |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if "acc_other" in columns else "")]
    for name, r in all_results.items():
        s, requests = r.summary, r.requests
        ratio = 100.0 * requests[0].trainable_params / requests[0].total_params
        other = [t.after["acc_other"] for t in requests if "acc_other" in t.after]
        lines.append(f"| {name} | {fmt(s['h_cumulative_avg'])} | {fmt(s['h_mean_avg'])} | {fmt(s['acc_r_avg'])} | "
                     f"{fmt(s['acc_f_avg'])} | {fmt(s['acc_o_avg'])} | "
                     + (f"{fmt(sum(other) / len(other) if other else None)} | " if "acc_other" in columns else "")
                     + f"{ratio:.2f} % | {s['seconds_total'] / len(requests):.1f} |")
    lines += verification_section(all_results)
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    write_json(out / "comparison.json", {"spec": spec, "rows": rows})
    plot_comparison(all_results, out / "comparison.png", highlight)
    return rows


def verification_section(all_results: dict[str, RunRecord]) -> list[str]:
    """With eval.verify: every method's checks after its last request side by side, the pre-trained model and the
    reference (a model trained without the forgotten classes) as the rows to read them against."""
    from ..report import verify_comparison

    last = {name: r.requests[-1].verify for name, r in all_results.items() if r.requests[-1].verify is not None}
    if not last:
        return []
    first = next(iter(last.values()))
    return ["", f"## Verification after the last request ({first['forgotten_classes']} classes forgotten; "
            "docs/verify.md)", "", *verify_comparison(last)]


def plot_comparison(all_results: dict[str, RunRecord], path: Path, highlight: set[str]) -> None:
    """H per task (one line per method, distinct colour and marker; the ``highlight`` ones bold) and average Acc_r /
    Acc_f / Acc_o bars."""
    from ..io import atomic_write
    from ..report import new_figure, request_label

    colormaps = require("matplotlib", "plots").colormaps

    names = list(all_results)
    colours = colormaps["tab20"].colors
    markers = "os^vD<>phX*P"
    fig, axes = new_figure(1, 2, figsize=(12, 4.4))
    first = all_results[names[0]].requests
    xs = list(range(1, len(first) + 1))
    for i, name in enumerate(names):
        requests = all_results[name].requests
        ours = name in highlight
        colour = colours[(2 * i) % 20 + (2 * i) // 20 % 2]  # dark shades first, then the light ones
        axes[0].plot(xs, [t.h_cumulative for t in requests], marker=markers[i % len(markers)], color=colour,
                     linewidth=2.6 if ours else 1.2, label=name, zorder=3 if ours else 2)
    axes[0].set_xticks(xs, [request_label(t) for t in first])
    axes[0].set_xlabel("task (classes present − forgotten)")
    axes[0].set_ylabel("cumulative H (%)")
    axes[0].set_title("cumulative H per task (higher is better)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2, loc="lower right")
    summary = [all_results[n].summary for n in names]
    pos = list(range(len(names)))
    axes[1].bar([p - 0.27 for p in pos], [s["acc_r_avg"] or 0 for s in summary], 0.27, label="avg Acc_r (retained)")
    axes[1].bar(pos, [s["acc_f_avg"] or 0 for s in summary], 0.27, label="avg Acc_f (forgotten now)")
    axes[1].bar([p + 0.27 for p in pos], [s["acc_o_avg"] or 0 for s in summary], 0.27,
                label="avg Acc_o (forgotten earlier)")
    axes[1].set_xticks(pos, names, rotation=45, ha="right")
    axes[1].set_ylabel("accuracy (%)")
    axes[1].set_ylim(0, 115)
    axes[1].set_title("retained vs forgotten (Acc_f, Acc_o: lower is better)")
    axes[1].legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
