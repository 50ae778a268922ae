"""Throughput on whatever device is present: the data path from a JPEG folder, and the training step against its
floor (docs/scaling.md has this machine's figures).

(a) images per second of the data path alone, from a folder of JPEGs of ImageNet's typical size (500×375) to
    normalised 224 px batches: the loader forgetkit had before the runtime seam (PIL decode through a bytearray,
    float resize, main process; reproduced below as ``legacy_decode``) against today's (numpy decode, uint8 resize,
    ``train.workers`` processes);
(b) the floor: a bare forward + backward + AdamW step of a peft LoRA on the same model and batch;
(c) forgetkit's GS-LoRA step (``Method.step`` through the runtime seam), and the ratio (c)/(b);
for the small preset (vit_fmnist, 28 px) and vit_b16 at 224 px, in float32 and bf16-mixed (where the device has
it), with peak memory on CUDA.

    .venv/bin/python bench/throughput.py --out runs/throughput              # this machine
    .venv/bin/python bench/throughput.py --device cuda --batch 64 --out runs/throughput-gpu
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from forgetkit.data.datasets import FolderImages, Preprocess
from forgetkit.io import write_json, write_text
from forgetkit.runtime import set_loader_options


def make_jpeg_folder(root: Path, count: int, size=(500, 375), seed: int = 0) -> list[str]:
    """``count`` JPEGs (quality 90) of smooth colour fields with noise: compressed like photographs, not like flat
    colours or pure noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:size[1], 0:size[0]] / max(size)
    for i in range(count):
        a, b, c = rng.uniform(0, 6, 3)
        field = np.stack([np.sin(a * xx + b * yy + k) for k in (0, c, 2 * c)], -1)
        pixels = np.clip(127 + 100 * field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        path = root / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def legacy_decode(path: str) -> torch.Tensor:
    """The decode of forgetkit's FolderImages before the runtime seam (commit 9cdc5bd), for the comparison."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return data.view(im.size[1], im.size[0], -1).permute(2, 0, 1).contiguous()


class LegacyImages(torch.utils.data.Dataset):
    """Yesterday's loader: that decode, then the float resize (the image made float before resizing)."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.preprocess(legacy_decode(self.paths[index]).float() / 255.0), 0


def images_per_second(dataset, batch: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def data_path(args) -> list[dict]:
    rows = []
    preprocess = Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpeg_folder(Path(tmp) / "jpegs", args.images)
        today = FolderImages(paths, [0] * len(paths), ["any"]).with_preprocess(preprocess)
        assert today[0][0].shape == (3, 224, 224)
        legacy = images_per_second(LegacyImages(paths, preprocess), args.batch, 0)
        rows.append({"loader": "before (PIL bytearray decode, float resize, main process)", "workers": 0,
                     "images_per_s": legacy, "speed-up": 1.0})
        for workers in sorted({0, *args.workers}):
            rate = images_per_second(today, args.batch, workers)
            rows.append({"loader": "today (numpy decode, uint8 resize)", "workers": workers, "images_per_s": rate,
                         "speed-up": rate / legacy})
    return rows


def _step_row(arch: str, batch: int, precision: str, args, device) -> dict:
    """One row of (b) and (c): one model, batch and precision."""
    import copy

    from peft import LoraConfig, get_peft_model

    import forgetkit as fk
    from forgetkit.methods import MethodContext, build_method
    from forgetkit.requests import Request, RequestData
    from forgetkit.runtime import Runtime

    model = fk.create_model(arch, 10).to(device)
    spec = model.spec
    x = torch.randn(2 * batch, spec.in_chans, spec.image_size, spec.image_size, device=device)
    y = torch.arange(2 * batch, device=device) % 10
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    # (b) the floor: peft LoRA on the same layers, one forward of both streams, cross-entropy, AdamW
    bare = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=8,
                                                            target_modules=spec.lora_targets))
    optimizer = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4)

    def bare_step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(bare(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # (c) forgetkit's GS-LoRA step through the runtime seam, on the same images split into the two streams
    train = fk.load_config(None, [f"train.precision={precision}", f"train.device={args.device}"]).train
    runtime = Runtime.create(train)
    method = build_method({"name": "gs_lora"}, MethodContext(device=device, seed=0, num_classes=10,
                                                            runtime=runtime))
    request = Request(0, "forget", [0, 1], list(range(2, 10)), [])
    method.setup(copy.deepcopy(model), request, RequestData({"forget": None, "retain": None}))
    ours = runtime.setup_optimizer(method.make_optimizer(1e-4, 0.0))
    forget = (x[:batch], torch.zeros(batch, dtype=torch.long, device=device))
    retain = (x[batch:], 2 + y[batch:] % 8)

    def ours_step(step=0):
        method.step({"forget": forget, "retain": retain}, step, ours)

    row = {"model": arch, "precision": precision, "batch": f"{batch} + {batch}"}
    for name, fn in (("bare LoRA step", bare_step), ("GS-LoRA step", ours_step)):
        for _ in range(args.warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
            row[f"{name} peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
        row[f"{name} steps/s"] = args.steps / (time.perf_counter() - start)
    row["ratio (c)/(b)"] = row["GS-LoRA step steps/s"] / row["bare LoRA step steps/s"]
    return row


def step_rates(args) -> list[dict]:
    """(b) and (c): steps per second of the bare peft LoRA step and of forgetkit's GS-LoRA step, same batch."""
    device = torch.device(args.device)
    rows = []
    for arch, batch in (("vit_fmnist", 32), ("vit_b16", args.vit_b16_batch)):
        for precision in args.precisions:
            rows.append(_step_row(arch, batch, precision, args, device))
    return rows


def table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, "–"))
                                     for k in keys) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the data-path folder")
    parser.add_argument("--batch", type=int, default=32, help="images per batch of the data path")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts of today's loader")
    parser.add_argument("--vit-b16-batch", type=int, default=4, help="images per stream of the vit_b16 steps")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="default: 32 and bf16-mixed on a GPU, 32 on a CPU (bf16 autocast is slow there)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["data", "steps"])
    parser.add_argument("--out", default="runs/throughput")
    args = parser.parse_args()
    if args.precisions is None:
        args.precisions = ["32", "bf16-mixed"] if args.device.startswith("cuda") else ["32"]
    torch.manual_seed(0)
    set_loader_options(0, False)
    results = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    lines = [f"# Throughput on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads)", ""]
    if "data" not in args.skip:
        results["data_path"] = data_path(args)
        lines += ["## (a) Data path: 500×375 JPEGs to normalised 224 px batches", "", *table(results["data_path"]), ""]
    if "steps" not in args.skip:
        results["steps"] = step_rates(args)
        lines += ["## (b), (c) Training step: bare peft LoRA against forgetkit's GS-LoRA", "",
                  *table(results["steps"]), ""]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out) / "throughput.json", results)
    write_text(Path(args.out) / "throughput.md", "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"written": str(Path(args.out) / "throughput.md")}))


if __name__ == "__main__":
    main()
