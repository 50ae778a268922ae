"""Verification: each check on cases whose answer is known, determinism, and the command and run option."""

import copy
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import bench_module, make_image_folder

import forgetkit as fk
from forgetkit.cli import main
from forgetkit.requests import RunRecord
from forgetkit.verification import (
    RELEARN_FLOOR,
    Verifier,
    VerifyConfig,
    align_head,
    cka_null,
    confidence_features,
    linear_cka,
    loss_attack_accuracy,
    loss_attack_auc,
    macro_f1,
    steps_to,
)

FAST = VerifyConfig(images_per_class=20, probe_per_class=20, relearn_shots=[1], relearn_max_steps=20, folds=3,
                    rebound_steps=10, rebound_per_class=10)


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
    assert loss_attack_accuracy(member_loss, other_loss, seed=0) > 0.8     # the kit's form: accuracy over splits
    same = np.random.default_rng(0).normal(size=400)   # two samples of one distribution: chance
    assert abs(loss_attack_auc(same[:200], same[200:], folds=5, seed=0) - 0.5) < 0.1
    assert abs(loss_attack_accuracy(same[:200], same[200:], seed=0) - 0.5) < 0.12


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
    assert row["prototype_forgotten"] <= 45
    assert abs(row["loss_attack_auc"] - 0.5) < 0.2 and row["cka_to_pretrained"] < 0.3


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


