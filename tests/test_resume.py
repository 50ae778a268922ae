"""A run killed at any point (``kill -9``) resumes from its last finished request to the same results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SYNTH

import forgetkit as fk
from forgetkit.io import load_weights, save_weights
from forgetkit.requests import RunRecord

TIMING = {"seconds", "seconds_total", "time"}


def four_requests(model_dir: Path, out: Path, **extra) -> Path:
    """A 4-request run on the tiny model (one class per request), as a config file."""
    cfg = {"model": str(model_dir), "data": SYNTH, "output_dir": str(out),
           "protocol": {"classes_per_request": 1, "num_requests": 4, "retain_ratio": 0.5},
           "method": {"name": "gs_lora", "bnd": 5, "alpha": 0.01, "alpha_warmup_steps": 4},
           "train": {"steps": 12, "batch_size": 16, "threads": 1, "log_every": 2}, **extra}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def forget(config: Path, *flags: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FORGETKIT_CRASH_AT", None)
    if crash_at:
        env["FORGETKIT_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "forgetkit.cli", "forget", "-c", str(config), "-q", "--allow-fail",
                           *flags], env=env, capture_output=True, text=True, timeout=300)


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def half_written(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_killed_three_times_then_resumed_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    reference = forget(four_requests(tiny_model_dir, tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    config = four_requests(tiny_model_dir, tmp_path / "run")
    out = tmp_path / "run"

    # 0. inside the first request: nothing finished, and --resume starts from the beginning
    assert forget(config, crash_at="request_0_step_5").returncode == -9
    assert not (out / "state" / "latest.json").exists() and (out / "state" / "run.yaml").is_file()
    # 1. inside the second request: the first request's state is on disk, and log.csv has grown into the second
    killed = forget(config, "--resume", crash_at="request_1_step_7")
    assert killed.returncode == -9
    assert not (out / "results.json").exists()
    assert json.loads((out / "state" / "latest.json").read_text())["completed"] == 1
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "request,step,name,value"
    assert any(r.startswith("1,6,") for r in rows), "the killed request's losses were logged as it went"
    again = forget(config)  # started again without --resume: refused, the finished request kept
    assert again.returncode == 2 and "holds an unfinished run (1 request(s) finished)" in again.stderr
    assert json.loads((out / "state" / "latest.json").read_text())["completed"] == 1
    # 2. during the save of the third request's state (after the model was written, before the rename)
    killed = forget(config, "--resume", crash_at="save_3")
    assert killed.returncode == -9
    assert json.loads((out / "state" / "latest.json").read_text())["completed"] == 2
    assert half_written(out), "the interrupted save was left aside, not in place"
    # 3. after the fourth request's state was renamed into place but before it was pointed at
    killed = forget(config, "--resume", crash_at="point_4")
    assert killed.returncode == -9
    assert json.loads((out / "state" / "latest.json").read_text())["completed"] == 3

    done = forget(config, "--resume")
    assert done.returncode == 0, done.stderr
    expected = json.loads((tmp_path / "ref" / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    assert without_timing(got) == without_timing(expected)
    assert len(got["ledger"]) == 4 and len(got["tasks"]) == 4
    assert not half_written(out) and not (out / "state").exists()
    assert (out / "log.csv").read_text().count("\n") == (tmp_path / "ref" / "log.csv").read_text().count("\n")
    assert fk.load_model(out / "model")[1]["fingerprint"] == fk.load_model(tmp_path / "ref" / "model")[1][
        "fingerprint"]
    # a finished run: --resume with the same config does nothing; with another request it is refused, by name
    same = forget(config, "--resume")
    assert same.returncode == 0 and "nothing to do" in same.stdout
    other = forget(config, "--resume", "-o", "protocol.classes_per_request=2", "-o", "protocol.num_requests=2")
    assert other.returncode == 2 and "protocol.classes_per_request: 1 then, 2 now" in other.stderr
    assert json.loads((out / "results.json").read_text()) == got


def test_method_state_carries_across_a_resume(tiny_model_dir, tmp_path):
    """EWC keeps an anchor per request: the resumed run must see the anchors of the requests before the kill."""
    extra = {"method": {"name": "ewc"}, "save_model": False}
    assert forget(four_requests(tiny_model_dir, tmp_path / "ref", **extra)).returncode == 0
    config = four_requests(tiny_model_dir, tmp_path / "run", **extra)
    assert forget(config, crash_at="request_2_step_3").returncode == -9
    assert forget(config, "--resume").returncode == 0
    expected = json.loads((tmp_path / "ref" / "results.json").read_text())
    got = json.loads((tmp_path / "run" / "results.json").read_text())
    assert without_timing(got["tasks"]) == without_timing(expected["tasks"])


def test_resume_refuses_another_config_and_a_run_again_without_resume(tiny_model_dir, tmp_path, capsys):
    from forgetkit.cli import main

    config = four_requests(tiny_model_dir, tmp_path / "run")
    assert forget(config, crash_at="request_1_step_2").returncode == -9
    state = (tmp_path / "run" / "state" / "latest.json").read_text()
    assert main(["forget", "-c", str(config), "-q", "--resume", "-o", "train.lr=0.02", "-o", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "seed: 0 then, 3 now" in err and "train.lr" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert (tmp_path / "run" / "state" / "latest.json").read_text() == state  # nothing lost
    # started again without --resume: refused, the saved state kept
    assert main(["forget", "-c", str(config), "-q"]) == 2
    assert "holds an unfinished run (1 request(s) finished)" in capsys.readouterr().err
    assert (tmp_path / "run" / "state" / "latest.json").read_text() == state


def test_ledger_replays_to_the_final_weights_and_chains_across_checkpoints(tiny_model_dir, tmp_path, capsys):
    from forgetkit.cli import main

    common = ["--model", str(tiny_model_dir), "-q", "--allow-fail", "-o", "train.steps=12", "-o",
              "train.threads=1", "-o", "protocol.retain_ratio=0.5"]
    assert main(["forget", "--classes", "class_0,class_1", "--classes", "class_2", "--out", str(tmp_path / "m2"),
                 *common]) == 0
    common[1] = str(tmp_path / "m2")
    # a full-fine-tuning method: its edit is the weights, not an adapter
    assert main(["forget", "--classes", "class_3", "--method", "l2", "--out", str(tmp_path / "m3"), *common]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "m3")
    assert [e["classes"] for e in ledger] == [["class_0", "class_1"], ["class_2"], ["class_3"]]
    assert [e["edit"]["type"] for e in ledger] == ["lora", "lora", "weights"]
    assert [e["method"] for e in ledger] == ["gs_lora", "gs_lora", "l2"]
    for before, after in zip(ledger, ledger[1:]):
        assert before["fingerprint_after"] == after["fingerprint_before"]
    assert manifest["base"]["fingerprint"] == fk.load_model(tiny_model_dir)[1]["fingerprint"]
    replayed = fk.replay_ledger(tmp_path / "m3")
    assert fk.fingerprint(replayed) == manifest["fingerprint"]
    capsys.readouterr()
    assert main(["ledger", str(tmp_path / "m3"), "--verify"]) == 0
    shown = capsys.readouterr().out
    assert "| 3 | forget | class_3 | l2 |" in shown and "verified: the 3 edits replay" in shown
    results = RunRecord.read(tmp_path / "m3")
    assert results.requests[0].old_classes == ["class_0", "class_1", "class_2"]  # from the ledger
    assert "class_0" not in results.requests[0].retain_classes  # never replayed once forgotten
    # cumulative H keeps the base model as its reference: class_0's drop counts in full two commands later
    first = RunRecord.read(tmp_path / "m2")
    assert results.pretrained["per_class"] == first.pretrained["per_class"]
    assert results.requests[0].pretrained["acc_f_all"] > 50
    # a tampered edit is caught by the replay
    edit = tmp_path / "m3" / "model" / ledger[2]["edit"]["path"] / "model.safetensors"
    state = load_weights(edit)
    first = next(iter(state))
    state[first] = state[first] + 1
    save_weights(edit, state)
    with pytest.raises(fk.ForgetkitError, match="request 3"):
        fk.replay_ledger(tmp_path / "m3")
    assert main(["ledger", str(tmp_path / "m3"), "--verify"]) == 2
    assert "replaying request 3" in capsys.readouterr().err
    # forgetting a class again is refused, naming the request that forgot it
    capsys.readouterr()
    assert main(["forget", "--classes", "class_2", "--out", str(tmp_path / "m4"), *common]) == 2
    assert "'class_2' was already forgotten by request 2" in capsys.readouterr().err


def test_bench_resumes_after_kills_between_and_inside_methods(tiny_model_dir, tmp_path):
    from conftest import tiny_run_overrides

    overrides = [o for o in tiny_run_overrides(tiny_model_dir, tmp_path) if not o.startswith(("method.", "output_dir"))]
    spec = tmp_path / "bench.yaml"
    spec.write_text(yaml.safe_dump({"base": "demo", "overrides": overrides + ["train.steps=10", "save_model=false"],
                                    "methods": {"gs_lora": {"bnd": 5.0}, "lwf": {}, "retrain": {}}}))

    def bench(out, *flags, crash_at=None):
        env = {k: v for k, v in os.environ.items() if k != "FORGETKIT_CRASH_AT"}
        if crash_at:
            env["FORGETKIT_CRASH_AT"] = crash_at
        return subprocess.run([sys.executable, "-m", "forgetkit.cli", "bench", "-c", str(spec), "--out", str(out),
                               "-q", *flags], env=env, capture_output=True, text=True, timeout=300)

    assert bench(tmp_path / "ref").returncode == 0
    out = tmp_path / "run"
    assert bench(out, crash_at="bench_lwf").returncode == -9            # gs_lora finished, lwf not started
    finished = (out / "gs_lora" / "results.json").read_text()
    assert bench(out, "--resume", crash_at="request_1_step_4").returncode == -9   # inside lwf's second request
    assert (out / "gs_lora" / "results.json").read_text() == finished   # a finished method is kept, not re-run
    done = bench(out, "--resume")
    assert done.returncode == 0, done.stderr
    for name in ("gs_lora", "lwf", "retrain"):
        got, expected = (json.loads((root / name / "results.json").read_text()) for root in (out, tmp_path / "ref"))
        assert without_timing(got) == without_timing(expected), name


def test_requests_one_command_at_a_time_equal_the_same_requests_in_one_protocol(tiny_model_dir, tmp_path):
    from forgetkit.cli import main

    common = ["-q", "--allow-fail", "-o", "train.steps=12", "-o", "train.threads=1", "-o", "protocol.retain_ratio=0.5"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_4", "--classes", "class_1",
                 "--out", str(tmp_path / "together"), *common]) == 0
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_4", "--out", str(tmp_path / "one"),
                 *common]) == 0
    assert main(["forget", "--model", str(tmp_path / "one"), "--classes", "class_1", "--out", str(tmp_path / "two"),
                 *common]) == 0
    together = RunRecord.read(tmp_path / "together").requests[1].to_dict()
    apart = RunRecord.read(tmp_path / "two").requests[0].to_dict()
    for key in ("index", "old_classes", "retain_classes", "after", "h_mean", "h_cumulative", "fingerprint_before",
                "fingerprint_after", "loss_start" if "loss_start" in apart else "group_norms"):
        assert apart[key] == together[key], key
