"""Run several methods on one protocol and write one comparison (T-PAMI Table 3 layout, CSV, plot).

A bench spec (YAML)::

    base: demo                 # a run config (packaged name or YAML path) giving data, protocol, train, seed
    output_dir: runs/bench
    overrides: []              # section.key=value applied to every method
    methods:                   # name -> that method's fields; an optional `train:` mapping overrides train.*
      gs_lora: {}              # {} takes the base config's method section when it is the same method
      l2: {train: {lr: 0.001}}
      no_drs: {method: lora_sub_drs, drs: false}   # a variant: its own row, the registered method it runs

Each method's own outputs (results.json, report, plots, model) go to ``output_dir/<method>/``. The comparison is
the one of the base config's request kind: forgetting methods by cumulative H, learning methods by last accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import load_config
from .config import from_dict, read_yaml, to_dict
from .engine.plan import plan_run
from .engine.run import run_requests
from .errors import ForgetkitError
from .io import atomic_write, write_json, write_text
from .methods import METHODS
from .methods.configs import MethodConfig
from .report import fmt, new_figure, results_table, task_label, verify_comparison
from .runstate import crash_point

CSV_COLUMNS = ["method", "task", "h_cumulative", "h_mean", "acc_r", "acc_f", "acc_o", "acc_f_all", "seconds",
               "trainable_ratio"]


@dataclass
class BenchSpec:
    """Which methods to compare on which protocol."""

    base: str = field(default="demo", metadata={"help": "run config giving data, protocol, train and seed"})
    output_dir: str = "runs/bench"
    overrides: list[str] = field(default_factory=list)
    methods: dict[str, Any] | None = field(default=None, metadata={
        "help": "method name -> its fields; null = every method that can edit the base config's model"})


def load_bench_spec(path: str | None, methods: list[str] | None = None, output_dir: str | None = None,
                    overrides: list[str] | None = None) -> BenchSpec:
    spec = from_dict(BenchSpec, read_yaml(path) if path else {}, "bench")
    spec.overrides = list(spec.overrides) + list(overrides or [])
    if spec.methods is None:
        base = load_config(spec.base, spec.overrides)
        spec.methods = {name: {} for name in methods_for(base.model, base.kind)}
    if methods:
        spec.methods = {m: spec.methods.get(m, {}) for m in methods}
    if output_dir:
        spec.output_dir = output_dir
    for name, fields in spec.methods.items():
        METHODS.get(registered(name, fields))  # unknown names fail before anything runs
    return spec


def registered(name: str, fields: dict | None) -> str:
    """The registered method a bench row runs: its ``method`` field for a variant, else its name."""
    return (fields or {}).get("method", name)


def methods_for(model_name: str, kind: str = "forget") -> list[str]:
    """The registered methods of a request kind whose required capabilities the model has."""
    from .methods.base import model_capabilities
    from .models.formats import load_checkpoint, resolve_model_path

    model, _ = load_checkpoint(resolve_model_path(model_name))
    found = model_capabilities(model)
    return [name for name in METHODS.names()
            if kind in METHODS.get(name).supports and METHODS.get(name).requires <= found]


def method_overrides(base_method: MethodConfig, name: str, fields: dict | None) -> list[str]:
    """Overrides that run method ``name``: the settings the base config changed from its method's defaults, when this
    method's config extends the base method's config (GS-LoRA++ keeps the base GS-LoRA's LoRA shape, β, BND and α; a
    baseline, whose fields may share a name but not a meaning, inherits nothing), then ``fields``."""
    fields = dict(fields or {})
    train = fields.pop("train", {}) or {}
    name = fields.pop("method", name)
    inherit = issubclass(METHODS.get(name).config_cls, type(base_method))
    # only what the base config set: a subclass keeps its own defaults (seq_lora is LoRA-Sub-DRS without DRS)
    defaults = to_dict(type(base_method)())
    section = {k: v for k, v in to_dict(base_method).items() if k != "name" and v != defaults.get(k)} if inherit \
        else {}
    section.update(fields)
    section["name"] = name
    out = [f"method={_flow(section)}"]
    out += [f"train.{k}={_flow(v)}" for k, v in train.items()]
    return out


def _flow(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def run_bench(spec: BenchSpec, progress: bool = True, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """Run every method of ``spec`` and write ``comparison.md``, ``comparison.csv`` and ``comparison.png``.

    Args:
        spec: the bench spec.
        progress: progress bars and a line per method.
        resume: keep the methods that finished, continue the one that was stopped from its last finished request,
            and run the rest.
        overwrite: run every method again, replacing its earlier results (without it, and without ``resume``, a
            method's earlier results are refused before anything runs).
    """
    out = Path(spec.output_dir)
    configs = {}
    for name, fields in spec.methods.items():
        base = load_config(spec.base, spec.overrides)
        overrides = spec.overrides + method_overrides(base.method, name, fields) + [
            f"output_dir={out / name}"]
        if "lr" not in (fields or {}).get("train", {}):
            overrides.append("train.lr=null")  # each method's own default unless the spec sets one
        configs[name] = load_config(spec.base, overrides)
        plan_run(configs[name], overwrite=overwrite, resume=resume)  # every method checked before any runs
    all_results = {}
    for name, cfg in configs.items():
        start = time.time()
        if progress:
            print(f"[bench] {name} ...", flush=True)
        crash_point(f"bench_{name}")
        all_results[name] = run_requests(cfg, progress=progress, overwrite=overwrite, resume=resume)
        if progress:
            print(f"[bench] {name} done in {time.time() - start:.0f} s", flush=True)
    return compare(out, all_results, spec)


def report_only(spec: BenchSpec) -> list[dict]:
    """Rebuild the comparison from the methods' finished runs (after re-running some of them alone)."""
    out = Path(spec.output_dir)
    all_results = {}
    for name in spec.methods:
        path = out / name / "results.json"
        if not path.is_file():
            raise ForgetkitError(f"{path} not found; run `forgetkit bench` for {name} first")
        all_results[name] = json.loads(path.read_text())
    return compare(out, all_results, spec)


def compare(out: Path, all_results: dict[str, dict], spec: BenchSpec) -> list[dict]:
    """The comparison of the runs' request kind (every run of a bench has the base config's kind)."""
    kind = next(iter(all_results.values())).get("kind", "forget")
    if kind not in COMPARISONS:
        raise ForgetkitError(f"bench compares forget and learn runs, not {kind} runs; run restore requests with "
                             f"forgetkit restore")
    return COMPARISONS[kind](out, all_results, spec)


def comparison_rows(all_results: dict[str, dict]) -> list[dict]:
    rows = []
    for name, results in all_results.items():
        for t in results["tasks"]:
            a = t["after"]
            row = {"method": name, "task": task_label(t), "h_cumulative": t["h_cumulative"], "h_mean": t["h_mean"],
                   "acc_r": a["acc_r"], "acc_f": a["acc_f"], "acc_o": a["acc_o"], "acc_f_all": a["acc_f_all"],
                   "seconds": t["seconds"],
                   "trainable_ratio": 100.0 * t["trainable_params"] / t["total_params"]}
            if "acc_m" in a:  # missing-class protocols: Acc_m, and Acc_r of the classes with replay data
                row.update(acc_m=a["acc_m"], acc_r_data=a["acc_r_data"])
            if "acc_other" in a:  # zero-shot models: accuracy on the other datasets (eval.other_data)
                row.update(acc_other=a["acc_other"])
            rows.append(row)
    return rows


def write_comparison(out: Path, all_results: dict[str, dict], spec: BenchSpec) -> list[dict]:
    """Write the comparison files, best method first by average cumulative H; returns the CSV rows."""
    all_results = dict(sorted(all_results.items(), key=lambda kv: -(kv[1]["summary"]["h_cumulative_avg"] or 0.0)))
    rows = comparison_rows(all_results)
    columns = CSV_COLUMNS + (["acc_m", "acc_r_data"] if any("acc_m" in r for r in rows) else []) + (
        ["acc_other"] if any("acc_other" in r for r in rows) else [])
    write_csv(out / "comparison.csv", rows, columns)
    first = next(iter(all_results.values()))
    missing = any("acc_m" in r for r in rows)
    cells = "H / Acc_r / Acc_f / Acc_o / Acc_m (Acc_r includes the missing classes)" if missing else \
        "H / Acc_r / Acc_f / Acc_o"
    lines = [f"# Comparison on {first['dataset']} ({first['setting']}), seed {first['seed']}", "",
             f"Cells: {cells} (percent). H uses the drop of Acc_f from the pre-trained model. Methods are sorted by "
             f"average cumulative H: the H of every class forgotten so far (Acc_f_all) against Acc_r, which a "
             f"class forgotten earlier that comes back lowers.", "",
             results_table([(n, r["tasks"]) for n, r in all_results.items()]), "",
             "| method | avg cumulative H | avg H | avg Acc_r | avg Acc_f | avg Acc_o | "
             + ("avg other data | " if "acc_other" in columns else "") + "trainable | seconds / task |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if "acc_other" in columns else "")]
    for name, r in all_results.items():
        s, tasks = r["summary"], r["tasks"]
        ratio = 100.0 * tasks[0]["trainable_params"] / tasks[0]["total_params"]
        other = [t["after"]["acc_other"] for t in tasks if "acc_other" in t["after"]]
        lines.append(f"| {name} | {fmt(s['h_cumulative_avg'])} | {fmt(s['h_mean_avg'])} | {fmt(s['acc_r_avg'])} | "
                     f"{fmt(s['acc_f_avg'])} | {fmt(s['acc_o_avg'])} | "
                     + (f"{fmt(sum(other) / len(other) if other else None)} | " if "acc_other" in columns else "")
                     + f"{ratio:.2f} % | {s['seconds_total'] / len(tasks):.1f} |")
    lines += verification_section(all_results)
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    write_json(out / "comparison.json", {"spec": {"base": spec.base, "overrides": spec.overrides,
                                                  "methods": spec.methods}, "rows": rows})
    plot_comparison(all_results, out / "comparison.png")
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """The comparison's rows as CSV: floats to 4 decimals, missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k]))
                         for k in columns})
    write_text(path, buffer.getvalue())


def verification_section(all_results: dict[str, dict]) -> list[str]:
    """With eval.verify: every method's checks after its last request side by side, the pre-trained model and the
    reference (a model trained without the forgotten classes) as the rows to read them against."""
    last = {name: r["tasks"][-1]["verify"] for name, r in all_results.items() if "verify" in r["tasks"][-1]}
    if not last:
        return []
    first = next(iter(last.values()))
    return ["", f"## Verification after the last request ({first['forgotten_classes']} classes forgotten; "
            "docs/verify.md)", "", *verify_comparison(last)]


def plot_comparison(all_results: dict[str, dict], path: Path) -> None:
    """H per task (one line per method, distinct colour and marker) and average Acc_r / Acc_f / Acc_o bars."""
    from matplotlib import colormaps

    names = list(all_results)
    colours = colormaps["tab20"].colors
    markers = "os^vD<>phX*P"
    fig, axes = new_figure(1, 2, figsize=(12, 4.4))
    first = all_results[names[0]]["tasks"]
    xs = list(range(1, len(first) + 1))
    for i, name in enumerate(names):
        tasks = all_results[name]["tasks"]
        ours = name.startswith("gs_lora")
        colour = colours[(2 * i) % 20 + (2 * i) // 20 % 2]  # dark shades first, then the light ones
        axes[0].plot(xs, [t["h_cumulative"] for t in tasks], marker=markers[i % len(markers)], color=colour,
                     linewidth=2.6 if ours else 1.2, label=name, zorder=3 if ours else 2)
    axes[0].set_xticks(xs, [task_label(t) for t in first])
    axes[0].set_xlabel("task (classes present − forgotten)")
    axes[0].set_ylabel("cumulative H (%)")
    axes[0].set_title("cumulative H per task (higher is better)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2, loc="lower right")
    summary = [all_results[n]["summary"] for n in names]
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


def write_learn_comparison(out: Path, all_results: dict[str, dict], spec: BenchSpec) -> list[dict]:
    """Class-incremental comparison: best last accuracy first; per request, the accuracy on all classes seen."""
    all_results = dict(sorted(all_results.items(), key=lambda kv: -(kv[1]["summary"]["last_accuracy"] or 0.0)))
    rows = [{"method": name, "request": t["index"] + 1, "acc_seen": t["after"]["acc_seen"],
             "acc_new": t["after"]["acc_new"], "acc_old": t["after"]["acc_old"],
             "feature_drift": drift, "seconds": t["seconds"]}
            for name, results in all_results.items()
            for t, drift in zip(results["tasks"], results["summary"]["feature_drift"])]
    columns = list(rows[0])
    write_csv(out / "comparison.csv", rows, columns)
    first = next(iter(all_results.values()))
    lines = [f"# Class-incremental comparison on {first['dataset']}, {len(first['tasks'])} requests, seed "
             f"{first['seed']}", "",
             "Accuracy in percent on every class learnt so far (nearest class mean), after each request. Methods are "
             "sorted by last accuracy; forgetting is the mean drop of each request's classes from their best.", "",
             "| method | last accuracy | average incremental accuracy | forgetting | " + " | ".join(
                 f"after {i + 1}" for i in range(len(first["tasks"]))) + " | mean feature drift | seconds / "
             "request |", "|---|---|---|---|" + "---|" * len(first["tasks"]) + "---|---|"]
    for name, r in all_results.items():
        s, tasks = r["summary"], r["tasks"]
        drift = [d for d in s["feature_drift"] if d is not None]
        lines.append(f"| {name} | {fmt(s['last_accuracy'])} | {fmt(s['average_incremental_accuracy'])} | "
                     f"{fmt(s['forgetting'])} | " + " | ".join(fmt(t["after"]["acc_seen"]) for t in tasks)
                     + f" | {fmt(sum(drift) / len(drift) if drift else None, 4)} | "
                     f"{s['seconds_total'] / len(tasks):.1f} |")
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    write_json(out / "comparison.json", {"spec": {"base": spec.base, "overrides": spec.overrides,
                                                  "methods": spec.methods}, "rows": rows})
    plot_learn_comparison(all_results, out / "comparison.png")
    return rows


def plot_learn_comparison(all_results: dict[str, dict], path: Path) -> None:
    fig, ax = new_figure(figsize=(7, 4.2))
    markers = "os^vD<>phX*P"
    for i, (name, results) in enumerate(all_results.items()):
        tasks = results["tasks"]
        ax.plot(range(1, len(tasks) + 1), [t["after"]["acc_seen"] for t in tasks], marker=markers[i % len(markers)],
                linewidth=2.6 if name == "lora_sub_drs" else 1.2, label=name)
    ax.set_xlabel("request (classes learnt so far grow)")
    ax.set_ylabel("accuracy on all seen classes (%)")
    ax.set_ylim(0, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("class-incremental learning (higher is better)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


COMPARISONS = {"forget": write_comparison, "learn": write_learn_comparison}
