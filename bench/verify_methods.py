"""Verify every method's final model of finished benches (issue 14): membership inference, probes, relearning and
CKA on every class forgotten by the end, beside the pre-trained model and a reference trained without those classes.

For each ``dataset=reference`` pair, runs ``forgetkit verify`` on ``RUNS/<dataset>/seed<S>/<method>/model`` for every
method found (skipping those already verified), then writes ``OUT/verify.md``: one table per dataset and seed.

    PYTHONPATH=bench .venv/bin/python bench/verify_methods.py --runs runs/bench-datasets-v11 --seeds 0 \\
        --references fashion_mnist=checkpoints/ref_fmnist_demo,glyphs60=checkpoints/ref_glyphs60_demo \\
        --out runs/verify-v14
    PYTHONPATH=bench .venv/bin/python bench/verify_methods.py --runs runs/bench-datasets-v11 \
        --references glyphs60=checkpoints/ref_glyphs60_demo -o images_per_class=30 --out runs/verify-v14
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forgetkit.cli import main as forgetkit
from forgetkit.io import write_text
from forgetkit.report import verify_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="output folder of compare_datasets.py")
    parser.add_argument("--references", required=True, help="dataset=reference checkpoint, comma-separated")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/verify")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="verification setting for every model, e.g. images_per_class=30")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
