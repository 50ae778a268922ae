import json

import pytest
from conftest import tiny_run_overrides

from forgetkit.cli import main
from forgetkit.requests import RunRecord


def test_forget_command_runs_and_prints_table(tiny_model_dir, tmp_path, capsys):
    args = ["forget", "-c", "demo", "-q"]
    for item in tiny_run_overrides(tiny_model_dir, tmp_path / "cli") + ["protocol.forget_ratio=1.0",
                                                                        "protocol.retain_ratio=0.5"]:
        args += ["-o", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| Pre-train |" in out and "average cumulative H" in out
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["method"] == "gs_lora"


def test_config_typo_is_one_clear_line(capsys):
    assert main(["forget", "-c", "demo", "-o", "train.step=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key") and "did you mean 'steps'" in err and "\n" not in err


def test_unknown_class_in_a_request(tiny_model_dir, tmp_path, capsys):
    args = ["forget", "-c", "demo", "-q"]
    for item in tiny_run_overrides(tiny_model_dir, tmp_path / "x") + ["protocol.requests=[[class_9]]"]:
        args += ["-o", item]
    assert main(args) == 2
    assert "unknown class 'class_9'" in capsys.readouterr().err


def test_listing_commands(capsys):
    assert main(["methods"]) == 0
    assert "gs_lora" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "face_vit_p8s8" in capsys.readouterr().out
    assert main(["config", "gs_lora"]) == 0
    assert "method.alpha_warmup_steps" in capsys.readouterr().out


def test_pretrain_command(tmp_path, capsys):
    assert main(["pretrain", "--data", "synthetic", "--arch", "vit_test", "--epochs", "1", "--out",
                 str(tmp_path / "m"), "-q"]) == 0
    assert (tmp_path / "m" / "manifest.json").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_image_folder_pretrain_then_forget_by_name(tmp_path, capsys):
    from conftest import make_image_folder

    import forgetkit as fk

    root = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "fox", "owl"), per_class=6, size=(18, 18))
    assert main(["pretrain", "--data", "image_folder", "--root", str(root), "--arch", "vit_test", "--epochs", "2",
                 "--out", str(tmp_path / "m"), "-q", "-o", "warmup_steps=1", "-o", "batch_size=8"]) == 0
    results = fk.forget(str(tmp_path / "m"), [["dog"], ["owl"]], output_dir=str(tmp_path / "run"), progress=False,
                        data={"source": "image_folder", "root": str(root)},
                        overrides=["protocol.forget_ratio=1.0", "protocol.retain_ratio=1.0", "train.steps=8",
                                   "train.batch_size=4"])
    assert [t.classes for t in results.requests] == [["dog"], ["owl"]]
    assert results.requests[1].old_classes == ["dog"] and results.dataset == "imgs"


def test_import_weights_from_torchvision_pth(tmp_path, capsys):
    import torch
    from conftest import make_image_folder
    from torchvision.models.vision_transformer import VisionTransformer

    import forgetkit as fk

    root = make_image_folder(tmp_path / "imgs", classes=("b", "a"), per_class=2, size=(16, 16))
    tv = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128,
                           num_classes=4).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    (tmp_path / "names.txt").write_text("z\na\ny\nb\n")
    args = ["import-weights", "--weights", str(tmp_path / "tv.pth"), "--arch", "vit_test", "--data-root", str(root),
            "--class-index-file", str(tmp_path / "names.txt"), "--out", str(tmp_path / "m")]
    # an override the weights contradict is refused, naming the field
    assert main(args + ["-o", "in_chans=1"]) == 2
    assert "-o in_chans=1 contradicts the weights" in capsys.readouterr().err
    # vit_test is grey; this checkpoint is RGB: the input channels are read from the weights, and said
    assert main(args) == 0
    assert "from the weights' shapes: in_chans 3" in capsys.readouterr().out
    model, manifest = fk.load_model(tmp_path / "m")
    assert manifest["classes"] == ["a", "b"] and manifest["spec"]["in_chans"] == 3
    assert manifest["imported"]["adopted"] == {"in_chans": 3}
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # never replaced silently
    assert manifest["data"]["source"] == "image_folder"  # a later `forget --model` needs no --data
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x)[:, [1, 3]], atol=1e-5)


