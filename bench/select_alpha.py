"""Choose GS-LoRA's group-lasso weight α on the validation split over the whole continual protocol.

Runs the demo protocol (all tasks) for each α, evaluating on held-out training images, and prints per task
H, Acc_r, Acc_f, Acc_o and the number of blocks whose LoRA ends near zero. Writes runs/select-alpha/selection.md.

    .venv/bin/python bench/select_alpha.py [--alphas 0.05,0.1,0.2] [-o key=value ...]
"""

from __future__ import annotations

import argparse

import forgetkit as fk
from forgetkit.io import write_text
from forgetkit.report import fmt, task_label

VALIDATION = ["protocol.val_per_class=500", "protocol.eval_split=val", "save_model=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="0.05,0.1,0.2")
    parser.add_argument("--out", default="runs/select-alpha")
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args()
    lines = ["# GS-LoRA α on the validation split, whole continual protocol", "",
             "Overrides: " + (" ".join(args.override) or "none"), "",
             "| α | task | H | Acc_r (pre) | Acc_f | Acc_o | blocks near 0 |", "|---|---|---|---|---|---|---|"]
    for alpha in args.alphas.split(","):
        cfg = fk.load_config("demo", VALIDATION + args.override + [f"method.alpha={alpha}",
                                                                   f"output_dir={args.out}/alpha-{alpha}"])
        results = fk.run_forgetting(cfg, progress=False, overwrite=True)
        for t in results["tasks"]:
            a = t["after"]
            lines.append(f"| {alpha} | {task_label(t)} | {fmt(t['h_mean'])} | {fmt(a['acc_r'])} "
                         f"({fmt(t['pretrained']['acc_r'])}) | {fmt(a['acc_f'])} | {fmt(a['acc_o'])} | "
                         f"{t['groups_zeroed']}/{t['num_groups']} |")
        lines.append(f"| {alpha} | average | {fmt(results['summary']['h_mean_avg'])} | | | | |")
        print("\n".join(lines[-5:]), flush=True)
    write_text(f"{args.out}/selection.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