class Constant(torch.nn.Module):
    """A head that calls every image class ``c``."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        self.c, self.classes = c, classes

    def forward(self, x, labels=None):
        return F.one_hot(torch.full((len(x),), self.c), self.classes).float()


def test_a_head_biased_to_one_forgotten_class_does_not_count_as_relearnt():
    y = torch.tensor([0] * 20 + [1] * 20 + [2] * 40 + [3] * 40)   # forgotten 0 and 1; retained 2 and 3
    x = torch.zeros(len(y), 1)
    # top-1 accuracy on the forgotten images reads 50 %: half the pre-trained model's 100 %, the old bar
    assert float((Constant(0, 4)(x).argmax(1)[:40] == y[:40]).float().mean()) == 0.5
    # per class it is one class at low precision and one at zero: far below half of a perfect model's F1
    perfect = type("Perfect", (torch.nn.Module,), {"forward": lambda self, x: F.one_hot(y, 4).float()})()
    assert macro_f1(perfect, x, y, [0, 1]) == pytest.approx(100.0)
    assert macro_f1(Constant(0, 4), x, y, [0, 1]) < 0.5 * 100.0 / 2


def test_a_reference_that_relearns_nothing_within_the_cap_does_not_make_step_0_count_as_relearnt(tiny):
    model, data = tiny
    verifier = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model)
    flat = [[0, 0.0], [10, 0.0], [20, 0.0]]       # the reference's macro-F1 stays 0 up to the cap
    target = verifier._relearn_target({"reference": {"relearn_curve": {"1": flat}}})["1"]
    assert target == RELEARN_FLOOR > 0
    assert steps_to(flat, target) is None                       # the reference: beyond the cap
    assert steps_to([[0, 0.0]], target) is None                 # a model still at 0 has not relearnt at step 0
    assert steps_to([[0, 0.0], [10, 6.0]], target) == 10        # one that rises has, faster than the reference
    rising = [[0, 0.0], [10, 20.0], [20, 60.0]]
    assert verifier._relearn_target({"reference": {"relearn_curve": {"1": rising}}})["1"] == 30.0


def test_cka_s_null_is_far_from_zero_at_small_samples_and_shrinks_with_more():
    small, large = cka_null(40, 64, 64, seed=0), cka_null(1000, 64, 64, seed=0)
    assert small > 0.4 and large < 0.15 and small > 2 * large


def test_a_head_only_edit_keeps_probe_k_nn_and_prototype_attack_high_and_is_judged_so(tiny):
    from forgetkit.requests import deep_failures

    model, data = tiny
    edited = copy.deepcopy(model)
    with torch.no_grad():   # the forgotten classes' head rows silenced: the head forgets, the features do not
        edited.head.fc.weight[[0, 1]] = 0.0
        edited.head.fc.bias[[0, 1]] = -100.0
    result = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model,
                      reference=NoiseFeatures(model))(edited, [0, 1], [2, 3, 4, 5])
    row, pre = result["model"], result["pretrained"]
    assert row["acc_forgotten"] == 0.0
    for key in ("probe_forgotten", "knn_forgotten", "prototype_forgotten"):
        assert row[key] >= 50 and abs(row[key] - pre[key]) < 1e-6, key    # the features are the pre-trained ones
        assert result["reference"][key] <= 45, key                         # noise features: chance
    failed = deep_failures(result, FAST)
    assert any("linear probe" in line for line in failed) and any("prototype" in line for line in failed)
    # against itself as the reference, the same model passes the feature checks
    assert not [line for line in deep_failures({"model": row, "reference": row}, FAST) if "relearn" not in line]


def test_the_reference_free_check_judges_the_retain_only_rebound():
    from forgetkit.requests import deep_failures

    row = {"retain_rebound": {"rebound": 12.0}}
    assert "back by 12.0 points" in deep_failures({"model": row}, FAST)[0]
    row["retain_rebound"]["rebound"] = 1.0
    assert deep_failures({"model": row}, FAST) == []


def renamed(images, classes, names, preprocess):
    """The images of ``classes`` (of an in-memory dataset) under other class names: classes a model has no name
    for."""
    from forgetkit.data.datasets import TensorImages

    idx = images.indices_of(classes)
    return TensorImages(images.images[idx], images.targets[idx], names).with_preprocess(preprocess)


def test_never_seen_classes_that_are_the_forgotten_ones_read_as_the_forgotten_ones(tiny):
    # The stand-ins are the forgotten classes' own images under new names (other draws): the check then measures
    # the same task twice, so the forgotten classes read at the never-seen level and the request passes.
    from forgetkit.requests import deep_failures

    model, data = tiny
    novel = tuple(renamed(part, [0, 1], ["novel_a", "novel_b"], model.spec.preprocess)
                  for part in (data.train, data.test))
    for part in novel:   # labels 0 and 1 of the new list, not the model's
        assert part.classes == ["novel_a", "novel_b"]
    result = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model, novel=novel)(model, [0, 1],
                                                                                               [2, 3, 4, 5])
    row = result["model"]
    for key in ("probe", "knn", "prototype"):
        assert row[f"{key}_forgotten"] >= 50 and abs(row[f"{key}_forgotten"] - row[f"{key}_novel"]) <= 10, key
    assert not [line for line in deep_failures(result, FAST) if "never saw" in line]


def test_a_head_only_edit_is_caught_without_a_reference_by_never_seen_classes(tiny):
    # Never-seen classes whose images carry no class at all (labels drawn at random): the features give chance on
    # them, while a head-only edit still separates the forgotten classes, so the reference-free verdict fails it.
    from forgetkit.data.datasets import TensorImages
    from forgetkit.requests import deep_failures

    model, data = tiny
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.head.fc.bias[[0, 1]] = -100.0
    gen = torch.Generator().manual_seed(0)
    novel = tuple(TensorImages(torch.randint(0, 256, (n, 1, 16, 16), generator=gen, dtype=torch.uint8),
                               torch.arange(n) % 2, ["noise_a", "noise_b"]).with_preprocess(model.spec.preprocess)
                  for n in (60, 60))
    result = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model, novel=novel)(edited, [0, 1],
                                                                                               [2, 3, 4, 5])
    row = result["model"]
    assert row["acc_forgotten"] == 0.0 and row["probe_forgotten"] >= 50
    assert row["probe_novel"] <= 40 and row["prototype_novel"] <= 40     # 6-way: chance is 17 %
    failed = deep_failures(result, FAST)
    assert any("linear probe" in line and "never saw" in line for line in failed)
    assert not [line for line in deep_failures(result, VerifyConfig(novel_tolerance=None)) if "never saw" in line]


def test_never_seen_classes_must_be_classes_the_model_does_not_know(tiny):
    from forgetkit.verification import novel_images

    model, data = tiny
    cfg = VerifyConfig(novel=fk.DataConfig(source="synthetic"))    # the tiny model's own classes
    with pytest.raises(fk.ForgetkitError, match="holds the model's class 'class_0'.*never trained on"):
        novel_images(cfg, data.classes, model.spec.preprocess)
    with pytest.raises(fk.ForgetkitError, match="eval.verify.novel: unknown data source 'glyph_novel'.*glyphs_novel"):
        VerifyConfig(novel=fk.DataConfig(source="glyph_novel"))
    with pytest.raises(fk.ForgetkitError, match="eval.verify.novel_flip.*diagonal"):
        VerifyConfig(novel_flip="diagonal")


@pytest.mark.parametrize("way, dim", [("horizontal", -1), ("vertical", -2)])
def test_flipped_images_of_the_model_s_own_classes_stand_for_never_seen_ones(tiny, image_folder, way, dim):
    from forgetkit.verification import novel_images

    model, data = tiny
    cfg = VerifyConfig(novel=fk.DataConfig(source="synthetic", classes=["class_1", "class_3"]), novel_flip=way)
    train, test = novel_images(cfg, data.classes, model.spec.preprocess)
    assert train.classes == [f"class_1 flipped {way}", f"class_3 flipped {way}"] and test.classes == train.classes
    original = fk.load_data(cfg.novel).train.with_preprocess(model.spec.preprocess)
    image, label = train[5]
    assert label == original[5][1] and torch.equal(image, original[5][0].flip(dim))
    assert not torch.equal(image, original[5][0])
    # a folder decodes to the model's channels before the flip
    folder = VerifyConfig(novel=fk.DataConfig(source="image_folder", root=str(image_folder)), novel_flip=way)
    flipped, _ = novel_images(folder, data.classes, model.spec.preprocess)
    assert flipped[0][0].shape == original[0][0].shape and flipped.classes[0] == f"cat flipped {way}"


def test_non_members_are_images_the_pre_trained_model_never_saw(tiny):
    from forgetkit.data.datasets import held_out_mask
    from forgetkit.verification import membership_images

    _, data = tiny
    members, nonmembers = membership_images(data.train, data.test, "test", 5, 0)
    assert len(members) == len(data.train) - 5 * 6 and nonmembers is data.test
    members, val = membership_images(data.train, data.test, "val", 5, 5)
    held = set(torch.nonzero(held_out_mask(data.train, 5)).flatten().tolist())
    assert len(val) == 30 and not held & set(members.indices.tolist())
    with pytest.raises(fk.ForgetkitError, match="pre-trained on this run's validation images"):
        membership_images(data.train, data.test, "val", 0, 5)    # it trained on them: they are not non-members
    with pytest.raises(fk.ForgetkitError, match="reference was pre-trained"):
        membership_images(data.train, data.test, "val", 5, 5, reference_held_per_class=2)


def test_a_reference_holds_out_the_images_the_full_model_holds_out(tiny):
    from forgetkit.data.datasets import held_out_mask

    _, data = tiny
    some = data.select(["class_4", "class_1"])
    full = torch.nonzero(held_out_mask(data.train, 5)).flatten()
    chosen = torch.nonzero(held_out_mask(some.train, 5)).flatten()
    picked = set(some.train.indices[chosen].tolist())
    assert picked == {int(i) for i in full if int(data.train.targets[i]) in (4, 1)}


def test_a_second_verifier_with_the_same_memo_reuses_the_pre_trained_row(tiny, monkeypatch):
    import forgetkit.verification as verify

    model, data = tiny
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.head.fc.weight.mul_(0.5)
    memo: dict = {}                                          # what a bench holds for its runs
    calls = []
    relearn = verify.relearn_curve
    monkeypatch.setattr(verify, "relearn_curve", lambda net, *a, **k: calls.append(net) or relearn(net, *a, **k))
    cfg = VerifyConfig(images_per_class=10, probe_per_class=10, relearn_shots=[1], relearn_max_steps=5, folds=2,
                       rebound_steps=3, rebound_per_class=5, knn_k=5)
    first = Verifier(cfg, data.train, data.test, 5, torch.device("cpu"), model, memo=memo)(edited, [1], [0, 2, 3, 4, 5])
    assert len(calls) == 2                                   # the model's and the pre-trained model's
    second = Verifier(cfg, data.train, data.test, 5, torch.device("cpu"), copy.deepcopy(model), memo=memo)(
        copy.deepcopy(edited), [1], [0, 2, 3, 4, 5])
    assert len(calls) == 3 and calls[-1] is not model        # only the model row ran again
    for result in (first, second):
        for row in ("model", "pretrained"):
            result[row].pop("seconds")
    assert first == second
    Verifier(cfg, data.train, data.test, 6, torch.device("cpu"), model, memo=memo)(edited, [1], [0, 2, 3, 4, 5])
    assert len(calls) == 5                                   # another seed draws other images: computed anew
    Verifier(cfg, data.train, data.test, 5, torch.device("cpu"), model)(edited, [1], [0, 2, 3, 4, 5])
    assert len(calls) == 7                                   # no memo shared: nothing is reused


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
    fast = ["images_per_class=15", "probe_per_class=15", "relearn_shots=[1]", "relearn_max_steps=10", "folds=3",
            "rebound_steps=5", "rebound_per_class=5"]
    novel = make_image_folder(tmp_path / "novel", classes=("owl", "yak"))
    run = ["-q", "--allow-fail", "-o", "train.steps=16", "-o", "train.threads=1", "-o", "eval.verify.enabled=true",
           *[a for o in fast for a in ("-o", f"eval.verify.{o}")]]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(tmp_path / "m"),
                 *run]) == 0
    request = RunRecord.read(tmp_path / "m").requests[0]
    assert set(request.verify) >= {"model", "pretrained", "relearn_target"}
    assert "probe_novel" not in request.verify["model"]
    assert "Verification after request 1" in (tmp_path / "m" / "report.md").read_text()
    # the in-run check with never-seen classes: their columns in the record and the report, judged without a
    # reference, and the deep bench table (bench/compare_datasets.py) shows the gap that the verdict judged
    novel_run = ["-o", "eval.verify.novel.source=image_folder", "-o", f"eval.verify.novel.root={novel}",
                 "-o", "eval.verify.novel_draws=2", "-o", "eval.verify.novel_tolerance=0"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(tmp_path / "mn"),
                 *run, *novel_run]) == 0
    record = RunRecord.read(tmp_path / "mn")
    checked = record.requests[0].verify["model"]
    gap = max(checked[f"{k}_forgotten"] - checked[f"{k}_novel"] for k in ("probe", "knn", "prototype"))
    assert (gap > 0) == any("never saw" in line for line in record.requests[0].verdict["deep_failed"])
    assert "never-seen classes" in (tmp_path / "mn" / "report.md").read_text()
    deep = bench_module("compare_datasets")
    (tmp_path / "deep" / "tiny" / "seed0" / "gs_lora").mkdir(parents=True)
    shutil.copy(tmp_path / "mn" / "results.json", tmp_path / "deep" / "tiny" / "seed0" / "gs_lora")
    table = deep.deep_report(tmp_path / "deep", ["tiny"], ["0"], None)
    header = next(line for line in table if "gap to never-seen" in line)
    row = table[table.index(header) + 2]
    assert row.split("|")[-3].strip() == f"{gap:.1f}" and row.split("|")[-2].strip() == f"{int(gap <= 21)}/1"
    capsys.readouterr()
    # the pre-trained model as the "reference" knows the forgotten class: refused in one line
    assert main(["verify", "--model", str(tmp_path / "m"), "--reference", str(tiny_model_dir), "--out",
                 str(tmp_path / "v"), "--threads", "1", *[a for o in fast for a in ("-o", o)]]) == 2
    assert "knows the forgotten class" in capsys.readouterr().err
    code = main(["verify", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "v"), "--threads", "1",
                 *[a for o in fast for a in ("-o", o)]])
    saved = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert saved["classes"] == ["class_0"] and {"model", "pretrained", "verdict"} <= set(saved)
    assert code == (0 if saved["verdict"]["pass"] else 3) and saved["verdict"]["reference"] is False
    assert (tmp_path / "v" / "verify.png").is_file() and "| pretrained |" in capsys.readouterr().out
    # never-seen classes from a folder: their checks in every row, and judged (no reference)
    code = main(["verify", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "vn"), "--threads", "1",
                 "-o", "novel.source=image_folder", "-o", f"novel.root={novel}", *[a for o in fast for a in ("-o", o)]])
    saved_novel = json.loads((tmp_path / "vn" / "verify.json").read_text())
    assert {"probe_novel", "knn_novel", "prototype_novel"} <= set(saved_novel["model"]) & set(saved_novel["pretrained"])
    assert code == (0 if saved_novel["verdict"]["pass"] else 3)
    out = capsys.readouterr().out
    assert "never-seen classes" in out and "the probes against classes the model never saw" in out
    # a model whose ledger forgot nothing: one line, exit 2
    assert main(["verify", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")]) == 2
    assert "forgotten no class" in capsys.readouterr().err
    # the Python API: the same checks and verdict, returned (a failed verdict raises nothing)
    again = fk.verify(str(tmp_path / "m"), out=str(tmp_path / "api"), overrides=fast)
    for row in ("model", "pretrained"):
        again[row].pop("seconds"), saved[row].pop("seconds")
    assert again == saved
    with pytest.raises(fk.ForgetkitError, match="already holds a verification.*--overwrite"):
        fk.verify(str(tmp_path / "m"), out=str(tmp_path / "api"), overrides=fast)
    restored = fk.restore(str(tmp_path / "m"), [["class_0"]], output_dir=str(tmp_path / "r"), progress=False,
                          overrides=["train.threads=1"])
    assert restored.kind == "restore" and restored.requests[0].passed


def test_bench_puts_every_method_s_checks_beside_the_pretrained_and_reference_rows(tiny):
    from forgetkit.requests.forget import verification_section

    model, data = tiny
    verify = Verifier(FAST, data.train, data.test, 0, torch.device("cpu"), model, reference=model)(
        NoiseFeatures(model), [0], [1, 2, 3, 4, 5])
    def run(*verified):    # what verification_section reads of a RunRecord: each request's verify
        return SimpleNamespace(requests=[SimpleNamespace(verify=v) for v in verified])

    lines = verification_section({"gs_lora": run(verify), "l2": run(None, verify)})
    names = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert names == ["gs_lora", "l2", "pretrained", "reference"]
    assert verification_section({"gs_lora": run(None)}) == []


def test_confidence_features_stay_finite_on_saturated_outputs():
    out = {"logits": torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0]]), "labels": torch.tensor([1, 2])}
    assert np.isfinite(confidence_features(out)).all()


def test_each_request_is_checked_against_the_reference_trained_on_what_it_retains():
    def ref(classes):
        r = torch.nn.Identity()
        r.reference_classes = set(classes)
        return r

    first, last = ref([2, 3, 4, 5]), ref([4, 5])
    listed = Verifier(FAST, None, None, 0, None, None, references=[first, last], exact=True)
    assert listed.reference_for([0, 1], [2, 3, 4, 5]) is first
    assert listed.reference_for([0, 1, 2, 3], [4, 5]) is last
    assert listed.reference_for([0], [1, 2, 3, 4, 5]) is None         # none trained on exactly these: no row
    single = Verifier(FAST, None, None, 0, None, None, reference=last)
    assert single.reference_for([0], [1, 2, 3, 4, 5]) is last          # one given: it serves what it fits
    assert single.reference_for([4], [0, 1, 2, 3, 5]) is None          # never one that knows a forgotten class
