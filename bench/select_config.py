"""Choose hyper-parameters on the validation split over a whole continual protocol, never on the test set.

Runs a forgetting config for every combination of the ``--grid`` values, evaluating on ``val_per_class`` held-out
training images per class that no method trains on, and prints per task H, Acc_r, Acc_f, Acc_o, Acc_m (missing
classes, when there are any), the number of blocks whose LoRA ends near zero and the issue-2 quality checks that
fail (``gs_lora_quality.py``), plus the average H. Writes ``selection.md`` in ``--out``.

    .venv/bin/python bench/select_config.py --grid method.alpha=0.05,0.1,0.2            # the demo's α
    .venv/bin/python bench/select_config.py --config fmnist_fewshot --grid method.beta=[0.2],[1.0] \\
        --grid train.epochs=25,50 [-o key=value ...]
"""

from __future__ import annotations

import argparse
import itertools

import forgetkit as fk
from forgetkit.io import write_text
from forgetkit.methods.base import resolved_method_config
from forgetkit.report import fmt, task_label
from gs_lora_quality import check

VALIDATION = ["protocol.val_per_class=500", "protocol.eval_split=val", "save_model=false"]


def parse_grid(items: list[str]) -> list[list[str]]:
    """``key=v1,v2`` items -> every combination, as override lists (lists in values: ``[0.2,0.4]`` stays whole)."""
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        parts, depth, current = [], 0, ""
        for ch in values:
            depth += ch == "[" or ch == "{"
            depth -= ch == "]" or ch == "}"
            if ch == "," and depth == 0:
                parts.append(current)
                current = ""
            else:
                current += ch
        parts.append(current)
        axes.append([f"{key}={v}" for v in parts])
    return [list(combo) for combo in itertools.product(*axes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="packaged config name or YAML path")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeat for a product)")
    parser.add_argument("--out", default="runs/select")
    parser.add_argument("-o", "--override", action="append", default=[], help="fixed key=value for every run")
    args = parser.parse_args()
    lines = [f"# {args.config}: validation split, whole continual protocol", "",
             "Fixed overrides: " + (" ".join(args.override) or "none"), "",
             "| setting | task | H | Acc_r (pre) | Acc_f | Acc_o | Acc_m | blocks near 0 | failed checks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, combo in enumerate(parse_grid(args.grid) if args.grid else [[]]):
        name = " ".join(combo) or "as configured"
        cfg = fk.load_config(args.config, VALIDATION + args.override + combo + [f"output_dir={args.out}/run-{i}"])
        results = fk.run_forgetting(cfg, progress=False, overwrite=True)
        checks = check(results, resolved_method_config(cfg.method).get("alpha", 0.0))
        for t, row in zip(results["tasks"], checks):
            a = t["after"]
            zeroed = f"{t['groups_zeroed']}/{t['num_groups']}" if "groups_zeroed" in t else "–"
            failed = ", ".join(k for k, ok in row["checks"].items() if not ok) or "–"
            lines.append(f"| {name} | {task_label(t)} | {fmt(t['h_mean'])} | {fmt(a['acc_r'])} "
                         f"({fmt(t['pretrained']['acc_r'])}) | {fmt(a['acc_f'])} | {fmt(a['acc_o'])} | "
                         f"{fmt(a.get('acc_m'))} | {zeroed} | {failed} |")
        lines.append(f"| {name} | average | {fmt(results['summary']['h_mean_avg'])} | | | | | | |")
        print("\n".join(lines[-len(results['tasks']) - 1:]), flush=True)
        write_text(f"{args.out}/selection.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
