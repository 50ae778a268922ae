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
    done = torchrun_forget(_config_file(tiny_model_dir, tmp_path / "two"))
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


def _config_file(model_dir, out: Path) -> Path:
    """The one-process run's config, whole, as a file the command line reads."""
    import yaml

    from forgetkit.config import to_dict

    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(to_dict(fk.load_config(None, tiny_run_overrides(model_dir, out)))))
    return config


def torchrun_forget(config: Path, *flags: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m forgetkit forget -c CONFIG`` on the CPU (gloo); ``crash_at`` kills every
    process at that point (runstate.crash_point)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(fk.__file__).parents[1])}
    env.pop("FORGETKIT_CRASH_AT", None)
    if crash_at:
        env["FORGETKIT_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "forgetkit", "forget", "-q",
               "-c", str(config), "-o", "train.device=cpu", *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_resume_under_two_processes_gives_the_uninterrupted_runs_results(tiny_model_dir, tmp_path):
    """Both processes killed in the middle of request 2, then ``--resume`` under torchrun again: the results equal
    the uninterrupted two-process run's, number for number (timings aside), with one ledger of 2 requests."""
    whole = torchrun_forget(_config_file(tiny_model_dir, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[:3000]
    config = _config_file(tiny_model_dir, tmp_path / "killed")
    assert torchrun_forget(config, crash_at="request_1_step_20").returncode != 0
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = torchrun_forget(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[:3000]
    ran, wanted = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("killed", "whole"))
    assert len(ran["ledger"]) == 2
    for mine, theirs in zip(ran["tasks"], wanted["tasks"], strict=True):
        for key in ("before", "after", "fingerprint_before", "fingerprint_after", "per_class"):
            assert mine[key] == theirs[key], key


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


def test_simplejpeg_and_pil_decode_the_same_pixels(tmp_path, monkeypatch):
    """Colour (4:2:0 and 4:4:4), progressive and grey JPEGs: simplejpeg's pixels are PIL's; a CMYK JPEG and a PNG go
    to PIL; a grey model reads PIL's grey conversion."""
    pytest.importorskip("simplejpeg")
    import numpy as np
    from PIL import Image

    from forgetkit.data import datasets
    from forgetkit.data.datasets import FolderImages, Preprocess

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    files = {"420.jpg": dict(quality=90), "444.jpg": dict(quality=95, subsampling=0),
             "progressive.jpg": dict(progressive=True), "grey.jpg": dict(mode="L"), "cmyk.jpg": dict(mode="CMYK"),
             "photo.png": dict()}
    paths = []
    for name, options in files.items():
        image = Image.fromarray(pixels).convert(options.pop("mode", "RGB"))
        image.save(tmp_path / name, **options)
        paths.append(str(tmp_path / name))
    fast = FolderImages(paths, [0] * len(paths), ["any"])
    decoded = [fast.raw(i) for i in range(len(paths))]
    monkeypatch.setattr(datasets, "_SIMPLEJPEG", None)
    for i, path in enumerate(paths):
        assert torch.equal(decoded[i], fast.raw(i)), path
        assert decoded[i].shape == (3, 30, 44)
    assert datasets.decode_jpeg_rgb((tmp_path / "420.jpg").read_bytes()) is None  # simplejpeg off: PIL decodes
    monkeypatch.undo()
    assert datasets.decode_jpeg_rgb((tmp_path / "cmyk.jpg").read_bytes()) is None
    assert datasets.decode_jpeg_rgb((tmp_path / "photo.png").read_bytes()) is None
    grey = FolderImages(paths[:1], [0], ["any"]).with_preprocess(Preprocess(30, 1))
    assert torch.equal(grey.raw(0)[0], torch.from_numpy(np.array(Image.open(paths[0]).convert("L"))))


@pytest.mark.parametrize("shape,in_chans", [((1, 28, 28), 1), ((3, 30, 44), 3), ((1, 20, 20), 3), ((3, 20, 20), 1)])
def test_uint8_batches_normalised_on_the_device_equal_the_per_image_preprocess(shape, in_chans):
    """Loaders batch uint8 pixels and normalise the batch (runtime.DeviceBatches): the very numbers of normalising
    one image at a time, for a resize, a grey to RGB repeat and the RGB to grey conversion (which stays float)."""
    from forgetkit.data.datasets import Preprocess, TensorImages
    from forgetkit.runtime import inference_loader

    torch.manual_seed(0)
    images = TensorImages((torch.rand(10, *shape) * 255).to(torch.uint8), torch.arange(10) % 2, ["a", "b"])
    images.with_preprocess(Preprocess(24, in_chans, (0.4,) * in_chans, (0.3,) * in_chans))
    one_by_one = torch.stack([images[i][0] for i in range(10)])
    batched = torch.cat([x for x, _ in inference_loader(images.subset(torch.arange(10)), 4)])
    assert one_by_one.dtype == batched.dtype == torch.float32 and one_by_one.shape == (10, in_chans, 24, 24)
    assert torch.equal(one_by_one, batched)
    deferred = images.item(0, defer=True)[0]
    assert deferred.dtype == (torch.float32 if shape[0] == 3 and in_chans == 1 else torch.uint8)


@pytest.mark.slow
def test_loader_workers_change_no_number(tiny_model_dir, tmp_path):
    """train.workers decodes in other processes; the batches, and so every number, are those of the main process."""
    one = run(tiny_model_dir, tmp_path / "w0", "protocol.num_requests=1")
    two = run(tiny_model_dir, tmp_path / "w2", "protocol.num_requests=1", "train.workers=2")
    assert one.requests[0].fingerprint_after == two.requests[0].fingerprint_after
    assert one.requests[0].after == two.requests[0].after


@pytest.mark.slow
def test_pretraining_on_two_processes_writes_one_checkpoint_as_good_as_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m forgetkit pretrain``: every batch shared by two gloo processes, the
    gradients averaged, rank 0 writing the one checkpoint; its test accuracy is one process's within 5 points (the
    same batches and the mean gradient; only the rounding differs)."""
    common = ["--data", "synthetic", "--arch", "vit_test", "--epochs", "6", "-o", "warmup_steps=5", "-o", "lr=0.003",
              "-o", "threads=1", "-o", "device=cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(fk.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "forgetkit", "pretrain", *common, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[:3000]
    assert done.stdout.count("test accuracy") == 1  # rank 0 reports, rank 1 is quiet
    one = subprocess.run([sys.executable, "-m", "forgetkit", "pretrain", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[:3000]
    two_acc, one_acc = (json.loads((tmp_path / name / "manifest.json").read_text())["pretrain"]["test_accuracy"]
                        for name in ("two", "one"))
    assert one_acc > 40 and abs(two_acc - one_acc) <= 5, (two_acc, one_acc)
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith("."))


def test_pretraining_runs_its_steps_in_bf16_on_the_cpu(tmp_path, monkeypatch):
    """precision=bf16-mixed reaches pre-training's forward (Fabric's autocast), as it does a request's."""
    from forgetkit.data.config import DataConfig
    from forgetkit.engine.config import PretrainConfig
    from forgetkit.pretraining import pretrain

    seen = set()
    original = torch.nn.Linear.forward

    def forward(self, x):  # every linear layer of the training steps
        out = original(self, x)
        if torch.is_grad_enabled():
            seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", forward)
    cfg = PretrainConfig(data=DataConfig(source="synthetic", num_classes=3, image_size=16, train_per_class=20,
                                         test_per_class=4), arch="vit_test", epochs=1, batch_size=20,
                         precision="bf16-mixed", threads=1, out=str(tmp_path / "m"))
    pretrain(cfg, progress=False)
    assert seen == {torch.bfloat16}
    assert (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.slow
def test_verify_under_two_processes_gives_the_one_process_checks_and_writes_once(tiny_model_dir, tmp_path):
    """``torchrun --nproc_per_node=2 -m forgetkit verify``: every process computes the checks from the same seed,
    rank 0 writes verify.json once, and its numbers are one process's."""
    from forgetkit.cli import main

    fast = ["images_per_class=15", "probe_per_class=15", "relearn_shots=[1]", "relearn_max_steps=10", "folds=3",
            "rebound_steps=5", "rebound_per_class=5"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(tmp_path / "m"),
                 "-q", "--allow-fail", "-o", "train.steps=16", "-o", "train.threads=1"]) == 0
    flags = ["--model", str(tmp_path / "m"), "--threads", "1", *[a for o in fast for a in ("-o", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(fk.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "forgetkit", "verify", *flags, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 3), done.stderr[:3000]  # 3: the verdict failed, loudly, as in one process
    assert done.stdout.count("| pretrained |") == 1  # rank 0 prints, rank 1 is quiet
    one = main(["verify", *flags, "--out", str(tmp_path / "one")])
    two, single = (json.loads((tmp_path / name / "verify.json").read_text()) for name in ("two", "one"))
    assert done.returncode == one
    for row in ("model", "pretrained"):
        two[row].pop("seconds"), single[row].pop("seconds")
    assert two == single


def test_cpu_memory_keep_asks_glibc_to_keep_freed_memory_and_a_wrong_choice_is_refused():
    import platform

    from forgetkit.runtime import keep_freed_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True and keep_freed_memory() is True  # once per process, then a no-op
    with pytest.raises(ForgetkitError, match="keep, release"):
        fk.load_config(None, ["train.cpu_memory=hold"])
