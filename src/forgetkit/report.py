"""Run outputs: ``results.json``, ``config.yaml``, a markdown report laid out like T-PAMI Table 3, and plots."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .extras import available, missing_hint, require
from .io import atomic_write, write_json, write_text, write_yaml

logger = logging.getLogger("forgetkit")

if TYPE_CHECKING:
    from .requests.base import RequestRecord, RunRecord


def new_figure(*grid, figsize):
    """A matplotlib figure and its axes, made without pyplot: no global backend is set and no figure stays open in
    the caller's process."""
    fig = require("matplotlib.figure", "plots").Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def request_label(request: RequestRecord) -> str:
    """The papers' column label: classes present − classes forgotten (e.g. 100-20)."""
    return f"{len(request.retain_classes) + len(request.classes)}-{len(request.classes)}"


def results_table(rows: list[tuple[str, list[RequestRecord]]],
                  pretrained_row: list[RequestRecord] | None = None) -> str:
    """Markdown table: rows = methods, columns = tasks, cells = H / Acc_r / Acc_f / Acc_o (percent)."""
    ref = pretrained_row if pretrained_row is not None else rows[0][1]
    header = "| Method | " + " | ".join(request_label(t) for t in ref) + " |"
    lines = [header, "|" + "---|" * (len(ref) + 1)]
    lines.append("| Pre-train | " + " | ".join(
        f"– / {fmt(t.pretrained['acc_r'])} / {fmt(t.pretrained['acc_f'])}"
        + (f" / – / {fmt(t.pretrained['acc_m'])}" if "acc_m" in t.pretrained else "") for t in ref) + " |")
    for name, requests in rows:
        cells = []
        for t in requests:
            a = t.after
            cell = f"{fmt(t.h_mean)} / {fmt(a['acc_r'])} / {fmt(a['acc_f'])}"
            if a["acc_o"] is not None or "acc_m" in a:
                cell += f" / {fmt(a['acc_o'])}"
            if "acc_m" in a:  # T-PAMI Table 5 layout: H / Acc_r / Acc_f / Acc_o / Acc_m
                cell += f" / {fmt(a['acc_m'])}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(results: RunRecord) -> str:
    requests = results.requests
    out = [f"# forgetkit run: {results.method} on {results.dataset} ({results.setting})", ""]
    out.append(f"Seed {results.seed}; evaluated on the {results.eval_split} split with "
               f"{results.accuracy} accuracy; pre-trained accuracy {fmt(results.pretrained['acc'])} %.")
    out += ["", "Cells are H / Acc_r / Acc_f / Acc_o in percent (Acc_o: classes forgotten in earlier tasks; "
            "none on the first task), then Acc_m when some retained classes have no replay data (Acc_r then "
            "includes them). H uses the drop of Acc_f from the pre-trained model.", ""]
    out.append(results_table([(results.method, requests)]))
    out += ["", "## Per task", "",
            "Cumulative H counts every class forgotten so far (Acc_f_all), so a class that comes back lowers it; the "
            "papers' H sees only the request's own classes.", "",
            "| task | forgotten | verdict | H | cumulative H | Acc_f before → after | Acc_r before → after | "
            "Acc_o after | seconds | trainable / total params | groups near zero |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in requests:
        b, a = t.before, t.after
        zeroed = f"{t.stats['groups_zeroed']} / {t.stats['num_groups']}" if "groups_zeroed" in t.stats else "–"
        out.append(
            f"| {t.index + 1} | {', '.join(t.classes)} | "
            f"{'PASS' if t.passed else 'FAIL: ' + '; '.join(t.failed)} | "
            f"{fmt(t.h_mean)} | {fmt(t.h_cumulative)} | "
            f"{fmt(b['acc_f'])} → "
            f"{fmt(a['acc_f'])} | {fmt(b['acc_r'])} → {fmt(a['acc_r'])} | {fmt(a['acc_o'])} | {t.seconds:.1f} | "
            f"{t.trainable_params:,} / {t.total_params:,} "
            f"({100 * t.trainable_params / t.total_params:.2f} %)"
            f" | {zeroed} |")
    if requests and "group_norms" in requests[0].stats:
        keys = list(requests[0].stats["group_norms"])
        out += ["", "## LoRA group norms (one group per block, √Σ‖P‖² at the end of each task)", "",
                "| task | " + " | ".join(f"block {k}" for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for t in requests:
            out.append(f"| {t.index + 1} | " + " | ".join(f"{t.stats['group_norms'][k]:.3g}" for k in keys) + " |")
    for t in requests:  # eval.verify: what the features still hold of every class forgotten so far (docs/verify.md)
        if t.verify is not None:
            out += ["", f"## Verification after request {t.index + 1} ({t.verify['forgotten_classes']} classes "
                    f"forgotten so far)", ""] + verify_table(t.verify)
    out += per_class_table(results)
    s = results.summary
    out += ["", "## Summary", "", f"- average cumulative H: {fmt(s['h_cumulative_avg'])}",
            f"- average H: {fmt(s['h_mean_avg'])}", f"- average Acc_f: {fmt(s['acc_f_avg'])}",
            f"- average Acc_r: {fmt(s['acc_r_avg'])}", f"- average Acc_o: {fmt(s['acc_o_avg'])}",
            f"- total seconds: {s['seconds_total']}", "",
            "Plots: `accuracy.png` (accuracies after each task)"
            + (", `group_norms.png` (LoRA group norms)" if any("group_norms" in t.stats for t in requests) else "")
            + ".", ""]
    return "\n".join(out)


def ledger_table(ledger: list[dict], manifest: dict) -> str:
    """A checkpoint's ledger as a markdown table, oldest request first."""
    base = manifest.get("base") or {}
    base_print = (base.get("fingerprint") or manifest.get("fingerprint", ""))[:12]
    lines = [f"base: {base.get('path', '(this checkpoint)')} ({base_print})",
             "", "| # | kind | classes | method | verdict | accuracy after (%) | weights before → after | edit | "
             "time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in ledger:
        after = e.get("metrics", {}).get("after", {})
        numbers = ", ".join(f"{label} {fmt(after[key])}" for key, label in LEDGER_NUMBERS if after.get(key) is not None)
        verdict = "PASS" if e["verdict"]["pass"] else "FAIL: " + "; ".join(e["verdict"]["failed"])
        edit = e["edit"]["type"] if e.get("edit") else "–"
        lines.append(f"| {e['index'] + 1} | {e['kind']} | {', '.join(e['classes'])} | {e['method']} | {verdict} | "
                     f"{numbers or '–'} | {e['fingerprint_before'][:12]} → {e['fingerprint_after'][:12]} | {edit} | "
                     f"{e.get('time', '')} |")
    return "\n".join(lines)


# the ledger table's numbers, whichever a request's kind measured: forgotten, restored or new classes, then the others
LEDGER_NUMBERS = (("acc_f", "forgotten"), ("acc_restored", "restored"), ("acc_new", "new"), ("acc_r", "retained"),
                  ("acc_old", "known"))


def per_class_table(results: RunRecord) -> list[str]:
    """Accuracy of every class after every request (f: forgotten by then), so a user sees which classes paid."""
    requests = results.requests
    lines = ["", "## Per class (accuracy after each request; f = forgotten by then)", "",
             "| class | pre-trained | " + " | ".join(f"after {t.index + 1}" for t in requests) + " |",
             "|---|---|" + "---|" * len(requests)]
    for name, pre in results.pretrained["per_class"].items():
        cells = []
        for t in requests:
            mark = " f" if name in t.details.get("forget_classes", []) or name in t.old_classes else ""
            cells.append(f"{fmt(t.per_class['after'][name], 1)}{mark}")
        lines.append(f"| {name} | {fmt(pre, 1)} | " + " | ".join(cells) + " |")
    return lines


def plot_accuracy(results: RunRecord, path: Path) -> None:
    requests = results.requests
    xs = list(range(1, len(requests) + 1))
    fig, ax = new_figure(figsize=(6, 3.6))
    for key, label, style in (("acc_r", "Acc_r (retained)", "o-"), ("acc_f", "Acc_f (forgotten now)", "s-"),
                              ("acc_o", "Acc_o (forgotten earlier)", "^-")):
        ys = [t.after[key] for t in requests]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.plot(xs, [t.pretrained["acc_r"] for t in requests], "o--", color="grey", alpha=0.6, label="Acc_r pre-trained")
    ax.plot(xs, [t.h_mean for t in requests], "d:", color="black", label="H-Mean")
    ax.plot(xs, [t.h_cumulative for t in requests], "d-", color="black", alpha=0.5, label="cumulative H")
    ax.set_xticks(xs, [request_label(t) for t in requests])
    ax.set_xlabel("task (classes present − forgotten)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"{results.method} on {results.dataset}")
    ax.legend(fontsize=7, loc="center left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def plot_group_norms(results: RunRecord, path: Path) -> None:
    requests = [t for t in results.requests if "group_norms" in t.stats]
    if not requests:
        return
    keys = list(requests[0].stats["group_norms"])
    fig, ax = new_figure(figsize=(6, 3.6))
    width = 0.8 / len(requests)
    for i, t in enumerate(requests):
        ax.bar([j + i * width for j in range(len(keys))], [max(t.stats['group_norms'][k], 1e-6) for k in keys], width,
               label=f"task {t.index + 1}")
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [f"block {k}" for k in keys])
    ax.set_ylabel("group norm √Σ‖P‖² (log)")
    ax.set_title("LoRA group norms per block: few blocks change")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def write_outputs(out: Path, results: RunRecord, config: dict, kind) -> None:
    """Write config, the request kind's report and plots first and ``results.json`` last: its presence means a
    complete run."""
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", config)
    write_text(out / "report.md", kind.report(results))
    if available("matplotlib"):
        kind.plot(results, out)
    else:  # the results stand without their pictures; say once per run how to get them
        logger.warning("plots not written: %s", missing_hint("matplotlib", "plotting a run"))
    write_json(out / "results.json", results.to_dict())


def restore_report(results: RunRecord) -> str:
    """report.md of a run of restore requests."""
    out = [f"# forgetkit run: restore with {results.method} on {results.dataset}", "",
           f"Seed {results.seed}; evaluated on the {results.eval_split} split. Accuracy in percent; the base "
           f"model is the checkpoint before any request of the ledger.", "",
           "| request | restored | verdict | restored: before → after (base) | retained: before → after | "
           "still forgotten after | seconds |", "|---|---|---|---|---|---|---|"]
    for t in results.requests:
        b, a, p = t.before, t.after, t.pretrained
        out.append(f"| {t.index + 1} | {', '.join(t.classes)} | "
                   f"{'PASS' if t.passed else 'FAIL: ' + '; '.join(t.failed)} | "
                   f"{fmt(b['acc_restored'])} → {fmt(a['acc_restored'])} ({fmt(p['acc_restored'])}) | "
                   f"{fmt(b['acc_r'])} → {fmt(a['acc_r'])} | {fmt(a['acc_o'])} | {t.seconds:.1f} |")
    out += per_class_table(results)
    return "\n".join(out) + "\n"


def learn_report(results: RunRecord) -> str:
    """report.md of a run of learn requests: per request, then the class-incremental accuracy matrix."""
    requests, s = results.requests, results.summary
    out = [f"# forgetkit run: learn with {results.method} on {results.dataset}", "",
           f"Seed {results.seed}; evaluated on the {results.eval_split} split (accuracy in percent, nearest "
           f"class mean over the classes the model knows). Last accuracy {fmt(s['last_accuracy'])}, average "
           f"incremental accuracy {fmt(s['average_incremental_accuracy'])}, forgetting {fmt(s['forgetting'])}.", "",
           "| request | new classes | verdict | new | known: before → after | all seen | forgotten | feature drift "
           "| seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for t, drift in zip(requests, s["feature_drift"]):
        b, a = t.before, t.after
        out.append(f"| {t.index + 1} | {', '.join(t.classes)} | "
                   f"{'PASS' if t.passed else 'FAIL: ' + '; '.join(t.failed)} | "
                   f"{fmt(a['acc_new'])} | {fmt(b['acc_old'])} → {fmt(a['acc_old'])} | {fmt(a['acc_seen'])} | "
                   f"{fmt(a['acc_o'])} | {fmt(drift, 4)} | {t.seconds:.1f} |")
    matrix = s["accuracy_matrix"]
    out += ["", "## Accuracy matrix", "",
            "Row: after request i; column: the classes of request j (mean of their accuracies). Feature drift: how "
            "much the known classes' prototype gap (1 − cosine between the stored prototype and the class's mean "
            "embedding on evaluation images) grew since their request.", "",
            "| after | " + " | ".join(f"classes of {j + 1}" for j in range(len(matrix))) + " |",
            "|---|" + "---|" * len(matrix)]
    for i, row in enumerate(matrix):
        out.append(f"| {i + 1} | " + " | ".join(fmt(v, 1) for v in row) + " |")
    return "\n".join(out) + "\n"


def plot_learning(results: RunRecord, path: Path) -> None:
    """Accuracy on all seen classes after each request, and the accuracy matrix as a heat map."""
    requests, matrix = results.requests, results.summary["accuracy_matrix"]
    xs = list(range(1, len(requests) + 1))
    fig, (left, right) = new_figure(1, 2, figsize=(9, 3.6))
    left.plot(xs, [t.after["acc_seen"] for t in requests], "o-", label="all seen classes")
    left.plot(xs, [t.after["acc_new"] for t in requests], "s--", label="new classes")
    left.set_xticks(xs)
    left.set_xlabel("request")
    left.set_ylabel("accuracy (%)")
    left.set_ylim(-3, 103)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    left.set_title(f"{results.method} on {results.dataset}")
    grid = [[float("nan") if v is None else v for v in row] for row in matrix]
    image = right.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    right.set_xticks(range(len(matrix)), [str(j + 1) for j in range(len(matrix))])
    right.set_yticks(range(len(matrix)), [str(i + 1) for i in range(len(matrix))])
    right.set_xlabel("classes of request")
    right.set_ylabel("after request")
    right.set_title("accuracy matrix")
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def verify_table(verify: dict) -> list[str]:
    """Verification of one model (``forgetkit verify`` or a request's ``verify``): a row per model checked; the
    CKA null and the relearning target in the header."""
    def steps(value):
        return "> cap" if value is None else str(value)

    shots = list(verify["model"]["relearn_steps"])
    target = verify.get("relearn_target") or {}
    novel = "probe_novel" in verify["model"]  # eval.verify.novel: the same probes on never-seen classes
    lines = ["| model | Acc_f | loss attack acc. | loss attack AUC | loss AUC retained (control) | SalUn efficacy | "
             "probe F | k-NN F | prototype F | " + ("probe / k-NN / prototype, never-seen classes | " if novel else "")
             + "probe R | retain-only rebound | "
             f"CKA to pre-trained (null {fmt(verify.get('cka_null'), 3)}) | CKA to reference | "
             + " | ".join(f"relearn steps k={k} (F1 ≥ {fmt(target.get(k), 1)})" for k in shots) + " | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * (len(shots) + 1 + novel)]
    for name in ("model", "pretrained", "reference"):
        if name not in verify:
            continue
        r = verify[name]
        unseen = (f"{fmt(r.get('probe_novel'), 1)} / {fmt(r.get('knn_novel'), 1)} / "
                  f"{fmt(r.get('prototype_novel'), 1)} | ") if novel else ""
        lines.append(f"| {name} | {fmt(r['acc_forgotten'], 1)} | {fmt(r['loss_attack_accuracy'], 3)} | "
                     f"{fmt(r['loss_attack_auc'], 3)} | {fmt(r['loss_attack_auc_retained'], 3)} | "
                     f"{fmt(r['mia_confidence_efficacy'], 3)} | {fmt(r['probe_forgotten'], 1)} | "
                     f"{fmt(r['knn_forgotten'], 1)} | {fmt(r['prototype_forgotten'], 1)} | {unseen}"
                     f"{fmt(r['probe_retained'], 1)} | {fmt(r['retain_rebound']['rebound'], 1)} | "
                     f"{fmt(r['cka_to_pretrained'], 3)} | {fmt(r.get('cka_to_reference'), 3)} | "
                     + " | ".join(steps(r["relearn_steps"][k]) for k in shots) + f" | {fmt(r.get('seconds'), 1)} |")
    return lines


def verify_comparison(by_name: dict[str, dict]) -> list[str]:
    """Several models' verifications in one table: a row per name, then the pre-trained and reference rows (of the
    first: every verification of a comparison shares them)."""
    first = next(iter(by_name.values()))
    table = verify_table(first)
    rows = [verify_table({"model": v["model"]})[2].replace("| model |", f"| {name} |", 1)
            for name, v in by_name.items()]
    return [*table[:2], *rows, *table[3:]]


def plot_verify(verify: dict, path: Path) -> None:
    """Probe, k-NN and prototype attack on the forgotten classes, and each row's relearning curve against the
    target."""
    names = [n for n in ("model", "pretrained", "reference") if n in verify]
    fig, (left, right) = new_figure(1, 2, figsize=(10, 3.8))
    pos = list(range(len(names)))
    for offset, key, label in ((-0.27, "probe_forgotten", "linear probe"), (0.0, "knn_forgotten", "k-NN"),
                               (0.27, "prototype_forgotten", "prototype attack")):
        left.bar([p + offset for p in pos], [verify[n][key] for n in names], 0.27, label=label)
    left.set_xticks(pos, names)
    left.set_ylabel("accuracy on forgotten classes (%)")
    left.set_ylim(0, 105)
    left.legend(fontsize=7)
    left.set_title("what the features still separate")
    for n in names:
        for k, curve in verify[n]["relearn_curve"].items():
            right.plot([c[0] for c in curve], [c[1] for c in curve], marker=".", label=f"{n} (k={k})")
    for value in (verify.get("relearn_target") or {}).values():
        right.axhline(value, color="grey", linestyle="--", linewidth=0.8)
    right.set_xlabel("relearning steps (forgotten and retained images)")
    right.set_ylabel("macro-F1 on forgotten classes (%)")
    right.set_ylim(0, 105)
    right.legend(fontsize=7)
    right.set_title("relearning curve (dashed: target)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """The comparison's rows as CSV: floats to 4 decimals, missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k]))
                         for k in columns})
    write_text(path, buffer.getvalue())
