"""Run one bench spec on several datasets and rank the methods on each (issue 10's cross-dataset comparison).

For each dataset of ``--datasets`` (bench/datasets.yaml: its checkpoint, data and protocol shape), runs
``forgetkit bench`` with the spec, evaluated on the test split, into ``OUT/<dataset>/``, then writes
``OUT/datasets.md``: every method's average cumulative H (and per-task H, Acc_r, Acc_f, Acc_o averages) per dataset,
and its rank. ``--report-only`` rebuilds the table from finished runs.

    .venv/bin/python bench/compare_datasets.py --spec bench/comparison_full.yaml --out runs/bench-datasets
    .venv/bin/python bench/compare_datasets.py --spec bench/comparison_fewshot.yaml --seeds 0,1,2 \\
        --methods gs_lora,gs_lora_pp,der_pp --out runs/bench-fewshot-datasets
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchdata import dataset_overrides, deep_overrides, deep_row, novel_gap

from forgetkit.bench import load_bench_spec, report_only, run_bench
from forgetkit.engine.config import VerifyConfig
from forgetkit.io import write_text
from forgetkit.report import fmt
from forgetkit.requests import RunRecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="bench spec YAML (methods and protocol)")
    parser.add_argument("--datasets", default="fashion_mnist,mnist_5k,glyphs60")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", help="comma-separated subset of the spec's methods")
    parser.add_argument("--out", default="runs/bench-datasets")
    parser.add_argument("-o", "--override", action="append", default=[], help="key=value for every run")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--deep", action="store_true", help="verify every request against the dataset's references "
                        "(bench/references.py; requests without one are judged by the reference-free rebound) and "
                        "write OUT/deep.md and OUT/front.png: the deep checks of every method, and cumulative H "
                        "against the probe gap to the reference")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else None
    table: dict[str, dict[str, list[dict]]] = {}
    for dataset in args.datasets.split(","):
        for seed in args.seeds.split(","):
            spec = load_bench_spec(args.spec, methods, f"{args.out}/{dataset}/seed{seed}",
                                   dataset_overrides(dataset, "test") + [f"seed={seed}"]
                                   + (deep_overrides(dataset) if args.deep else []) + args.override)
            runs = report_only(spec) if args.report_only else run_bench(spec, progress=True)
            for row in runs:
                table.setdefault(dataset, {}).setdefault(row["method"], []).append(row)
    lines = [f"# {args.spec} on {', '.join(table)}: test split, seeds {args.seeds}", "",
             "Per dataset, methods ranked by average cumulative H (the H of every class forgotten so far against "
             "Acc_r), averaged over tasks and seeds. Cells: avg cumulative H / avg H / avg Acc_r / avg Acc_f / "
             "avg Acc_o.", ""]
    for dataset, by_method in table.items():
        def avg(rows, key):
            values = [r[key] for r in rows if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        ranked = sorted(by_method, key=lambda m: -(avg(by_method[m], "h_cumulative") or 0.0))
        lines += [f"## {dataset}", "",
                  "| rank | method | avg cumulative H | avg H | avg Acc_r | avg Acc_f | avg Acc_o |",
                  "|---|---|---|---|---|---|---|"]
        for rank, method in enumerate(ranked, 1):
            rows = by_method[method]
            lines.append(f"| {rank} | {method} | {fmt(avg(rows, 'h_cumulative'))} | {fmt(avg(rows, 'h_mean'))} | "
                         f"{fmt(avg(rows, 'acc_r'))} | {fmt(avg(rows, 'acc_f'))} | {fmt(avg(rows, 'acc_o'))} |")
        lines.append("")
    write_text(f"{args.out}/datasets.md", "\n".join(lines))
    print("\n".join(lines))
    if args.deep:
        deep = deep_report(Path(args.out), list(table), args.seeds.split(","), methods or None)
        write_text(f"{args.out}/deep.md", "\n".join(deep))
        print("\n".join(deep))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _novel_cells(requests: list, tolerance: float) -> str:
    """The never-seen columns of a method: its average largest gap, and its requests within ``tolerance``."""
    gaps = [g for g in (novel_gap(t) for t in requests) if g is not None]
    return f" {fmt(_mean(gaps), 1)} | {sum(g <= tolerance for g in gaps)}/{len(gaps)} |"


def deep_report(out: Path, datasets: list[str], seeds: list[str], methods: list[str] | None) -> list[str]:
    """Per dataset, every method's deep checks averaged over its requests and seeds (points above the reference;
    requests without a reference left out of the gaps), its requests that pass the deep verdict, the blocks its
    edits leave at zero and its edits' size, the never-seen gap where it was measured; and OUT/front.png: average
    cumulative H against the probe gap."""
    from forgetkit.io import atomic_write
    from forgetkit.report import new_figure

    lines = ["# Deep checks: every request against the reference trained without the classes forgotten so far", "",
             "Gaps in points above the reference (probe, k-NN and prototype attack on the forgotten classes; the "
             "retain-only rebound), averaged over requests with a reference and seeds; relearn: the share of "
             "requests whose model needed at least the reference's steps; deep verdict: requests passing it (all "
             "requests; those without a reference are judged by the rebound alone). Runs with never-seen classes "
             "(eval.verify.novel) add the reference-free check: the largest of the three checks' gaps to the same "
             "check on never-seen classes, and the requests within its default tolerance.", ""]
    front: dict[str, dict[str, tuple]] = {}
    tolerance = VerifyConfig.novel_tolerance
    for dataset in datasets:
        names = methods or sorted({p.name for s in seeds for p in (out / dataset / f"seed{s}").iterdir()
                                   if (p / "results.json").is_file()})
        by_name = {}
        for name in names:
            paths = [out / dataset / f"seed{seed}" / name / "results.json" for seed in seeds]
            by_name[name] = [t for path in paths if path.is_file() for t in RunRecord.read(path).requests]
        # runs with eval.verify.novel: the reference-free check beside the reference's, to see where they disagree
        novel = any(novel_gap(t) is not None for requests in by_name.values() for t in requests)
        lines += [f"## {dataset}", "", "| method | avg cumulative H | probe gap | k-NN gap | prototype gap | "
                  "rebound gap | relearn ≥ reference | deep verdict passed | Acc_f ≤ 2 and Acc_o ≤ 2 | blocks zeroed "
                  "per request | edit bytes per request |"
                  + (f" gap to never-seen | never-seen gap ≤ {tolerance:g} |" if novel else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * novel]
        for name, requests in by_name.items():
            if not requests:
                continue
            rows = [r for r in (deep_row(t) for t in requests) if r is not None]
            relearn = [m is None or (r is not None and m >= r) for m, r in (row["relearn"] for row in rows)]
            passed = sum(not t.verdict.get("deep_failed", []) for t in requests)
            strict = sum(t.after["acc_f"] <= 2 and (t.after["acc_o"] or 0) <= 2 for t in requests)
            zeroed = _mean([t.stats.get("groups_zeroed") for t in requests])
            size = _mean([t.stats.get("edit_bytes") for t in requests])
            h = _mean([t.h_cumulative for t in requests])
            gaps = {k: _mean([row[k] for row in rows]) for k in ("probe", "knn", "proto", "rebound")}
            front.setdefault(dataset, {})[name] = (h, gaps["probe"])
            lines.append(f"| {name} | {fmt(h)} | {fmt(gaps['probe'], 1)} | {fmt(gaps['knn'], 1)} | "
                         f"{fmt(gaps['proto'], 1)} | {fmt(gaps['rebound'], 1)} | "
                         f"{sum(relearn)}/{len(relearn)} | {passed}/{len(requests)} | {strict}/{len(requests)} | "
                         f"{fmt(zeroed, 1)} | {fmt(size, 0)} |" + (_novel_cells(requests, tolerance) if novel else ""))
        lines.append("")
    fig, axes = new_figure(1, max(1, len(front)), figsize=(4.2 * max(1, len(front)), 3.8))
    for ax, (dataset, points) in zip(axes if len(front) > 1 else [axes], front.items()):
        for name, (h, gap) in points.items():
            if h is not None and gap is not None:
                ax.scatter(gap, h)
                ax.annotate(name, (gap, h), fontsize=7)
        ax.axvline(5.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("probe gap to the reference (points)")
        ax.set_ylabel("average cumulative H")
        ax.set_title(dataset)
    fig.tight_layout()
    atomic_write(out / "front.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return lines


if __name__ == "__main__":
    main()
