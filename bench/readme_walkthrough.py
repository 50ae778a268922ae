"""The README's commands, run in order as a new user would, in an empty folder: each command's exit status, wall
time, peak memory and last lines, checked against what the README says they end with.

    PYTHONPATH=bench .venv/bin/python bench/readme_walkthrough.py [--out runs/readme-walkthrough] [--quick]

``--quick`` passes ``-o train.steps=40`` to the requests (a smoke run: verdicts may then FAIL, which is allowed); the
default runs them at their defaults, as the README does. Writes ``walkthrough.md`` (a transcript to paste into the
docs) and exits 1 if any command ends otherwise than the README says. ``tests/test_readme.py`` checks that every
command here appears word for word in the README.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FORGETKIT = str(REPO / ".venv" / "bin" / "forgetkit")

# (the command as the README writes it, exit statuses it may end with, text its output must hold)
COMMANDS = [
    (".venv/bin/forgetkit demo", (0,), "PASS request 4"),
    (".venv/bin/forgetkit forget --classes Sandal,Bag --out models/no-bags", (0,), "PASS request 1"),
    (".venv/bin/forgetkit forget --model models/no-bags --classes Coat --out models/no-coat", (0,), "PASS request 2"),
    (".venv/bin/forgetkit forget --model models/no-coat --classes Trouser --method l2 --out models/no-trouser",
     (0,), "PASS request 3"),
    (".venv/bin/forgetkit ledger models/no-trouser --verify", (0,), "verified: the 3 edits replay"),
    (".venv/bin/forgetkit forget --model models/no-trouser --classes Bag --out models/again", (2,),
     "was already forgotten by request 1"),
    (".venv/bin/forgetkit restore --model models/no-coat --classes Coat --out models/coat-back", (0,),
     "(exact: the weights before the withdrawn request, bit for bit)"),
    (".venv/bin/forgetkit verify --model models/no-coat --out runs/verify-no-coat", (0,), "verify.json"),
    (".venv/bin/forgetkit learn --model models/no-coat --data image_folder --root people --classes alice,bob "
     "--out models/m2", (0,), "PASS request 3"),
    (".venv/bin/forgetkit import-weights --weights my_vit.safetensors --arch vit_b16 -o num_heads=4 "
     "-o mean=[0.5] -o std=[0.5] --data-root my_images --out models/mine", (0,), "from the weights' shapes"),
    (".venv/bin/forgetkit forget --model models/mine --classes Bag --out models/mine-no-bag", (0,),
     "PASS request 1"),
    (".venv/bin/forgetkit verify --model models/mine-no-bag --out runs/verify-mine", (0,), "verify.json"),
    (".venv/bin/forgetkit clip-demo", (0, 3), "request 1"),
]


def make_inputs(where: Path) -> None:
    """What the README's own-data commands assume the user has: an image folder of new people (here: two MNIST
    digits as PNGs), a timm ViT state dict of their own (here: the shipped Fashion-MNIST ViT's backbone, saved as
    timm names it) and an image folder of their classes (here: Fashion-MNIST as PNGs)."""
    sys.path.insert(0, str(REPO / "src"))
    from PIL import Image

    import forgetkit as fk

    digits = fk.load_data(fk.DataConfig(source="mnist_5k"))
    for name, digit in (("alice", 0), ("bob", 1)):
        for split, images in (("train", digits.train), ("test", digits.test)):
            folder = where / "people" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in images.indices_of([digit]).tolist():
                Image.fromarray(images.raw(i)[0].numpy(), "L").save(folder / f"{i}.png")
    clothes = fk.load_data(fk.DataConfig(source="fashion_mnist"))
    for split, images, per_class in (("train", clothes.train, 200), ("test", clothes.test, 100)):
        for c, name in enumerate(clothes.classes):
            folder = where / "my_images" / split / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for i in images.indices_of([c]).tolist()[:per_class]:
                Image.fromarray(images.raw(i)[0].numpy(), "L").save(folder / f"{i}.png")
    model, _ = fk.load_model("builtin:fmnist_vit")
    state = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state.update({"head." + k.removeprefix("head.fc."): v for k, v in model.state_dict().items()
                  if k.startswith("head.fc.")})
    from safetensors.torch import save_file

    # the folder's classes sort differently from the model's: keep the rows in the folder's (sorted) order
    order = [clothes.classes.index(n) for n in sorted(clothes.classes, key=lambda n: n.replace("/", "-"))]
    state["head.weight"], state["head.bias"] = state["head.weight"][order], state["head.bias"][order]
    save_file({k: v.contiguous() for k, v in state.items()}, str(where / "my_vit.safetensors"))


def run(command: str, cwd: Path, quick: bool) -> dict:
    argv = shlex.split(command)
    argv[0] = FORGETKIT
    if quick and argv[1] in ("forget", "learn", "restore", "demo"):
        argv += ["-o", "train.steps=40"]
    start = time.monotonic()
    done = subprocess.run(argv + ["-q"], cwd=cwd, capture_output=True, text=True, env={**os.environ})
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB, the largest child so far
    return {"code": done.returncode, "seconds": seconds, "peak_mib": peak, "out": done.stdout, "err": done.stderr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/readme-walkthrough")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    where = Path(args.out).resolve()
    if where.exists() and any(where.iterdir()):
        print(f"error: {where} is not empty; the walkthrough starts in an empty folder (choose another --out)",
              file=sys.stderr)
        return 2
    where.mkdir(parents=True, exist_ok=True)
    make_inputs(where)
    lines, failures = [f"# The README's commands, in order ({time.strftime('%Y-%m-%d')}, `nproc` = {os.cpu_count()})",
                       ""], 0
    for command, codes, expected in COMMANDS:
        result = run(command, where, args.quick)
        text = result["out"] + result["err"]
        ok = result["code"] in codes and (expected in text or (args.quick and result["code"] == 3))
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} exit {result['code']} {result['seconds']:6.1f} s  {command}", flush=True)
        tail = "\n".join(text.strip().splitlines()[-12:])
        lines += [f"```\n$ {command}\n{tail}\nexit {result['code']}  ({result['seconds']:.0f} s, peak "
                  f"{result['peak_mib']:.0f} MiB so far)\n```", ""]
    (where / "walkthrough.md").write_text("\n".join(lines))
    print(f"{len(COMMANDS) - failures} of {len(COMMANDS)} commands ended as the README says; {where}/walkthrough.md")
    return 1 if failures else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
