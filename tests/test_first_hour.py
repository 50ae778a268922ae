"""What a new user meets in the first hour: learn keeps what the model knew, an exact undo passes, nothing written
is lost, one writer per folder, and a library call leaves the caller's process as it was."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTH, tiny_run_overrides
from PIL import Image

import forgetkit as fk
from forgetkit.cli import main
from forgetkit.requests import RunRecord

QUICK = ["-q", "--allow-fail", "-o", "train.steps=8", "-o", "train.batch_size=8", "-o", "train.threads=1"]


def new_classes_folder(root: Path, names=("alice", "bob"), per_class=12) -> Path:
    """An image folder holding only new classes: a fixed pattern per class plus noise (16 px grey, the tiny
    model's input)."""
    rng = np.random.default_rng(5)
    for k, name in enumerate(names):
        pattern = rng.integers(0, 255, (16, 16))
        for split in ("train", "test"):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noisy = np.clip(pattern + rng.normal(0, 30, (16, 16)), 0, 255).astype(np.uint8)
                Image.fromarray(noisy, "L").save(folder / f"{k}_{i}.png")
    return root


def known_classes(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "manifest.json").read_text())["classes"]


def test_learn_from_a_folder_of_new_classes_keeps_every_class_the_model_knows(tiny_model_dir, tmp_path, capsys):
    """The README's learn example, on an unedited model: the folder holds only the new classes; the model's own
    classes' images come from the data it records, and it says so."""
    folder = new_classes_folder(tmp_path / "people")
    code = main(["learn", "--model", str(tiny_model_dir), "--data", "image_folder", "--root", str(folder),
                 "--classes", "alice,bob", "--out", str(tmp_path / "m2"), *QUICK])
    assert code == 0
    err = capsys.readouterr().err
    assert "6 class(es) the model knows are not in the data given" in err and "synthetic" in err
    assert known_classes(tmp_path / "m2" / "model") == [f"class_{i}" for i in range(6)] + ["alice", "bob"]
    request = RunRecord.read(tmp_path / "m2").requests[0]
    assert request.details["known_classes"] == [f"class_{i}" for i in range(6)] and request.after["acc_old"] > 50


def test_learn_on_a_model_that_forgot_classes_keeps_them_forgotten(tiny_model_dir, tmp_path):
    """The README's second case: a model whose ledger forgot a class (it used to end in a traceback)."""
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(tmp_path / "m1"),
                 *QUICK]) in (0, 3)
    folder = new_classes_folder(tmp_path / "people")
    assert main(["learn", "--model", str(tmp_path / "m1"), "--root", str(folder), "--classes", "alice,bob",
                 "--out", str(tmp_path / "m2"), *QUICK]) in (0, 3)
    assert known_classes(tmp_path / "m2" / "model") == [f"class_{i}" for i in range(6)] + ["alice", "bob"]
    request = RunRecord.read(tmp_path / "m2").requests[0]
    assert request.old_classes == ["class_0"] and request.after["acc_o"] is not None
    assert [e["kind"] for e in fk.read_ledger(tmp_path / "m2")[0]] == ["forget", "learn"]