def test_bench_command_writes_one_comparison(tiny_model_dir, tmp_path, capsys):
    import csv

    spec = tmp_path / "bench.yaml"
    overrides = [o for o in tiny_run_overrides(tiny_model_dir, tmp_path) if not o.startswith(("method.", "output_dir"))]
    spec.write_text("base: demo\noverrides: " + json.dumps(overrides + ["train.steps=16"]) +
                    "\nmethods:\n  gs_lora: {bnd: 5.0}\n  lwf: {train: {lr: 0.001}}\n  retrain: {}\n")
    assert main(["bench", "-c", str(spec), "--out", str(tmp_path / "bench"), "-q"]) == 0
    rows = list(csv.DictReader((tmp_path / "bench" / "comparison.csv").open()))
    assert list(rows[0]) == ["method", "task", "h_cumulative", "h_mean", "acc_r", "acc_f", "acc_o", "acc_f_all",
                             "seconds", "trainable_ratio"]
    assert sorted(r["method"] for r in rows) == ["gs_lora"] * 2 + ["lwf"] * 2 + ["retrain"] * 2
    methods = list(dict.fromkeys(r["method"] for r in rows))      # best first, by average cumulative H
    averages = [sum(float(r["h_cumulative"]) for r in rows if r["method"] == m) / 2 for m in methods]
    assert averages == sorted(averages, reverse=True)
    assert rows[0]["acc_o"] == "" and rows[1]["acc_o"] != ""
    ratio = {r["method"]: float(r["trainable_ratio"]) for r in rows}
    assert ratio["gs_lora"] < ratio["lwf"] <= 100
    for name in ("comparison.md", "comparison.png", "gs_lora/results.json", "retrain/results.json"):
        assert (tmp_path / "bench" / name).is_file()
    lwf_cfg = (tmp_path / "bench" / "lwf" / "config.yaml").read_text()
    assert "lr: 0.001" in lwf_cfg and "name: lwf" in lwf_cfg
    assert "bnd: 5.0" in (tmp_path / "bench" / "gs_lora" / "config.yaml").read_text()
    assert "alpha_warmup_steps" not in lwf_cfg  # a baseline inherits none of the base's GS-LoRA settings
    assert "| retrain |" in capsys.readouterr().out
    # rebuilding the comparison from the finished runs gives the same table
    before = (tmp_path / "bench" / "comparison.csv").read_text()
    (tmp_path / "bench" / "comparison.csv").unlink()
    assert main(["bench", "-c", str(spec), "--out", str(tmp_path / "bench"), "--report-only"]) == 0
    assert (tmp_path / "bench" / "comparison.csv").read_text() == before
    assert main(["bench", "-c", str(spec), "--out", str(tmp_path / "empty"), "--report-only"]) == 2
    assert "run `forgetkit bench` for gs_lora first" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["train.steps=0", "train.batch_size=0", "train.log_every=0"])
def test_an_empty_budget_is_refused_before_any_work(override, tmp_path, capsys):
    assert main(["forget", "-c", "demo", "-o", override, "--out", str(tmp_path / "r"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.steps") and "must be at least 1" in err and "\n" not in err.strip()
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["-o", "train.lr=0"], "error: train.lr must be positive"),
    (["-o", "train.lr=-0.01"], "error: train.lr must be positive"),
    (["--model", "NOT_A_MODEL"], "is not a forgetkit checkpoint"),
])
def test_bad_request_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    (tmp_path / "NOT_A_MODEL").mkdir()
    args = [a.replace("NOT_A_MODEL", str(tmp_path / "NOT_A_MODEL")) for a in args]
    assert main(["forget", "--classes", "Bag", "--out", str(tmp_path / "r"), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_an_output_folder_that_cannot_be_written(tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("precious")
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(blocker / "r"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to {blocker / 'r'}") and "--out" in err
    assert blocker.read_text() == "precious"


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, forgetkit.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    done = subprocess.run([sys.executable, "-m", "forgetkit.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "forget" in done.stdout


def test_a_request_that_forgets_nothing_fails_loudly(tiny_model_dir, tmp_path, capsys):
    """A budget far too small forgets nothing: the run is saved, each failed request is named, and the exit status
    is 3 with the likely fix; --allow-fail accepts it."""
    args = ["forget", "-c", "demo", "-q"]
    for item in tiny_run_overrides(tiny_model_dir, tmp_path / "weak") + ["train.steps=1", "train.lr=1e-6"]:
        args += ["-o", item]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "FAIL request 1" in err and "forgotten classes still at" in err
    assert "error: 2 of 2 requests missed their goal" in err and "train.steps=600" in err
    results = RunRecord.read(tmp_path / "weak")   # nothing lost: the run is saved
    assert [t.passed for t in results.requests] == [False, False]
    assert main(args + ["--overwrite", "--allow-fail"]) == 0


def test_a_request_that_reaches_its_goal_passes(tiny_model_dir, tmp_path):
    from forgetkit.engine.config import EvalConfig
    from forgetkit.requests import REQUEST_KINDS

    results = fk_run(tiny_model_dir, tmp_path)
    assert all(t.verdict == {"pass": True, "failed": []} for t in results.requests)
    strict = EvalConfig(forget_threshold=5.0, max_retain_drop=0.0)       # the same numbers under a stricter bar
    t = results.requests[0]
    worse = {**t.details, "after": {**t.after, "acc_r": t.before["acc_r"] - 0.5}}
    assert REQUEST_KINDS.get("forget")().verdict(worse, strict)["failed"][0].startswith("retained classes fell")


def fk_run(model_dir, tmp_path):
    import forgetkit as fk

    cfg = fk.load_config(None, tiny_run_overrides(model_dir, tmp_path / "ok") + ["eval.max_retain_drop=10"])
    return fk.run_requests(cfg, progress=False)
