"""The runtime seam (runtime.Runtime, docs/scaling.md): mixed precision, gradient accumulation and several processes
on Lightning Fabric give the one-process run's protocol, and only one process writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides

import forgetkit as fk
from forgetkit.engine.config import TrainConfig
from forgetkit.errors import ForgetkitError
from forgetkit.runtime import Runtime

pytest.importorskip("lightning_fabric")


def run(model_dir, out, *extra):
    return fk.run_requests(fk.load_config(None, tiny_run_overrides(model_dir, out) + list(extra)), progress=False)


def test_a_step_runs_in_bf16_under_fabric_autocast_on_the_cpu(tiny_model_dir, tmp_path, monkeypatch):
    """train.precision=bf16-mixed: the forward passes of the training steps compute in bfloat16 (seen by a hook on
    an FFN layer during the run), the weights stay float32, and the request still forgets."""
    seen = set()
    original = torch.nn.Linear.forward

    def forward(self, x):  # every linear layer of the training steps (LoRA's included)
        out = original(self, x)
        if torch.is_grad_enabled():
            seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", forward)
    results = run(tiny_model_dir, tmp_path / "bf16", "train.precision=bf16-mixed", "protocol.num_requests=1")
    assert seen == {torch.bfloat16}
    request = results.requests[0]
    assert request.after["acc_f"] <= 5 and request.after["acc_r"] >= request.before["acc_r"] - 10
    assert "precision: bf16-mixed" in (tmp_path / "bf16" / "config.yaml").read_text()


def test_precision_32_from_yaml_is_the_string_choice_and_a_wrong_one_is_refused():
    cfg = fk.load_config(None, ["train.precision=32"])
    assert cfg.train.precision == "32"
    with pytest.raises(ForgetkitError, match="train.precision must be one of"):
        fk.load_config(None, ["train.precision=fp8"])
    with pytest.raises(ForgetkitError, match="train.batch_size"):
        TrainConfig(batch_size=2, accumulate=4)


def test_shares_cut_every_stream_for_this_rank_and_micro_batch():
    runtime = Runtime(torch.device("cpu"), accumulate=2)
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    parts = runtime.shares({"forget": (x, y), "retain": None})
    assert [p["forget"][1].tolist() for p in parts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert all(p["retain"] is None for p in parts)
    single = Runtime(torch.device("cpu"))
    batch = {"forget": (x, y)}
    assert single.shares(batch)[0] is batch  # one process, no accumulation: the batch itself, untouched
    with pytest.raises(ForgetkitError, match="fewer than train.devices"):
        Runtime(torch.device("cpu"), accumulate=4).shares({"forget": (x[:3], y[:3])})


def test_accumulation_gives_the_gradient_of_the_whole_batch(tiny_model_dir):
    """Two micro-batches of a mean loss, each weighted by half, add up to the whole batch's gradient."""
    from forgetkit.methods import MethodContext, build_method
    from forgetkit.models.formats import load_checkpoint

    grads = []
    for accumulate in (1, 2):
        model, _ = load_checkpoint(tiny_model_dir)
        runtime = Runtime(torch.device("cpu"), accumulate=accumulate)
        method = build_method({"name": "retrain"}, MethodContext(device=torch.device("cpu"), seed=0, num_classes=6,
                                                                 runtime=runtime))
        module = model.train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.0)
        torch.manual_seed(0)
        x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 6
        method.module = module
        def losses_of(part, module=module):
            return {"loss": torch.nn.functional.cross_entropy(module(part["forget"][0]), part["forget"][1])}

        method.update(losses_of, {"forget": (x, y)}, optimizer)
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_give_the_one_process_metrics_and_one_writer(tiny_model_dir, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): every step's batch split over two processes, gradients averaged,
    evaluation gathered. The metrics equal one process's within 5 points (the shares' per-class batch terms differ
    a little), and the folder is written once: one ledger of 2 requests, one loss log, one set of edits."""
    import yaml

    from forgetkit.config import to_dict

    config = tmp_path / "run.yaml"  # the one-process run's config, whole, as a file the command line reads
    config.write_text(yaml.safe_dump(to_dict(fk.load_config(None, tiny_run_overrides(tiny_model_dir,
                                                                                     tmp_path / "two")))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(fk.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "forgetkit", "forget", "-q",
               "-c", str(config), "-o", "train.device=cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[:3000]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = run(tiny_model_dir, tmp_path / "one")
    assert len(two["ledger"]) == 2 and len(two["tasks"]) == 2
    for mine, theirs in zip(two["tasks"], one.requests):
        assert mine["before"]["acc_r"] == theirs.before["acc_r"]  # the same model evaluated: exactly equal
        for key in ("acc_f", "acc_r"):
            assert abs(mine["after"][key] - theirs.after[key]) <= 5, (key, mine["after"][key], theirs.after[key])
    rows = (tmp_path / "two" / "log.csv").read_text().splitlines()
    one_rows = (tmp_path / "one" / "log.csv").read_text().splitlines()
    assert len(rows) == len(one_rows)  # one writer: not two processes' rows
    assert rows[1] != one_rows[1]  # rank 0's loss is over its half of the batch: the steps were split
    assert sorted(p.name for p in (tmp_path / "two" / "model" / "edits").iterdir()) == \
        ["request_000", "request_001"]
    assert not list((tmp_path / "two").glob("**/*.tmp"))


def test_the_uint8_resize_matches_the_float_resize_to_a_grey_level():
    from forgetkit.data.datasets import Preprocess

    torch.manual_seed(0)
    image = (torch.rand(3, 75, 100) * 255).to(torch.uint8)
    preprocess = Preprocess(32, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    resized = preprocess(image)  # uint8: resized before it becomes float
    reference = preprocess(image.float() / 255.0)  # float: the resize of before
    assert resized.shape == reference.shape == (3, 32, 32)
    assert (resized - reference).abs().max() <= 1.0 / 255 + 1e-6


def test_folder_images_decode_to_the_same_pixels_as_before(tmp_path):
    """The numpy decode gives what the PIL-bytearray decode gave (bench/throughput.py keeps that one)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from throughput import legacy_decode, make_jpeg_folder

    from forgetkit.data.datasets import FolderImages

    paths = make_jpeg_folder(tmp_path / "jpegs", 3, size=(40, 30))
    images = FolderImages(paths, [0, 0, 0], ["any"])
    for i, path in enumerate(paths):
        assert torch.equal(images.raw(i), legacy_decode(path))


@pytest.mark.slow
def test_loader_workers_change_no_number(tiny_model_dir, tmp_path):
    """train.workers decodes in other processes; the batches, and so every number, are those of the main process."""
    one = run(tiny_model_dir, tmp_path / "w0", "protocol.num_requests=1")
    two = run(tiny_model_dir, tmp_path / "w2", "protocol.num_requests=1", "train.workers=2")
    assert one.requests[0].fingerprint_after == two.requests[0].fingerprint_after
    assert one.requests[0].after == two.requests[0].after
