"""Forget a request, then give it back: LIRF (ECCV form and LIRF*) with withdrawal, GS-LoRA with undo, and Retrain,
whose way back is retraining on everything (issue 12).

For each dataset of ``--datasets`` (bench/datasets.yaml), the first request of the dataset's protocol (its seeded
class order and request size) is forgotten by each way and then restored, both as `forgetkit forget` and
`forgetkit restore` run them on a checkpoint. Reported after forgetting and after giving back, in LIRF's terms:
Dep Acc (the deposited classes), Pre Acc (the others), F (Dep Acc's drop from T0), H (of F and Pre Acc, after
forgetting), Avg Acc (every test image), seconds, and the bytes kept for the way back. Writes ``OUT/recoverable.md``
and ``.json``.

    PYTHONPATH=bench .venv/bin/python bench/recoverable.py --datasets fashion_mnist,glyphs60 --out runs/recoverable
    PYTHONPATH=bench .venv/bin/python bench/recoverable.py --split val --ways lirf_eccv \\
        -o method.alpha=0.5 --out runs/recoverable-val        # choosing LIRF's α on the validation split
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchdata import dataset_overrides

import forgetkit as fk
from forgetkit.io import write_json, write_text
from forgetkit.metrics import h_mean
from forgetkit.report import fmt

WAYS = {  # way -> (forgetting method, the restore method: None = retraining on everything, i.e. T0)
    "lirf_eccv": ("lirf_eccv", "withdraw"),
    "lirf": ("lirf", "withdraw"),
    "gs_lora": ("gs_lora", "undo"),
    "retrain": ("retrain", None),
}
LRS = {"lirf": 0.001, "retrain": 0.0003}  # the bench specs' validation-chosen learning rates (comparison_full.yaml)


def folder_bytes(directory: Path, names: tuple[str, ...] | None = None) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file() and (names is None or f.name in names))


def run(overrides: list[str]) -> dict:
    return fk.run_requests(fk.load_config("demo", overrides), progress=False, overwrite=True)


def lirf_row(request: dict, reference: dict) -> dict:
    """Dep/Pre/Avg Acc of one request's results (forget or restore), F against T0 (``reference``)."""
    after = request.after
    dep = after["acc_f"] if "acc_f" in after else after["acc_restored"]
    return {"dep": dep, "pre": after["acc_r"], "avg": after["acc_all"], "f": reference["dep"] - dep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion_mnist,glyphs60")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/recoverable")
    parser.add_argument("-o", "--override", action="append", default=[], help="key=value for every forget run")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets.split(","):
        data = dataset_overrides(dataset, args.split) + [f"seed={args.seed}", "train.threads=1"]
        for way in args.ways.split(","):
            forget_method, back = WAYS[way]
            root = Path(args.out) / dataset / way
            lr = [f"train.lr={LRS[way]}"] if way in LRS else []
            print(f"[recoverable] {dataset} {way}: forget ...", flush=True)
            forgot = run(data + ["protocol.num_requests=1", f"method={{name: {forget_method}}}", *lr,
                                 f"output_dir={root / 'forget'}", f"model_dir={root / 'forget'}", "kind=forget",
                                 *args.override])
            request = forgot.requests[0]
            t0 = {"dep": request.pretrained["acc_f"], "pre": request.pretrained["acc_r"],
                  "avg": request.pretrained["acc_all"], "f": 0.0}
            edit_dir = root / "forget" / request.edit["path"] if request.edit else None
            kept = (folder_bytes(edit_dir, ("deposit.safetensors", "deposit.json")) if back == "withdraw"
                    else folder_bytes(edit_dir) if edit_dir else None)
            after_forget = lirf_row(request, t0)
            after_forget["h"] = h_mean(t0["dep"], after_forget["dep"], after_forget["pre"])
            if back is None:  # the way back of Retrain is the model trained on everything: T0 itself
                after_back, back_seconds = dict(t0), None
            else:
                print(f"[recoverable] {dataset} {way}: {back} ...", flush=True)
                restored = run(data + [f"model={root / 'forget'}", "kind=restore", f"method={{name: {back}}}",
                                       f"protocol.requests={json.dumps([request.classes])}",
                                       f"output_dir={root / 'back'}", f"model_dir={root / 'back'}"])
                after_back, back_seconds = lirf_row(restored.requests[0], t0), restored.requests[0].seconds
            rows.append({"dataset": dataset, "way": way, "classes": request.classes, "t0": t0,
                         "forget": after_forget, "forget_verdict": request.passed,
                         "back": after_back, "forget_seconds": request.seconds, "back_seconds": back_seconds,
                         "kept_bytes": kept})
    lines = [f"# Forget, then give back ({args.split} split, seed {args.seed})", "",
             "Dep Acc: the deposited (forgotten, then restored) classes; Pre Acc: the others; F: Dep Acc's drop from "
             "T0; Avg Acc: every image. Kept: the bytes stored for the way back (LIRF: the deposit; GS-LoRA: the "
             "request's adapter; Retrain: the weights after it, and the way back is a full pre-training).", "",
             "| dataset | way | T0 Dep / Pre / Avg | after forgetting: Dep / Pre / F / H / Avg | verdict | "
             "given back: Dep / Pre / Avg | kept | seconds (forget; back) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t0, f, b = r["t0"], r["forget"], r["back"]
        kept = f"{r['kept_bytes'] / 1e6:.2f} MB" if r["kept_bytes"] else "n/a"
        back_s = fmt(r["back_seconds"]) if r["back_seconds"] is not None else "a full pre-training"
        lines.append(f"| {r['dataset']} | {r['way']} | {fmt(t0['dep'])} / {fmt(t0['pre'])} / {fmt(t0['avg'])} | "
                     f"{fmt(f['dep'])} / {fmt(f['pre'])} / {fmt(f['f'])} / {fmt(f['h'])} / {fmt(f['avg'])} | "
                     f"{'PASS' if r['forget_verdict'] else 'FAIL'} | {fmt(b['dep'])} / {fmt(b['pre'])} / "
                     f"{fmt(b['avg'])} | {kept} | {fmt(r['forget_seconds'])}; {back_s} |")
    write_json(Path(args.out) / "recoverable.json", rows)
    write_text(Path(args.out) / "recoverable.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
