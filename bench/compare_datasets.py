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

from benchdata import dataset_overrides

from forgetkit.bench import load_bench_spec, report_only, run_bench
from forgetkit.io import write_text
from forgetkit.report import fmt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="bench spec YAML (methods and protocol)")
    parser.add_argument("--datasets", default="fashion_mnist,mnist_5k,glyphs60")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", help="comma-separated subset of the spec's methods")
    parser.add_argument("--out", default="runs/bench-datasets")
    parser.add_argument("-o", "--override", action="append", default=[], help="key=value for every run")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else None
    table: dict[str, dict[str, list[dict]]] = {}
    for dataset in args.datasets.split(","):
        for seed in args.seeds.split(","):
            spec = load_bench_spec(args.spec, methods, f"{args.out}/{dataset}/seed{seed}",
                                   dataset_overrides(dataset, "test") + [f"seed={seed}"] + args.override)
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


if __name__ == "__main__":
    main()
