"""A user's mistakes, table-driven: each ends with exit status 2 and one line ``error: ...`` that names the problem
and the fix, without a traceback, and changes nothing already written (every file's checksum before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder

from forgetkit.cli import main


def checksums(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name != ".forgetkit.lock"}


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> Path:
    """Everything the mistakes are made on: a copy of the tiny model, finished outputs that must survive, data."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_model_dir, root / "model")
    (root / "done").mkdir()
    (root / "done" / "results.json").write_text("{}")               # a finished run
    (root / "checked").mkdir()
    (root / "checked" / "verify.json").write_text("{}")             # a finished verification
    (root / "empty_dir").mkdir()                                     # a folder that is no checkpoint
    (root / "bad_json").mkdir()
    (root / "bad_json" / "manifest.json").write_text("{not json")
    (root / "other_format").mkdir()
    (root / "other_format" / "manifest.json").write_text(json.dumps({"format": "keras"}))
    (root / "typo.yaml").write_text("train: {steps: 10\n")           # invalid YAML
    (root / "list.yaml").write_text("- 1\n- 2\n")                    # YAML that is no mapping
    make_image_folder(root / "one_class", classes=("cat",), per_class=3, size=(16, 16))
    make_image_folder(root / "few", classes=("cat", "dog"), per_class=2, size=(16, 16))
    (root / "weights").mkdir()
    (root / "weights" / "model.safetensors").write_bytes(b"")       # an input inside a would-be output
    (root / "pickled.pth").write_bytes(_pickled_payload())
    tampered = root / "tampered"
    shutil.copytree(tiny_model_dir, tampered)
    from forgetkit.io import load_weights, save_weights

    state = load_weights(tampered / "model.safetensors")
    key = next(iter(state))
    state[key] = state[key] + 1e-3
    save_weights(tampered / "model.safetensors", state)
    bad_name = root / "bad_name"
    make_image_folder(bad_name, classes=("ok",), per_class=2, size=(16, 16))
    for split in ("train", "test"):  # a second class folder named by bytes that are not UTF-8 ("caf" + Latin-1 é)
        shutil.copytree(bad_name / split / "ok", os.fsdecode(os.fsencode(bad_name / split) + b"/caf\xe9"))
    return root


def _pickled_payload() -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    return pickle.dumps({"state_dict": Evil()})


