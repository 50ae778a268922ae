"""Verification (issue 14): each check on cases whose answer is known, determinism, and the command and run option."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import forgetkit as fk
from forgetkit.cli import main
from forgetkit.verify import Verifier, VerifyConfig, align_head, confidence_features, linear_cka, loss_attack_auc

FAST = VerifyConfig(images_per_class=20, probe_per_class=20, relearn_shots=[1], relearn_max_steps=20, folds=3)


@pytest.fixture
def tiny(tiny_model_dir):
    model, manifest = fk.load_model(tiny_model_dir)
    data = fk.load_data(fk.DataConfig(source="synthetic")).with_preprocess(model.spec.preprocess)
    return model.eval(), data


def test_a_model_that_memorised_its_training_images_is_caught_by_the_loss_attack(tiny):
    model, data = tiny
    gen = torch.Generator().manual_seed(0)
    x = torch.stack([data.train[i][0] for i in range(60)])
    members, others = x[:30], x[30:]
    labels = torch.randint(0, 6, (60,), generator=gen)  # random labels: only memorising fits them
    net = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(net(members), labels[:30]).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        member_loss = F.cross_entropy(net(members), labels[:30], reduction="none").numpy()
        other_loss = F.cross_entropy(net(others), labels[30:], reduction="none").numpy()
    assert loss_attack_auc(member_loss, other_loss, folds=3, seed=0) > 0.9
    same = np.random.default_rng(0).normal(size=400)   # two samples of one distribution: chance
    assert abs(loss_attack_auc(same[:200], same[200:], folds=5, seed=0) - 0.5) < 0.1


def test_an_untouched_model_s_features_separate_the_classes_and_match_themselves(tiny):
    model, data = tiny
    result = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model)(model, [0, 1], [2, 3, 4, 5])
    row = result["model"]
    # far above chance (a 6-way probe: 17 %), and near the model's own head on those classes
    assert row["probe_forgotten"] >= 50 and row["knn_forgotten"] >= 50 and row["acc_forgotten"] >= 50
    assert row["cka_to_pretrained"] == pytest.approx(1.0)
    assert result["pretrained"]["relearn_steps"] == {"1": 0}    # it never forgot: nothing to relearn
    assert 0.0 <= row["mia_confidence_efficacy"] <= 1.0


class NoiseFeatures(torch.nn.Module):
    """A model whose features are noise: nothing about the classes survives."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.spec, self.head = model, model.spec, model.head
        self.gen = torch.Generator().manual_seed(1)

    def embed(self, x):
        return torch.randn(len(x), self.spec.embed_dim, generator=self.gen)

    def forward(self, x, labels=None):
        return self.head(self.embed(x))


def test_noise_features_give_chance_everywhere(tiny):
    model, data = tiny
    result = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model)(NoiseFeatures(model), [0, 1],
                                                                                 [2, 3, 4, 5])
    row = result["model"]
    assert row["probe_forgotten"] <= 45 and row["knn_forgotten"] <= 45     # 6-way: chance is 17 %
    assert abs(row["mia_loss_auc"] - 0.5) < 0.2 and row["cka_to_pretrained"] < 0.3


def test_verification_is_deterministic_under_a_seed_and_cka_is_invariant_to_rotation(tiny):
    model, data = tiny
    run = [Verifier(FAST, data.train, data.test, 3, torch.device("cpu"), model)(model, [2], [0, 1, 3, 4, 5])
           for _ in range(2)]
    for result in run:  # everything but the wall time
        assert all(row.pop("seconds") >= 0 for row in (result["model"], result["pretrained"]))
    assert run[0] == run[1]
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))[0]
    assert linear_cka(x, 3 * x @ rotation) == pytest.approx(1.0, abs=1e-6)


def test_the_early_stopping_accuracy_check_gives_the_full_pass_answer():
    from forgetkit.verify import reaches

    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(5, 4)
    x, y = torch.randn(300, 5, generator=gen), torch.randint(0, 4, (300,), generator=gen)
    with torch.no_grad():
        accuracy = 100.0 * float((net(x).argmax(1) == y).sum()) / len(y)
    for target in (0.0, accuracy - 0.5, accuracy, accuracy + 0.5, 50.0, 100.0):
        assert reaches(net, x, y, target, batch_size=32) == (accuracy >= target), target