def test_learn_refuses_when_the_known_classes_images_are_nowhere(tiny_model_dir, tmp_path, capsys):
    """A model whose recorded data cannot be read: refused in one line that names what to add, nothing dropped."""
    import shutil

    model = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["data"] = {"source": "image_folder", "root": str(tmp_path / "gone")}
    (model / "manifest.json").write_text(json.dumps(manifest))
    folder = new_classes_folder(tmp_path / "people")
    assert main(["learn", "--model", str(model), "--root", str(folder), "--classes", "alice", "--out",
                 str(tmp_path / "m2"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the data lacks 6 class(es) the model knows" in err
    assert "add their images" in err and "protocol.backbone=true" in err
    assert not (tmp_path / "m2" / "results.json").exists()


def test_a_backbone_is_asked_for_and_then_knows_only_what_it_learnt(tiny_model_dir, tmp_path):
    folder = new_classes_folder(tmp_path / "people")
    assert main(["learn", "--model", str(tiny_model_dir), "--root", str(folder), "--classes", "alice,bob", "--out",
                 str(tmp_path / "m2"), "-o", "protocol.backbone=true", *QUICK]) in (0, 3)
    assert known_classes(tmp_path / "m2" / "model") == ["alice", "bob"]


def test_an_exact_undo_passes_even_after_a_poor_request(tiny_model_dir, tmp_path, capsys):
    """Two short forget requests (the first one hurts the retained classes), then the latest is withdrawn: the
    undo gives the model before it bit for bit, which is its goal, whatever the base model scored."""
    weak = ["-q", "--allow-fail", "-o", "train.steps=3", "-o", "train.lr=0.2", "-o", "train.threads=1"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--classes", "class_1",
                 "--out", str(tmp_path / "m"), *weak]) in (0, 3)
    capsys.readouterr()
    assert main(["restore", "--model", str(tmp_path / "m"), "--classes", "class_1", "--out", str(tmp_path / "r"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "PASS request 3" in out and "exact" in out
    request = RunRecord.read(tmp_path / "r").requests[0]
    ledger = fk.read_ledger(tmp_path / "m")[0]
    assert request.details["exact"] and request.fingerprint_after == ledger[1]["fingerprint_before"]
    assert request.details["reference"]["label"] == "the model before request 2"


def test_an_approximate_restore_is_judged_against_the_model_before_the_request(tiny_model_dir, tmp_path):
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--classes", "class_1",
                 "--out", str(tmp_path / "m"), *QUICK]) in (0, 3)
    assert main(["restore", "--model", str(tmp_path / "m"), "--classes", "class_0", "--out", str(tmp_path / "r"),
                 "-q", "--allow-fail"]) in (0, 3)
    request = RunRecord.read(tmp_path / "r").requests[0]
    assert not request.details["exact"] and request.details["reference"]["label"] == "the model before request 1"
    assert request.details["gap_to_reference"] == pytest.approx(request.details["reference"]["acc_restored"]
                                                        - request.after["acc_restored"])
    failed = " ".join(request.failed)
    assert "base model" not in failed  # the base is the second row, not the bar


def test_a_second_writer_of_one_folder_gets_one_line(tiny_model_dir, tmp_path, capsys):
    from forgetkit.outputs import OutputLock

    with OutputLock(tmp_path / "run"):
        assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out",
                     str(tmp_path / "run"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "is being written by another forgetkit process" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "results.json").exists()


def test_every_command_refuses_to_replace_what_it_wrote(tiny_model_dir, tmp_path, capsys):
    args = ["pretrain", "--data", "synthetic", "--arch", "vit_test", "--epochs", "1", "--out", str(tmp_path / "m"),
            "-q"]
    assert main(args) == 0
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_a_library_call_leaves_the_callers_process_as_it_was(tiny_model_dir, tmp_path):
    """Threads, random generators and matplotlib's backend are the caller's before and after a run."""
    import matplotlib

    backend = matplotlib.get_backend()
    torch.set_num_threads(2)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    cfg = fk.load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path / "run") + ["train.steps=4"])
    fk.run_requests(cfg, progress=False)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert torch.get_num_threads() == 2 and matplotlib.get_backend() == backend


def test_python_dash_m_and_version():
    done = subprocess.run([sys.executable, "-m", "forgetkit", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"forgetkit {fk.__version__}"
    assert (Path(fk.__file__).parent / "py.typed").is_file()


def test_a_checkpoint_records_absolute_paths_and_any_name_of_it_loads(tiny_model_dir, tmp_path, monkeypatch):
    """A run folder, a checkpoint folder and its model.safetensors all name the same model; the data root and base
    are stored absolute, so the checkpoint works from any folder."""
    monkeypatch.chdir(tmp_path)
    root = Path("imgs")
    from conftest import make_image_folder

    make_image_folder(root, classes=("cat", "dog", "owl"), per_class=8, size=(16, 16))
    assert main(["pretrain", "--root", "imgs", "--arch", "vit_test", "--epochs", "1", "--out", "m", "-q", "-o",
                 "batch_size=8"]) == 0
    assert json.loads(Path("m/manifest.json").read_text())["data"]["root"] == str((tmp_path / "imgs").resolve())
    assert main(["forget", "--model", "m/model.safetensors", "--classes", "dog", "--out", "run", *QUICK]) in (0, 3)
    manifest = json.loads(Path("run/model/manifest.json").read_text())
    assert manifest["base"]["path"] == str((tmp_path / "m").resolve())
    monkeypatch.chdir(tmp_path.parent)
    assert fk.load_model(tmp_path / "run")[1]["fingerprint"] == manifest["fingerprint"]
    assert main(["forget", "--model", str(tmp_path / "run"), "--classes", "owl", "--out", str(tmp_path / "run2"),
                 *QUICK]) in (0, 3)
    assert [e["classes"] for e in fk.read_ledger(tmp_path / "run2")[0]] == [["dog"], ["owl"]]


def test_unreadable_images_are_left_out_with_a_warning(tmp_path, caplog):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3, size=(16, 16))
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level("WARNING", logger="forgetkit"):
        splits = fk.load_data(fk.DataConfig(source="image_folder", root=str(root)))
    assert len(splits.train) == 6 and "1 unreadable image(s)" in caplog.text and "broken.png" in caplog.text


@pytest.mark.parametrize("shape, message", [((3, 16, 16), "have shape (3, 16, 16), the model takes (1, 16, 16)"),
                                            ((1, 28, 28), "have shape (1, 28, 28)")])
def test_unlearn_refuses_images_of_the_wrong_shape(tiny_model_dir, shape, message):
    model, manifest = fk.load_model(tiny_model_dir)
    forget = torch.utils.data.TensorDataset(torch.zeros(2, *shape), torch.tensor([0, 0]))
    retain = torch.utils.data.TensorDataset(torch.zeros(2, *shape), torch.tensor([1, 1]))
    with pytest.raises(fk.ForgetkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fk.unlearn(model, forget, retain, retain, classes=manifest["classes"])


def test_synthetic_source_names_match_the_registry():
    from forgetkit.data.config import SOURCE_NAMES
    from forgetkit.data.sources import SOURCES

    assert sorted(SOURCE_NAMES) == SOURCES.names()
    assert SYNTH["source"] in SOURCE_NAMES
