"""Verify every method's final model of finished benches: membership inference, probes, relearning and
CKA on every class forgotten by the end, beside the pre-trained model and a reference trained without those classes.

For each ``dataset=reference`` pair, runs ``forgetkit verify`` on ``RUNS/<dataset>/seed<S>/<method>/model`` for every
method found (skipping those already verified), then writes ``OUT/verify.md``: one table per dataset and seed.

    PYTHONPATH=bench .venv/bin/python bench/verify_methods.py --runs runs/bench-datasets-v11 --seeds 0 \\
        --references fashion_mnist=checkpoints/ref_fmnist_demo,glyphs60=checkpoints/ref_glyphs60_demo \\
        --out runs/verify-v14
    PYTHONPATH=bench .venv/bin/python bench/verify_methods.py --runs runs/bench-datasets-v11 \
        --references glyphs60=checkpoints/ref_glyphs60_demo -o images_per_class=30 --out runs/verify-v14
    PYTHONPATH=bench .venv/bin/python bench/verify_methods.py --across-seeds runs/verify-v14,runs/verify-v15 \
        --datasets fashion_mnist,glyphs60          # one table per dataset: every seed verified, side by side
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forgetkit.cli import main as forgetkit
from forgetkit.io import write_text
from forgetkit.report import fmt, verify_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="output folder of compare_datasets.py")
    parser.add_argument("--references", help="dataset=reference checkpoint, comma-separated")
    parser.add_argument("--across-seeds", metavar="OUT1,OUT2", help="only report: the verifications found in these "
                        "output folders, every seed side by side (with --datasets)")
    parser.add_argument("--datasets", default="fashion_mnist,mnist_5k,glyphs60")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/verify")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="verification setting for every model, e.g. images_per_class=30")
    args = parser.parse_args()
    if args.across_seeds:
        print("\n".join(across_seeds(args.across_seeds.split(","), args.datasets.split(","))))
        return
    if not (args.runs and args.references):
        parser.error("--runs and --references are needed to verify (or --across-seeds to report)")
    lines = [f"# Verification of every method's final model ({args.runs})", "",
             "Rows: each method after its last request, then the pre-trained model and the reference (trained "
             "without the forgotten classes). docs/verify.md says how to read the columns.", ""]
    for pair in args.references.split(","):
        dataset, reference = pair.split("=")
        for seed in args.seeds.split(","):
            runs = Path(args.runs) / dataset / f"seed{seed}"
            found = {}
            for folder in sorted(p for p in runs.iterdir() if (p / "model" / "manifest.json").is_file()):
                out = Path(args.out) / dataset / f"seed{seed}" / folder.name
                if not (out / "verify.json").is_file() and not args.report_only:
                    forgetkit(["verify", "--model", str(folder / "model"), "--reference", reference, "--seed", seed,
                               "--threads", "1", "--out", str(out)] + [f"-o{o}" for o in args.override])
                if (out / "verify.json").is_file():
                    found[folder.name] = json.loads((out / "verify.json").read_text())
            if not found:
                continue
            first = next(iter(found.values()))
            lines += [f"## {dataset}, seed {seed} ({len(first['classes'])} classes forgotten)", "",
                      *verify_comparison(found), ""]
    write_text(Path(args.out) / "verify.md", "\n".join(lines))
    print("\n".join(lines))


def across_seeds(outs: list[str], datasets: list[str]) -> list[str]:
    """Per dataset, a row per method: its numbers on each seed found, comma-separated in seed order, and the
    reference's."""
    lines = []
    columns = [("Acc_f", "acc_forgotten", 1), ("probe F", "probe_forgotten", 1), ("k-NN F", "knn_forgotten", 1),
               ("prototype F", "prototype_forgotten", 1), ("CKA to reference", "cka_to_reference", 2)]
    for dataset in datasets:
        found: dict[str, dict[int, dict]] = {}
        for out in outs:
            for path in sorted(Path(out, dataset).glob("seed*/*/verify.json")):
                found.setdefault(path.parent.name, {})[int(path.parent.parent.name[4:])] = json.loads(path.read_text())
        if not found:
            continue
        seeds = sorted({s for by_seed in found.values() for s in by_seed})
        reference = {s: v["reference"] for by_seed in found.values() for s, v in by_seed.items() if "reference" in v}
        shots = list(next(iter(next(iter(found.values())).values()))["model"]["relearn_steps"])
        lines += [f"## {dataset}, seeds {', '.join(map(str, seeds))}: one value per seed", "",
                  "| model | seeds | " + " | ".join(c[0] for c in columns) + " | "
                  + " | ".join(f"relearn k={k}" for k in shots) + " |",
                  "|---|---|" + "---|" * (len(columns) + len(shots))]

        def cells(rows: dict[int, dict], shots=shots) -> str:
            out = [", ".join(fmt(rows[s].get(key), digits) for s in sorted(rows)) for _, key, digits in columns]
            for k in shots:
                steps = [rows[s]["relearn_steps"][k] for s in sorted(rows)]
                out.append(", ".join("> cap" if v is None else str(v) for v in steps))
            return " | ".join(out)

        for name, by_seed in found.items():
            lines.append(f"| {name} | {', '.join(map(str, sorted(by_seed)))} | "
                         f"{cells({s: v['model'] for s, v in by_seed.items()})} |")
        if reference:
            lines.append(f"| *reference* | {', '.join(map(str, sorted(reference)))} | {cells(reference)} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
