"""bench/benchdata.py (the overrides that put a run on a dataset of bench/datasets.yaml) and the quality bar of
bench/gs_lora_quality.py, which bench/select_config.py applies to every run."""

from pathlib import Path

import pytest
import yaml
from conftest import bench_module, tiny_run_overrides

import forgetkit as fk

REPO = Path(__file__).resolve().parent.parent
DATASETS = yaml.safe_load((REPO / "bench" / "datasets.yaml").read_text())


def model_of(overrides: list[str]) -> str:
    return [o.split("=", 1)[1] for o in overrides if o.startswith("model=")][-1]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_validation_runs_score_images_their_checkpoint_never_trained_on(name):
    benchdata = bench_module("benchdata")
    entry = DATASETS[name]
    val, test = benchdata.dataset_overrides(name, "val"), benchdata.dataset_overrides(name, "test")
    held = f"protocol.val_per_class={entry['val_per_class']}"
    assert held in val and held in test     # both hold the images out of every method's training data
    assert "protocol.eval_split=val" in val and "protocol.eval_split=val" not in test
    # the validation model is one pre-trained without the hold-out, made by a command bench/README.md gives
    assert model_of(test) == model_of(entry["overrides"])
    assert model_of(val) == entry.get("val_model", model_of(entry["overrides"]))
    assert not model_of(val).startswith("builtin:"), "a shipped model saw its validation images"
    command = next(line for line in (REPO / "bench" / "README.md").read_text().splitlines()
                   if "forgetkit pretrain" in line and f"--out {model_of(val)}" in line)
    assert f"val_per_class={entry['val_per_class']}" in command


def test_an_unknown_dataset_is_refused_with_the_known_names():
    with pytest.raises(SystemExit, match="unknown dataset 'cifar'.*fashion_mnist"):
        bench_module("benchdata").dataset_overrides("cifar", "val")


def test_the_quality_bar_reads_a_finished_run(tiny_model_dir, tmp_path):
    record = fk.run_requests(fk.load_config("demo", tiny_run_overrides(tiny_model_dir, tmp_path)), progress=False)
    rows = bench_module("gs_lora_quality").check(record, alpha=0.01)
    assert [row["task"] for row in rows] == [fk.report.request_label(t) for t in record.requests]
    for row, request in zip(rows, record.requests):
        assert row["groups_zeroed"] == request.stats["groups_zeroed"]
        assert row["checks"]["a group near zero"] == (request.stats["groups_zeroed"] >= 1)
        assert row["checks"]["acc_f <= 2"] == (request.after["acc_f"] <= 2)
