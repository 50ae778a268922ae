"""Choose each method's learning rate on a validation split, never on the test set.

For every method, runs the first task of the protocol (10-2 on Fashion-MNIST) with a few learning rates,
evaluating on ``val_per_class`` training images per class that no method trains on, and picks the learning rate
with the highest H. Writes ``runs/select-lr/selection.md`` and ``selection.json``; the chosen values go into
``bench/comparison_fmnist.yaml``.

    .venv/bin/python bench/select_lr.py [--methods gs_lora,l2,...] [--out runs/select-lr]
"""

from __future__ import annotations

import argparse
import time

import forgetkit as fk
from forgetkit.bench import method_overrides
from forgetkit.io import write_json, write_text
from forgetkit.report import fmt

# The paper's learning rate (gs-lora.md §5, §3.6) and one decade around it.
GRID = {
    "gs_lora": [1e-2, 3e-3],
    "retrain": [3e-4, 3e-3],
    "l2": [1e-4, 1e-3], "ewc": [1e-4, 1e-3], "mas": [1e-4, 1e-3], "lwf": [1e-4, 1e-3],
    "der": [1e-3, 1e-4], "der_pp": [1e-3, 1e-4], "fdr": [1e-3, 1e-4],
    "scrub": [1e-4, 1e-3], "scrub_s": [1e-4, 1e-3], "lirf": [1e-4, 1e-3],
}
VALIDATION = ["protocol.val_per_class=500", "protocol.eval_split=val", "protocol.num_tasks=1", "save_model=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(GRID))
    parser.add_argument("--base", default="demo")
    parser.add_argument("--out", default="runs/select-lr")
    args = parser.parse_args()
    rows, chosen = [], {}
    base_method = fk.load_config(args.base).method
    for name in args.methods.split(","):
        best = None
        for lr in GRID[name]:
            overrides = VALIDATION + method_overrides(base_method, name, {}) + [
                f"train.lr={lr}", f"output_dir={args.out}/{name}-{lr:g}"]
            start = time.time()
            task = fk.run_forgetting(fk.load_config(args.base, overrides), progress=False, overwrite=True)["tasks"][0]
            row = {"method": name, "lr": lr, "h_mean": task["h_mean"], "acc_r": task["after"]["acc_r"],
                   "acc_f": task["after"]["acc_f"], "seconds": round(time.time() - start, 1)}
            rows.append(row)
            print(row, flush=True)
            if best is None or row["h_mean"] > best["h_mean"]:
                best = row
        chosen[name] = best["lr"]
    lines = ["# Learning rates chosen on the validation split (first task, 500 held-out training images per class)",
             "", "| method | lr | H (val) | Acc_r (val) | Acc_f (val) | seconds | chosen |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']:g} | {fmt(r['h_mean'])} | {fmt(r['acc_r'])} | {fmt(r['acc_f'])} | "
                     f"{r['seconds']} | {'yes' if chosen[r['method']] == r['lr'] else ''} |")
    write_text(f"{args.out}/selection.md", "\n".join(lines) + "\n")
    write_json(f"{args.out}/selection.json", {"rows": rows, "chosen": chosen})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
