"""What only a GPU shows: a request on CUDA, in float32 and bf16, batches normalised on the device, pinned memory
with workers, and two GPUs under torchrun (NCCL). Skipped without CUDA; bench/gpu_check.sh runs them on a GPU."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_run_overrides
from test_scaling import _config_file, _free_port

import forgetkit as fk

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def run(model_dir, out, *extra):
    return fk.run_requests(fk.load_config(None, tiny_run_overrides(model_dir, out) + list(extra)), progress=False)


def test_a_request_on_cuda_forgets_as_on_the_cpu(tiny_model_dir, tmp_path):
    cpu = run(tiny_model_dir, tmp_path / "cpu", "protocol.num_requests=1")
    gpu = run(tiny_model_dir, tmp_path / "gpu", "protocol.num_requests=1", "train.device=cuda")
    assert gpu.requests[0].before == cpu.requests[0].before  # the same model evaluated
    for key in ("acc_f", "acc_r"):  # different kernels, the same forgetting
        assert abs(gpu.requests[0].after[key] - cpu.requests[0].after[key]) <= 5


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda_forgets(tiny_model_dir, tmp_path, precision):
    pytest.importorskip("lightning_fabric")
    result = run(tiny_model_dir, tmp_path / precision, "protocol.num_requests=1", "train.device=cuda",
                 f"train.precision={precision}")
    assert result.requests[0].after["acc_f"] <= 5 and result.requests[0].after["acc_r"] >= 60


def test_uint8_batches_normalised_on_the_gpu_match_the_cpu_and_workers_pin_them():
    from forgetkit.data.datasets import Preprocess, TensorImages
    from forgetkit.runtime import inference_loader, set_loader_options

    images = TensorImages((torch.rand(64, 3, 40, 40) * 255).to(torch.uint8), torch.arange(64) % 4, list("abcd"))
    images.with_preprocess(Preprocess(32, 3, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)))
    on_cpu = torch.cat([x for x, _ in inference_loader(images, 16)])
    set_loader_options(2, True)
    try:
        batches = list(inference_loader(images, 16, "cuda"))
    finally:
        set_loader_options(0, False)
    assert all(x.device.type == "cuda" and x.dtype == torch.float32 for x, _ in batches)
    assert torch.allclose(torch.cat([x for x, _ in batches]).cpu(), on_cpu, atol=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_under_torchrun_give_the_one_gpu_metrics(tiny_model_dir, tmp_path):
    import os
    from pathlib import Path

    config = _config_file(tiny_model_dir, tmp_path / "two")
    env = {**os.environ, "PYTHONPATH": str(Path(fk.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "forgetkit", "forget", "-q", "-c", str(config),
               "-o", "train.device=cuda"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[:3000]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = run(tiny_model_dir, tmp_path / "one", "train.device=cuda")
    for mine, theirs in zip(two["tasks"], one.requests, strict=True):
        for key in ("acc_f", "acc_r"):
            assert abs(mine["after"][key] - theirs.after[key]) <= 5
