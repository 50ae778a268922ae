"""Memory of one GS-LoRA step of a paper preset, measured on whatever device is present: the peak the step adds
over the loaded model, per image, so that the papers' batch of 48 + 48 can be read off before renting a GPU
(docs/scaling.md). On CUDA it is torch's peak allocation; on a CPU the process's peak resident memory (each size in
a fresh process), which holds the same activations, so it bounds a GPU's from above (a GPU's fused attention keeps
less).

    .venv/bin/python bench/step_memory.py --arch vit_b16 --batches 1 2 4
    .venv/bin/python bench/step_memory.py --arch face_vit_p8s8 --batches 4 8 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(arch: str, batch: int, device: str, precision: str) -> dict:
    import copy

    import torch

    import forgetkit as fk
    from forgetkit.methods import MethodContext, build_method
    from forgetkit.requests import Request, RequestData
    from forgetkit.runtime import Runtime

    dev = torch.device(device)
    model = fk.create_model(arch, 100).to(dev)
    spec = model.spec
    x = torch.randn(2 * batch, spec.in_chans, spec.image_size, spec.image_size, device=dev)
    train = fk.load_config(None, [f"train.precision={precision}", f"train.device={device}"]).train
    runtime = Runtime.create(train)
    method = build_method({"name": "gs_lora"}, MethodContext(device=dev, seed=0, num_classes=100, runtime=runtime))
    method.setup(copy.deepcopy(model), Request(0, "forget", [0], list(range(1, 100)), []),
                 RequestData({"forget": None, "retain": None}))
    del model
    optimizer = runtime.setup_optimizer(method.make_optimizer(1e-4, 0.0))
    batch_of = {"forget": (x[:batch], torch.zeros(batch, dtype=torch.long, device=dev)),
                "retain": (x[batch:], 1 + torch.arange(batch, device=dev) % 99)}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for step in range(2):  # the second step has AdamW's states
        method.step(batch_of, step, optimizer)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"arch": arch, "batch": f"{batch} + {batch}", "precision": precision, "device": device,
            "step GiB": (peak - base) / 2**30, "per image MiB": (peak - base) / 2**20 / (2 * batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4], help="images per stream")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process measuring one size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.arch, args.one, args.device, args.precision)))
        return
    rows = []
    for batch in args.batches:
        done = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--device", args.device,
                               "--precision", args.precision, "--one", str(batch)], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| model | device | precision | batch | step GiB | per image MiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['device']} | {r['precision']} | {r['batch']} | {r['step GiB']:.2f} | "
              f"{r['per image MiB']:.0f} |")


if __name__ == "__main__":
    main()