def test_a_second_verifier_reuses_the_pre_trained_row_and_relearns_only_the_model(tiny, monkeypatch):
    import forgetkit.verify as verify

    model, data = tiny
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.head.fc.weight.mul_(0.5)
    monkeypatch.setattr(verify, "_CONTEXT_ROWS", {})          # whatever earlier tests computed
    calls = []
    relearn = verify.relearn_steps
    monkeypatch.setattr(verify, "relearn_steps", lambda net, *a: calls.append(net) or relearn(net, *a))
    cfg = VerifyConfig(images_per_class=10, probe_per_class=10, relearn_shots=[1], relearn_max_steps=5, folds=2)
    first = Verifier(cfg, data.train, data.test, 5, torch.device("cpu"), model)(edited, [1], [0, 2, 3, 4, 5])
    assert len(calls) == 2                                   # the model's and the pre-trained model's
    second = Verifier(cfg, data.train, data.test, 5, torch.device("cpu"), copy.deepcopy(model))(
        copy.deepcopy(edited), [1], [0, 2, 3, 4, 5])
    assert len(calls) == 3 and calls[-1] is not model        # only the model row ran again
    for result in (first, second):
        for row in ("model", "pretrained"):
            result[row].pop("seconds")
    assert first == second
    Verifier(cfg, data.train, data.test, 6, torch.device("cpu"), model)(edited, [1], [0, 2, 3, 4, 5])
    assert len(calls) == 5                                   # another seed draws other images: computed anew


def test_a_reference_head_covers_the_run_s_classes_with_zero_rows_for_the_missing(tiny):
    model, _ = tiny
    reference = copy.deepcopy(model)
    reference.head.fc = torch.nn.Linear(model.spec.embed_dim, 2)
    aligned = align_head(reference, ["class_4", "class_1"], [f"class_{i}" for i in range(6)])
    assert aligned.head.fc.weight.shape[0] == 6
    assert torch.equal(aligned.head.fc.weight[4], reference.head.fc.weight[0])
    assert torch.equal(aligned.head.fc.weight[1], reference.head.fc.weight[1])
    assert aligned.head.fc.weight[[0, 2, 3, 5]].abs().sum() == 0
    with pytest.raises(fk.ForgetkitError, match="knows 'bee'"):
        align_head(reference, ["bee", "class_1"], [f"class_{i}" for i in range(6)])


def test_verify_command_and_run_option_on_a_forgotten_checkpoint(tiny_model_dir, tmp_path, capsys):
    run = ["-q", "--allow-fail", "-o", "train.steps=16", "-o", "train.threads=1", "-o", "eval.verify.enabled=true",
           "-o", "eval.verify.images_per_class=15", "-o", "eval.verify.probe_per_class=15",
           "-o", "eval.verify.relearn_shots=[1]", "-o", "eval.verify.relearn_max_steps=10", "-o", "eval.verify.folds=3"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(tmp_path / "m"),
                 *run]) == 0
    task = json.loads((tmp_path / "m" / "results.json").read_text())["tasks"][0]
    assert set(task["verify"]) >= {"model", "pretrained", "relearn_target"}
    assert "Verification after request 1" in (tmp_path / "m" / "report.md").read_text()
    capsys.readouterr()
    assert main(["verify", "--model", str(tmp_path / "m"), "--reference", str(tiny_model_dir), "--out",
                 str(tmp_path / "v"), "--threads", "1", "-o", "images_per_class=15", "-o", "probe_per_class=15",
                 "-o", "relearn_shots=[1]", "-o", "relearn_max_steps=10", "-o", "folds=3"]) == 0
    saved = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert saved["classes"] == ["class_0"] and {"model", "pretrained", "reference"} <= set(saved)
    assert (tmp_path / "v" / "verify.png").is_file() and "| reference |" in capsys.readouterr().out
    # a model whose ledger forgot nothing: one line, exit 2
    assert main(["verify", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")]) == 2
    assert "forgotten no class" in capsys.readouterr().err


def test_bench_puts_every_method_s_checks_beside_the_pretrained_and_reference_rows(tiny):
    from forgetkit.bench import verification_section

    model, data = tiny
    verify = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model, reference=model)(
        NoiseFeatures(model), [0], [1, 2, 3, 4, 5])
    lines = verification_section({"gs_lora": {"tasks": [{"verify": verify}]},
                                  "l2": {"tasks": [{}, {"verify": verify}]}})
    names = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert names == ["gs_lora", "l2", "pretrained", "reference"]
    assert verification_section({"gs_lora": {"tasks": [{}]}}) == []


def test_confidence_features_stay_finite_on_saturated_outputs():
    out = {"logits": torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0]]), "labels": torch.tensor([1, 2])}
    assert np.isfinite(confidence_features(out)).all()
