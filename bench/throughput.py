"""Throughput on whatever device is present: the data path from a JPEG folder, the training step against its floor,
and a whole request (docs/scaling.md has this machine's figures).

(a) images per second of the data path alone, from a folder of JPEGs (224 px by default, the issue's case; ImageNet's
    typical 500×375 with ``--jpeg-size 500 375``) to normalised 224 px batches on the device: the loader forgetkit
    had before the runtime seam (PIL decode through a bytearray, float resize, float batches, main process;
    reproduced below as ``legacy_decode``) against today's (simplejpeg or PIL decode, uint8 resize, uint8 batches
    normalised on the device, ``train.workers`` processes);
(b) the floor: a bare forward + backward + AdamW step of a peft LoRA on the same model and batch;
(c) forgetkit's GS-LoRA step (``Method.step`` through the runtime seam), and the ratio (c)/(b);
(d) a whole request (``fk.unlearn``: set-up, sampling from a JPEG folder, the steps, evaluation before and after, the
    verdict) as steps per second, and the ratio (d)/(b);
for the small preset (vit_fmnist, 28 px) and vit_b16 at 224 px, in float32 and bf16-mixed (on a GPU), with peak
memory on CUDA.

    .venv/bin/python bench/throughput.py --out runs/throughput              # this machine
    .venv/bin/python bench/throughput.py --device cuda --batch 64 --models vit_b16:48 face_vit_p8s8:48 \
        --out runs/throughput-gpu                                            # a GPU (bench/gpu_check.sh runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from forgetkit.data.datasets import FolderImages, Preprocess, set_pixel_cache
from forgetkit.io import write_json, write_text
from forgetkit.runtime import keep_freed_memory, set_loader_options


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


def images_per_second(batches) -> float:
    start, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def data_path(args) -> list[dict]:
    """(a): the same folder through yesterday's loader and today's (uint8 items, batches normalised on the device),
    with simplejpeg and with PIL, in this process and in ``--workers`` processes."""
    from forgetkit.data import datasets
    from forgetkit.runtime import inference_loader

    rows = []
    preprocess = Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpeg_folder(Path(tmp) / "jpegs", args.images, size=tuple(args.jpeg_size))
        today = FolderImages(paths, [0] * len(paths), ["any"]).with_preprocess(preprocess)
        assert today[0][0].shape == (3, 224, 224)
        # each row is its best of --repeats passes over the folder (the first pass also reads the files from disk)
        legacy_loader = torch.utils.data.DataLoader(LegacyImages(paths, preprocess), batch_size=args.batch)
        legacy = max(images_per_second((x.to(device), y) for x, y in legacy_loader) for _ in range(args.repeats))
        if args.cpu_memory == "keep":  # what Runtime.create does on a CPU (train.cpu_memory), after the old loader
            keep_freed_memory()
        decoders = [("simplejpeg", datasets._SIMPLEJPEG), ("PIL", None)] if datasets._SIMPLEJPEG else [("PIL", None)]
        rows.append({"loader": "before: PIL bytearray decode, float resize, float batches", "workers": 0,
                     "images_per_s": legacy, "speed-up": 1.0})
        for name, module in decoders:
            datasets._SIMPLEJPEG = module
            for workers in sorted({0, *args.workers}):
                set_loader_options(workers, device.type == "cuda")
                rate = max(images_per_second(inference_loader(today, args.batch, device))
                           for _ in range(args.repeats))
                rows.append({"loader": f"today: {name} decode, uint8 batches normalised on {device.type}",
                             "workers": workers, "images_per_s": rate, "speed-up": rate / legacy})
        datasets._SIMPLEJPEG = decoders[0][1]
        set_loader_options(0, False)
        # train.cache_gb: the first pass decodes and keeps the pixels, the later ones read them (a request draws each
        # of its images many times, and evaluates the same test images after every request)
        set_pixel_cache(args.cache_gb)
        cached = FolderImages(paths, [0] * len(paths), ["any"]).with_preprocess(preprocess)
        first = images_per_second(inference_loader(cached, args.batch, device))
        later = max(images_per_second(inference_loader(cached, args.batch, device)) for _ in range(args.repeats))
        kept = len(cached._pixels)
        for label, rate in (("first pass", first), ("later passes", later)):
            rows.append({"loader": f"today + train.cache_gb={args.cache_gb:g} ({kept} images kept), {label}",
                         "workers": 0, "images_per_s": rate, "speed-up": rate / legacy})
        if device.type == "cpu":  # what the host does for a GPU, which normalises the uint8 batch itself
            host = inference_loader(cached, args.batch, device)
            host.preprocess = None  # the batches stay uint8
            rate = max(images_per_second(host) for _ in range(args.repeats))
            rows.append({"loader": "today + cache, later passes, uint8 batches (a GPU's host side: the GPU "
                                   "normalises, not timed here)", "workers": 0, "images_per_s": rate,
                         "speed-up": rate / legacy})
        del cached
        set_pixel_cache(0)
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
    if "request" not in args.skip:
        request_rate(row, model, batch, precision, args, device)
        row["ratio (d)/(b)"] = row["request steps/s"] / row["bare LoRA step steps/s"]
    return row


def request_rate(row: dict, model, batch: int, precision: str, args, device) -> None:
    """(d): one whole forgetting request (``fk.unlearn``: the method's set-up, the class-balanced sampling of both
    streams through the data path, ``--request-steps`` steps of ``batch`` + ``batch`` images, and the evaluation of
    ``--request-eval`` images before and after, with the verdict) as steps per second of its wall time. The images
    are a JPEG folder at the model's size (decoded every time they are drawn), ten classes, class 0 forgotten."""
    import copy

    import forgetkit as fk

    spec = model.spec
    classes = [f"c{k}" for k in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        per_class = batch  # each stream's batch is full: batch images of the forgotten class, 9 × batch retained
        paths = make_jpeg_folder(Path(tmp) / "request", 10 * per_class + args.request_eval,
                                 size=(spec.image_size, spec.image_size), seed=1)
        labels = [k % 10 for k in range(len(paths))]
        train_paths, eval_paths = paths[: 10 * per_class], paths[10 * per_class:]
        forget = FolderImages([p for p, y in zip(train_paths, labels) if y == 0], [0] * per_class, classes)
        retain_pairs = [(p, y) for p, y in zip(train_paths, labels) if y != 0]
        retain = FolderImages([p for p, _ in retain_pairs], [y for _, y in retain_pairs], classes)
        held = FolderImages(eval_paths, labels[: len(eval_paths)], classes)
        for images in (forget, retain, held):
            images.with_preprocess(spec.preprocess)
        train = {"steps": args.request_steps, "batch_size": batch, "device": args.device, "precision": precision,
                 "workers": args.request_workers}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fk.unlearn(copy.deepcopy(model), forget, retain, held, classes=classes, train=train)
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            row["request peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    set_loader_options(0, False)
    row["request steps/s"] = args.request_steps / seconds


def step_rates(args) -> list[dict]:
    """(b) and (c): steps per second of the bare peft LoRA step and of forgetkit's GS-LoRA step, same batch."""
    device = torch.device(args.device)
    rows = []
    for arch, batch in (entry.split(":") for entry in args.models):
        batch = int(batch)
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
    parser.add_argument("--images", type=int, default=2048, help="JPEGs in the data-path folder")
    parser.add_argument("--batch", type=int, default=32, help="images per batch of the data path")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts of today's loader")
    parser.add_argument("--models", nargs="+", default=["vit_fmnist:32", "vit_b16:4"], metavar="ARCH:BATCH",
                        help="the models of (b)-(d) with their images per stream (the papers' presets use 48: "
                             "vit_b16:48 face_vit_p8s8:48)")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="default: 32 and bf16-mixed on a GPU, 32 on a CPU (bf16 autocast is slow there)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jpeg-size", type=int, nargs=2, default=[224, 224], metavar=("W", "H"),
                        help="the data path's JPEGs (224 224: a folder already at the model's size; 500 375: "
                             "ImageNet's typical photo, resized by the loader)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the folder per data-path row (best)")
    parser.add_argument("--cache-gb", type=float, default=2.0, help="train.cache_gb of the cached data-path rows")
    parser.add_argument("--cpu-memory", default="keep", choices=["keep", "release"],
                        help="train.cpu_memory of today's rows (the old loader's row runs with glibc's defaults)")
    parser.add_argument("--request-steps", type=int, default=10, help="steps of the whole request (d)")
    parser.add_argument("--request-eval", type=int, default=8, help="evaluation images of the whole request (d)")
    parser.add_argument("--request-workers", type=int, default=0, help="train.workers of the whole request (d)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["data", "steps", "request"])
    parser.add_argument("--out", default="runs/throughput")
    args = parser.parse_args()
    if args.precisions is None:
        args.precisions = ["32", "bf16-mixed"] if args.device.startswith("cuda") else ["32"]
    torch.manual_seed(0)
    set_loader_options(0, False)
    results = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu_memory": args.cpu_memory,
               "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
    lines = [f"# Throughput on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"train.cpu_memory={args.cpu_memory}"
             + "".join(f", {k}={v}" for k, v in results["malloc"].items()) + ")", ""]
    if "data" not in args.skip:
        results["data_path"] = data_path(args)
        w, h = args.jpeg_size
        lines += [f"## (a) Data path: {args.images} JPEGs of {w}×{h} to normalised 224 px batches of {args.batch}", "",
                  *table(results["data_path"]), ""]
    if "steps" not in args.skip:
        results["steps"] = step_rates(args)
        lines += ["## (b), (c), (d) Training step: bare peft LoRA, forgetkit's GS-LoRA step, a whole request "
                  f"({args.request_steps} steps, {args.request_eval} evaluation images)", "",
                  *table(results["steps"]), ""]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out) / "throughput.json", results)
    write_text(Path(args.out) / "throughput.md", "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"written": str(Path(args.out) / "throughput.md")}))


if __name__ == "__main__":
    main()
