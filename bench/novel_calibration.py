"""How far the reference-free check can be trusted: the forgotten classes' probes against never-seen classes
(``eval.verify.novel``) next to the same probes against the reference, on the references themselves, the pre-trained
models and the bench's edited models (docs/verify.md).

For every request of a dataset's continual protocol this reads, with the draws of the verification:
* the reference (trained without the forgotten classes): its probe, k-NN and prototype attack on the forgotten
  classes, which is what "never learnt" reads, and the same checks on never-seen classes in their place. Their
  difference is the check's bias: how much higher (lenient) or lower (strict) the stand-in level is;
* the pre-trained model, which knows the classes: the check must fail it;
* with ``--runs``, each method's final model of a ``compare_datasets.py --deep`` run (after the last request, read
  on that request's classes): whether the reference-free verdict agrees with the reference's.

    PYTHONPATH=bench .venv/bin/python bench/novel_calibration.py --datasets mnist_5k,glyphs60 --split val \\
        --runs runs/bench-deep --out runs/novel-calibration
    PYTHONPATH=bench .venv/bin/python bench/novel_calibration.py --datasets mnist_5k --novel mnist_5k \
        --novel-classes two,three,four,five,six,seven,nine --novel-flip horizontal --out runs/novel-calibration-mirror
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from benchdata import DATASETS
from references import reference_path, retained_after

from forgetkit.data import load_data
from forgetkit.data.config import DataConfig
from forgetkit.engine.config import VerifyConfig
from forgetkit.io import write_json, write_text
from forgetkit.models.formats import load_checkpoint
from forgetkit.runtime import setup_device
from forgetkit.verification import Verifier, held_per_class, membership_images, novel_images, verification_models

CHECKS = ("probe", "knn", "prototype")


def rows_for(dataset: str, split: str, seed: int, runs: list[Path], novel: DataConfig, flip: str,
             images_per_class: int) -> list[dict]:
    entry = yaml.safe_load(DATASETS.read_text())[dataset]
    overrides = dict(o.split("=", 1) for o in entry["overrides"])
    per_request, requests = int(overrides["protocol.classes_per_request"]), int(overrides["protocol.num_requests"])
    device = setup_device("cpu")
    model, manifest = load_checkpoint(overrides["model"])
    classes = list(manifest["classes"])
    splits = load_data(DataConfig(source=overrides["data.source"])).select(classes).with_preprocess(
        model.spec.preprocess)
    cfg = VerifyConfig(images_per_class=images_per_class, novel=novel, novel_flip=flip)
    members, nonmembers = membership_images(splits.train, splits.test, split, held_per_class(manifest) or 0,
                                            int(entry["val_per_class"]))
    verifier = Verifier(cfg, members, nonmembers, seed, device, model.eval(),
                        novel=novel_images(cfg, classes, model.spec.preprocess))
    rows = []
    for request in range(1, requests + 1):
        retained = sorted(classes.index(c) for c in retained_after(classes, per_request, request))
        before = {classes.index(c) for c in retained_after(classes, per_request, request - 1)}
        forgotten = sorted(before - set(retained))
        ref_path = reference_path(dataset, request)
        models = [("pretrained", model)]
        if (ref_path / "model.safetensors").exists():
            _, _, (reference,) = verification_models(manifest, classes, device, reference=str(ref_path))
            models.insert(0, ("reference", reference))
        if request == requests:
            for folder in sorted(f for run in runs for f in (run / dataset).glob("seed*/*/model")):
                edited, _ = load_checkpoint(folder)
                models.append((f"{folder.parent.name} ({folder.parent.parent.name})", edited.eval()))
        draws = verifier.draws(forgotten, retained)
        for name, net in models:
            checks = verifier.feature_checks(net, draws, forgotten)
            rows.append({"dataset": dataset, "split": split, "request": request, "model": name, **checks})
            print(f"[calibration] {dataset} request {request} {name}: " + ", ".join(
                f"{k} {checks[f'{k}_forgotten']:.1f} / never-seen {checks[f'{k}_novel']:.1f}" for k in CHECKS),
                flush=True)
    return rows


def summary(rows: list[dict], tolerance: float, deep_tolerance: float) -> list[str]:
    """Markdown: the bias on the references, whether the pre-trained model is caught, and the agreement of the
    reference-free verdict with the reference's on the edited models."""
    lines = ["| dataset | split | request | model | " + " | ".join(
        f"{k} F (ref) / never-seen" for k in CHECKS) + " | gap to reference | gap to never-seen |",
        "|---|---|---|---|---|---|---|---|---|"]
    refs = {(r["dataset"], r["request"]): r for r in rows if r["model"] == "reference"}
    agree, total, bias, lenient, strict, failing = 0, 0, {k: [] for k in CHECKS}, [], [], 0
    for r in rows:
        ref = refs.get((r["dataset"], r["request"]))
        cells = " | ".join(f"{r[f'{k}_forgotten']:.1f} ({ref[f'{k}_forgotten']:.1f}) / {r[f'{k}_novel']:.1f}"
                           if ref else f"{r[f'{k}_forgotten']:.1f} (–) / {r[f'{k}_novel']:.1f}" for k in CHECKS)
        # to the table's 0.1 point, so that a gap shown as the tolerance is judged as it reads
        true_gap = round(max(r[f"{k}_forgotten"] - ref[f"{k}_forgotten"] for k in CHECKS), 1) if ref else None
        proxy_gap = round(max(r[f"{k}_forgotten"] - r[f"{k}_novel"] for k in CHECKS), 1)
        lines.append(f"| {r['dataset']} | {r['split']} | {r['request']} | {r['model']} | {cells} | "
                     f"{'–' if true_gap is None else f'{true_gap:+.1f}'} | {proxy_gap:+.1f} |")
        if r["model"] == "reference":
            for k in CHECKS:
                bias[k].append(r[f"{k}_forgotten"] - r[f"{k}_novel"])
        elif ref is not None:
            total += 1
            failing += true_gap > deep_tolerance
            agree += (true_gap <= deep_tolerance) == (proxy_gap <= tolerance)
            where = f"{r['dataset']} request {r['request']} {r['model']} ({true_gap:+.1f} / {proxy_gap:+.1f})"
            if true_gap > deep_tolerance and proxy_gap <= tolerance:
                lenient.append(where)
            elif proxy_gap > tolerance and true_gap <= deep_tolerance:
                strict.append(where)
    ref_gaps = [round(max(r[f"{k}_forgotten"] - r[f"{k}_novel"] for k in CHECKS), 1) for r in refs.values()]
    pre_gaps = [round(max(r[f"{k}_forgotten"] - r[f"{k}_novel"] for k in CHECKS), 1) for r in rows
                if r["model"] == "pretrained"]
    lines += ["", f"The smallest tolerance at which every reference passes: {max(ref_gaps, default=0):+.1f}; the "
                  f"pre-trained models' gaps to never-seen: {min(pre_gaps, default=0):+.1f} to "
                  f"{max(pre_gaps, default=0):+.1f}."]
    lines += ["", "Bias of the never-seen level on the references (their forgotten-class check minus their "
                  "never-seen check; > 0: the stand-in is lower than what never learnt reads, so the check is strict):"]
    for k in CHECKS:
        if bias[k]:
            values = torch.tensor(bias[k])
            lines.append(f"- {k}: mean {values.mean():+.1f}, from {values.min():+.1f} to {values.max():+.1f} points "
                         f"({len(values)} requests)")
    if total:
        lines.append(f"- the reference-free verdict (largest gap ≤ {tolerance:g}) agrees with the reference's (≤ "
                     f"{deep_tolerance:g}) on "
                     f"{agree} of {total} models (pre-trained and edited)")
        lines.append(f"- of the {failing} models the reference fails, the never-seen check fails "
                     f"{failing - len(lenient)}; passed without a reference, failed with one (gaps to the reference / "
                     f"to never-seen): {'; '.join(lenient) or 'none'}")
        lines.append(f"- failed without a reference, passed with one: {'; '.join(strict) or 'none'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist_5k,glyphs60")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--novel", default="glyphs_novel", help="data source of the never-seen classes")
    parser.add_argument("--novel-classes", help="comma-separated classes of --novel (eval.verify.novel.classes)")
    parser.add_argument("--novel-flip", default="none", choices=["none", "horizontal", "vertical"],
                        help="flip them into new classes (eval.verify.novel_flip): e.g. the model's own digits")
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--tolerance", type=float, default=VerifyConfig.novel_tolerance,
                        help="the never-seen check's tolerance (eval.verify.novel_tolerance)")
    parser.add_argument("--deep-tolerance", type=float, default=VerifyConfig.deep_tolerance,
                        help="the reference's tolerance (eval.verify.deep_tolerance)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[],
                        help="compare_datasets.py --deep outputs: their methods' final models too")
    parser.add_argument("--out", type=Path, default=Path("runs/novel-calibration"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    novel = DataConfig(source=args.novel, classes=args.novel_classes.split(",") if args.novel_classes else None)
    rows = []
    for dataset in args.datasets.split(","):
        rows += rows_for(dataset, args.split, args.seed, args.runs, novel, args.novel_flip, args.images_per_class)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"calibration_{args.split}.json", rows)
    table = summary(rows, args.tolerance, args.deep_tolerance)
    write_text(args.out / f"calibration_{args.split}.md", "\n".join(table) + "\n")
    print("\n".join(table))
    print(json.dumps({"rows": len(rows)}))


if __name__ == "__main__":
    main()
