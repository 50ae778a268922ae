"""Choose each method's learning rate on a validation split, never on the test set.

For every method, runs the first task of the protocol on each dataset of ``--datasets`` (bench/datasets.yaml) with a
few learning rates, evaluating on the dataset's validation hold-out (training images no method trains on, and that
the dataset's checkpoint never saw), and picks the learning rate with the highest H averaged over the datasets: one
learning rate per method, as a user who runs it on a dataset nobody tuned on would get. Writes
``runs/select-lr/selection.md`` and ``selection.json``; the chosen values go into ``bench/comparison_*.yaml``.

    .venv/bin/python bench/select_lr.py [--methods l2,ewc,...] [--datasets fashion_mnist,mnist_5k,glyphs60]
"""

from __future__ import annotations

import argparse
import time

from benchdata import dataset_overrides

import forgetkit as fk
from forgetkit.bench import method_overrides
from forgetkit.io import write_json, write_text
from forgetkit.report import fmt

# The paper's learning rate (gs-lora.md §5, §3.6) and one decade around it.
GRID = {
    "gs_lora": [1e-2, 3e-3],
    "fg_oriu": [1e-2, 3e-3, 1e-3],   # the released code's 1e-2 and below it
    "retrain": [3e-4, 3e-3],
    "l2": [1e-4, 1e-3], "ewc": [1e-4, 1e-3], "mas": [1e-4, 1e-3], "lwf": [1e-4, 1e-3],
    "der": [1e-3, 1e-4], "der_pp": [1e-3, 1e-4], "fdr": [1e-3, 1e-4],
    "scrub": [1e-4, 1e-3], "scrub_s": [1e-4, 1e-3], "lirf": [1e-4, 1e-3],
}
FIRST_REQUEST = ["protocol.num_requests=1", "save_model=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(GRID))
    parser.add_argument("--base", default="demo")
    parser.add_argument("--datasets", default="fashion_mnist,mnist_5k,glyphs60")
    parser.add_argument("--out", default="runs/select-lr")
    parser.add_argument("-o", "--override", action="append", default=[], help="fixed key=value for every run")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    rows, chosen = [], {}
    base_method = fk.load_config(args.base).method
    for name in args.methods.split(","):
        mean_h = {}
        for lr in GRID[name]:
            hs = []
            for dataset in datasets:
                overrides = dataset_overrides(dataset, "val") + FIRST_REQUEST + args.override + method_overrides(
                    base_method, name, {}) + [f"train.lr={lr}", f"output_dir={args.out}/{dataset}/{name}-{lr:g}"]
                start = time.time()
                request = fk.run_requests(fk.load_config(args.base, overrides), progress=False,
                                          overwrite=True).requests[0]
                row = {"method": name, "lr": lr, "dataset": dataset, "h_mean": request.h_mean,
                       "acc_r": request.after["acc_r"], "acc_f": request.after["acc_f"],
                       "seconds": round(time.time() - start, 1)}
                rows.append(row)
                hs.append(row["h_mean"])
                print(row, flush=True)
            mean_h[lr] = sum(hs) / len(hs)
        chosen[name] = max(mean_h, key=mean_h.get)
    lines = ["# Learning rates chosen on the validation split (first task, the held-out images of each dataset)",
             "", "| method | lr | dataset | H (val) | Acc_r (val) | Acc_f (val) | seconds | chosen (best mean H) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['dataset']} | {fmt(r['h_mean'])} | {fmt(r['acc_r'])} | "
                     f"{fmt(r['acc_f'])} | {r['seconds']} | {'yes' if chosen[r['method']] == r['lr'] else ''} |")
    write_text(f"{args.out}/selection.md", "\n".join(lines) + "\n")
    write_json(f"{args.out}/selection.json", {"rows": rows, "chosen": chosen})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