MODEL, OUT = "{world}/model", "{world}/out"
FORGET = ["forget", "--model", MODEL, "--out", OUT, "-q"]
# (what the user got wrong, arguments, a part of the one error line)
MISTAKES = [
    ("config key typo", FORGET + ["--classes", "class_0", "-o", "train.step=3"], "did you mean 'steps'"),
    ("section typo", FORGET + ["--classes", "class_0", "-o", "trian.steps=3"], "did you mean 'train'"),
    ("not a number", FORGET + ["--classes", "class_0", "-o", "train.steps=many"], "must be an integer"),
    ("negative threads", FORGET + ["--classes", "class_0", "-o", "train.threads=-1"], "train.threads must be 0"),
    ("no training step", FORGET + ["--classes", "class_0", "-o", "train.steps=0"], "must be at least 1"),
    ("negative learning rate", FORGET + ["--classes", "class_0", "-o", "train.lr=-1"], "train.lr must be positive"),
    ("unknown device", FORGET + ["--classes", "class_0", "-o", "train.device=gpu"], "unknown device 'gpu'"),
    ("override without =", FORGET + ["--classes", "class_0", "-o", "train.steps"], "must look like section.key"),
    ("unknown method", FORGET + ["--classes", "class_0", "--method", "gslora"], "Did you mean 'gs_lora'"),
    ("method field typo", FORGET + ["--classes", "class_0", "-o", "method.alpah=0.1"], "did you mean 'alpha'"),
    ("another method's field", FORGET + ["--classes", "class_0", "--method", "l2", "-o", "method.bnd=3"],
     "unknown config key 'method(l2).bnd'"),
    ("misspelt class", FORGET + ["--classes", "class_O"], "unknown class 'class_O'"),
    ("empty class list", FORGET + ["--classes", ","], "names no class"),
    ("class named twice", FORGET + ["--classes", "class_0,class_0"], "names a class twice"),
    ("requests without --out", ["forget", "--model", MODEL, "--classes", "class_0"], "--classes needs --out"),
    ("nothing to forget", ["forget", "--model", MODEL, "--out", OUT], "name what to forget"),
    ("config file not found", ["forget", "-c", "{world}/nope.yaml", "--out", OUT],
     "config {world}/nope.yaml not found"),
    ("invalid YAML", ["forget", "-c", "{world}/typo.yaml", "--out", OUT], "is not valid YAML"),
    ("YAML that is no mapping", ["forget", "-c", "{world}/list.yaml", "--out", OUT], "must hold a mapping"),
    ("unknown built-in model", ["forget", "--model", "builtin:vit_huge", "--classes", "a", "--out", OUT],
     "unknown built-in model 'builtin:vit_huge'"),
    ("model path that does not exist", ["forget", "--model", "{world}/nope", "--classes", "a", "--out", OUT],
     "model {world}/nope not found"),
    ("folder that is no checkpoint", ["forget", "--model", "{world}/empty_dir", "--classes", "a", "--out", OUT],
     "is not a forgetkit checkpoint (no manifest.json)"),
    ("corrupt manifest", ["forget", "--model", "{world}/bad_json", "--classes", "a", "--out", OUT],
     "is not valid JSON"),
    ("manifest of another format", ["forget", "--model", "{world}/other_format", "--classes", "a", "--out", OUT],
     "manifest format 'keras'"),
    ("misspelt data source", FORGET + ["--classes", "class_0", "--data", "fashion_mnsit"],
     "Did you mean 'fashion_mnist'"),
    ("image folder without a root", FORGET + ["--classes", "class_0", "--data", "image_folder"],
     "data.root is required"),
    ("data root that does not exist", FORGET + ["--classes", "class_0", "--root", "{world}/nowhere"],
     "{world}/nowhere/train does not exist"),
    ("unknown request kind", FORGET + ["--classes", "class_0", "-o", "kind=unlearn"], "unknown request kind"),
    ("unknown evaluation split", FORGET + ["--classes", "class_0", "-o", "protocol.eval_split=validation"],
     "protocol.eval_split must be one of test, val"),
    ("a ratio above 1", FORGET + ["--classes", "class_0", "-o", "protocol.retain_ratio=10"], "must be in (0, 1]"),
    ("finished results in --out", ["forget", "--model", MODEL, "--classes", "class_0", "--out", "{world}/done"],
     "already holds a finished run"),
    ("--out is the input checkpoint", ["forget", "--model", MODEL, "--classes", "class_0", "--out", MODEL,
                                       "--overwrite"], "is or holds the input"),
    ("--out holds the input checkpoint", ["forget", "--model", MODEL, "--classes", "class_0", "--out", "{world}",
                                          "--overwrite"], "is or holds the input"),
    ("restore a class never forgotten", ["restore", "--model", MODEL, "--classes", "class_3", "--out", OUT],
     "'class_3' is not forgotten"),
    ("learn a class the model knows", ["learn", "--model", MODEL, "--classes", "class_1", "--out", OUT],
     "already knows 'class_1'"),
    ("tampered weights", ["forget", "--model", "{world}/tampered", "--classes", "class_0", "--out", OUT],
     "are not the ones its manifest records"),
    ("verify a model that forgot nothing", ["verify", "--model", MODEL, "--out", OUT], "has forgotten no class"),
    ("verify a misspelt class", ["verify", "--model", MODEL, "--classes", "clas_0", "--out", OUT], "unknown class"),
    ("verify over a finished verification", ["verify", "--model", MODEL, "--classes", "class_0", "--base", MODEL,
                                             "--out", "{world}/checked"], "already holds a verification"),
    ("verify with negative threads", ["verify", "--model", MODEL, "--classes", "class_0", "--threads", "-2",
                                      "--out", OUT], "--threads must be 0"),
    ("pretrain an unknown preset", ["pretrain", "--arch", "vit_tiny", "--out", OUT], "unknown model preset"),
    ("pretrain for no epoch", ["pretrain", "--arch", "vit_test", "--epochs", "0", "--out", OUT], "must be at least 1"),
    ("pretrain over a checkpoint", ["pretrain", "--arch", "vit_test", "--data", "synthetic", "--out", MODEL],
     "already holds a checkpoint"),
    ("pretrain on one class", ["pretrain", "--arch", "vit_test", "--root", "{world}/one_class", "--out", OUT],
     "a classifier needs at least two"),
    ("pretrain on fewer images than a batch", ["pretrain", "--arch", "vit_test", "--root", "{world}/few", "--out",
                                               OUT], "fewer than one batch"),
    ("pretrain on a class folder with a non-UTF-8 name", ["pretrain", "--arch", "vit_test", "--root",
                                                          "{world}/bad_name", "--out", OUT], "not valid UTF-8"),
    ("import weights that do not exist", ["import-weights", "--weights", "{world}/nope.pth", "--data-root",
                                          "{world}/few", "--out", OUT], "weights file not found"),
    ("import a pickle that runs code", ["import-weights", "--weights", "{world}/pickled.pth", "--arch", "vit_test",
                                        "--data-root", "{world}/few", "--out", OUT], "refusing to load"),
    ("import into the folder of the weights", ["import-weights", "--weights", "{world}/weights/model.safetensors",
                                               "--data-root", "{world}/few", "--out", "{world}/weights",
                                               "--overwrite"], "is or holds the input"),
    ("import with an unknown preset field", ["import-weights", "--weights", "{world}/model/model.safetensors",
                                             "--arch", "vit_test", "-o", "embed_dimm=64", "--data-root",
                                             "{world}/few", "--out", OUT], "did you mean 'embed_dim'"),
    ("ledger of a folder that is no checkpoint", ["ledger", "{world}/empty_dir"], "is not a forgetkit checkpoint"),
    ("bench an unknown method", ["bench", "--methods", "gs_lora,nope", "--out", OUT], "unknown method 'nope'"),
    ("config of an unknown method or section", ["config", "gs_lorra"], "Did you mean 'gs_lora'"),
]


