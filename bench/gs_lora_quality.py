"""Quality bar of GS-LoRA on the embedded continual protocol (issue 2), measured, not assumed.

Runs a forgetting config (default: the demo, Fashion-MNIST 10-2 … 4-2) and checks after every task:

* Acc_f ≤ 2 %, and Acc_o ≤ 2 % from the second task on (the issue-10 bar on every dataset, with Acc_r below);
* Acc_r ≥ pre-trained Acc_r − 3 points;
* H ≥ 0.95 · H_max, with H_max = 2·Acc_f_pre·Acc_r_pre / (Acc_f_pre + Acc_r_pre);
* trainable parameters ≤ 5 % of the model;
* at least one LoRA group (block) near zero when α > 0.

Writes ``quality.md`` and ``quality.json`` next to the run's own outputs and exits 1 if any check fails.

    PYTHONPATH=bench .venv/bin/python bench/gs_lora_quality.py [--config demo] [--dataset glyphs60] [-o seed=1]
    .venv/bin/python bench/gs_lora_quality.py --from-results runs/bench/gs_lora   # check a finished run
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from benchdata import dataset_overrides

import forgetkit as fk
from forgetkit.io import write_json, write_text
from forgetkit.methods.configs import resolved_method_config
from forgetkit.report import fmt, request_label

# the bar every dataset must meet with the default config (issue 10); the others are issue 2's, on the demo
ISSUE_10_CHECKS = ("acc_f <= 2", "acc_o <= 2", "acc_r >= pre - 3")


def check(results: dict, alpha: float) -> list[dict]:
    rows = []
    for t in results.requests:
        pre, after = t.pretrained, t.after
        h_max = 2 * pre["acc_f"] * pre["acc_r"] / (pre["acc_f"] + pre["acc_r"])
        ratio = 100 * t.trainable_params / t.total_params
        checks = {
            "acc_f <= 2": after["acc_f"] <= 2,
            "acc_o <= 2": after["acc_o"] is None or after["acc_o"] <= 2,
            "acc_r >= pre - 3": after["acc_r"] >= pre["acc_r"] - 3,
            "H >= 0.95 H_max": t.h_mean >= 0.95 * h_max,
            "trainable <= 5 %": ratio <= 5,
            "a group near zero": alpha == 0 or t.stats.get("groups_zeroed", 0) >= 1,
        }
        rows.append({"task": request_label(t), "h": t.h_mean, "h_max": h_max, "acc_r": after["acc_r"],
                     "acc_r_pre": pre["acc_r"], "acc_f": after["acc_f"], "acc_o": after["acc_o"],
                     "trainable_pct": ratio, "groups_zeroed": t.stats.get("groups_zeroed"),
                     "num_groups": t.stats.get("num_groups"),
                     "seconds": t.seconds, "checks": checks})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--out", default="runs/bench-quality")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--from-results", help="check an existing run folder (results.json + config.yaml) instead "
                                               "of running")
    parser.add_argument("--dataset", help="a dataset of bench/datasets.yaml (default: the config's own data)")
    args = parser.parse_args()
    if args.from_results:
        results = fk.RunRecord.read(args.from_results)
        cfg = fk.load_config(str(Path(args.from_results) / "config.yaml"))
        wall = results.summary["seconds_total"]
        args.out = args.from_results
    else:
        cfg = fk.load_config(args.config, dataset_overrides(args.dataset, "test") + args.override
                             + [f"output_dir={args.out}"])
        start = time.time()
        results = fk.run_requests(cfg, progress=True, overwrite=True)
        wall = time.time() - start
    alpha = resolved_method_config(cfg.method).get("alpha", 0.0)
    rows = check(results, alpha)
    names = list(rows[0]["checks"])
    lines = [f"# GS-LoRA quality bar: {results.dataset}, {results.setting}", "",
             "Command: `PYTHONPATH=bench .venv/bin/python bench/gs_lora_quality.py "
             + (f"--from-results {args.from_results}" if args.from_results else f"--config {args.config}")
             + (f" --dataset {args.dataset}" if args.dataset else "")
             + "".join(f" -o {o}" for o in args.override) + "`",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"wall time {wall:.0f} s (training and evaluation).", "",
             "| task | H (H_max) | Acc_r (pre) | Acc_f | Acc_o | trainable | groups ~0 | seconds | "
             + " | ".join(names) + " |", "|" + "---|" * (8 + len(names))]
    for r in rows:
        lines.append(
            f"| {r['request']} | {fmt(r['h'])} ({fmt(r['h_max'])}) | {fmt(r['acc_r'])} ({fmt(r['acc_r_pre'])}) | "
            f"{fmt(r['acc_f'])} | {fmt(r['acc_o'])} | {r['trainable_pct']:.2f} % | "
            f"{r['groups_zeroed']}/{r['num_groups']}"
            f" | {r['seconds']:.1f} | " + " | ".join("pass" if r["checks"][n] else "FAIL" for n in names) + " |")
    norms = ["", "Group norms per block (√Σ‖P‖², end of task):", ""]
    for t in results.requests:
        norms.append(f"- {request_label(t)}: " + ", ".join(f"{k}: {v:.3g}" for k, v in t.stats["group_norms"].items()))
    ok = all(all(r["checks"].values()) for r in rows)
    failed = sorted({n for r in rows for n, passed in r["checks"].items() if not passed})
    bar = not any(n in ISSUE_10_CHECKS for n in failed)
    verdict = (f"Verdict: {'all checks pass' if ok else 'FAIL: ' + ', '.join(failed)}; the issue-10 bar "
               f"(Acc_f, Acc_o, Acc_r on every request) {'passes' if bar else 'FAILS'}")
    text = "\n".join(lines + norms + ["", verdict, ""])
    write_text(f"{args.out}/quality.md", text)
    write_json(f"{args.out}/quality.json", {"rows": rows, "wall_seconds": wall, "pass": ok, "issue_10_bar": bar})
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