@pytest.mark.parametrize("what, args, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_exit_2_and_changes_nothing(world, what, args, message, capsys):
    args = [a.replace("{world}", str(world)) for a in args]
    message = message.replace("{world}", str(world))
    before = checksums(world)
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err + captured.out and "this ran" not in captured.out
    assert checksums(world) == before, "a file already written changed"
    assert not (world / "out" / "results.json").exists()


def test_at_least_forty_mistakes_are_covered():
    assert len(MISTAKES) >= 40


FAST_MISTAKES = [  # checked before torch is imported
    ["forget", "-c", "demo", "-o", "train.step=3"],
    ["forget", "--classes", "Sandl", "--out", "{tmp}/x"],
    ["forget", "--model", "{tmp}/nope", "--classes", "a", "--out", "{tmp}/x"],
    ["learn", "-c", "cil", "-o", "method.rnak=3"],
    ["restore", "--model", "builtin:fmnist_vit", "--classes", "Bag", "--out", "{tmp}/x", "-o", "train.threads=-1"],
    ["pretrain", "--arch", "vit_tiny", "--out", "{tmp}/x"],
    ["verify", "--model", "builtin:fmnist_vit", "--out", "{tmp}/x"],
    ["import-weights", "--weights", "{tmp}/nope.pth", "--data-root", "{tmp}", "--out", "{tmp}/x"],
]


def test_mistakes_answer_before_torch_is_imported(tmp_path):
    """A mistake in the arguments or the config is refused before torch, the model or the data load (a fraction of
    a second instead of 7-16 s)."""
    code = ("import json, sys\nfrom forgetkit.cli import main\ncodes = [main(a) for a in json.loads(sys.argv[1])]\n"
            "print(json.dumps([codes, 'torch' in sys.modules]))")
    cases = [[a.replace("{tmp}", str(tmp_path)) for a in args] for args in FAST_MISTAKES]
    done = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True, timeout=120)
    codes, torch_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [2] * len(cases), done.stderr
    assert not torch_loaded
    assert done.stderr.count("error: ") == len(cases) and "Traceback" not in done.stderr
