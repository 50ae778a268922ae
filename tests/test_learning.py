"""Learning new classes (issue 13): LoRA-Sub-DRS's pieces on hand-made cases, and learn requests on the tiny model."""

import copy
import json

import pytest
import torch

import forgetkit as fk
from forgetkit.cli import main
from forgetkit.losses import augmented_triplet_loss
from forgetkit.methods import MethodContext, build_method
from forgetkit.methods.incremental import KVLoRA, attach_kv_lora, merge_kv, stack_factors, with_prototypes
from forgetkit.methods.lora_sub_drs import ProjectedAdam, energy_basis
from forgetkit.models.vit import PrototypeHead
from forgetkit.requests import RunRecord
from forgetkit.runtime import class_means

LEARN = ["-q", "--allow-fail", "-o", "train.steps=12", "-o", "train.batch_size=16", "-o", "train.threads=1"]


def test_energy_rule_keeps_the_fewest_directions_that_reach_epsilon():
    basis = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)))[0]
    covariance = basis @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.6, 0.4])) @ basis.T  # shares .5 .8 .9 .96 1
    for energy, k in ((0.49, 1), (0.51, 2), (0.79, 2), (0.81, 3), (0.95, 4), (0.99, 5)):
        u = energy_basis(covariance, energy)
        assert u.shape == (5, k)
        # it spans the k leading eigenvectors
        assert torch.allclose(u @ u.T @ basis[:, :k], basis[:, :k], atol=1e-5)


def test_projected_adam_keeps_updates_inside_the_space_a_right_b_left():
    gen = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(8, 3, generator=gen))[0]          # a 3-d subspace of R^8
    projection = u @ u.T / 3 ** 0.5
    a, b = torch.nn.Parameter(torch.randn(2, 8, generator=gen)), torch.nn.Parameter(torch.randn(8, 2, generator=gen))
    free = torch.nn.Parameter(torch.randn(4, generator=gen))
    opt = ProjectedAdam([{"params": [a, b, free], "lr": 0.1}], {a: (projection, "right"), b: (projection, "left")})
    before = [p.detach().clone() for p in (a, b, free)]
    for _ in range(3):
        opt.zero_grad()
        ((a @ b).pow(2).sum() + free.sum()).backward()
        opt.step()
    outside = torch.eye(8) - u @ u.T
    da, db, dfree = (p.detach() - q for p, q in zip((a, b, free), before))
    assert da.abs().max() > 1e-3 and db.abs().max() > 1e-3
    assert (da @ outside).abs().max() < 1e-6      # A's update: rows in the space (right-multiplied)
    assert (outside @ db).abs().max() < 1e-6      # B's update: columns in the space (left-multiplied)
    assert dfree.abs().max() > 1e-3               # parameters without a projection move freely


def test_kv_lora_touches_k_and_v_only_and_its_subtracted_pass_uses_the_shift():
    gen = torch.Generator().manual_seed(2)
    qkv = torch.nn.Linear(4, 12)
    layer = KVLoRA(copy.deepcopy(qkv), rank=2, b_init="sparse", generator=gen)
    x = torch.randn(3, 5, 4, generator=gen)
    out, plain = layer(x), qkv(x)
    assert torch.equal(out[..., :4], plain[..., :4])                   # Q untouched
    assert not torch.allclose(out[..., 4:], plain[..., 4:])            # official layout: B·A ≠ 0 at the start
    shift = torch.randn(2, 4, 4, generator=gen)
    layer.shift = shift                                                 # subtracted mode: W + shift, own LoRA off
    shifted = layer(x)
    expected = plain + torch.cat([torch.zeros(3, 5, 4), x @ shift[0].T, x @ shift[1].T], dim=-1)
    assert torch.allclose(shifted, expected, atol=1e-6)
    assert layer.tokens == 15 and torch.allclose(layer.covariance, x.reshape(-1, 4).T @ x.reshape(-1, 4))


def test_the_covariance_pass_runs_on_the_model_with_earlier_updates_subtracted(tiny_model_dir):
    base, _ = fk.load_model(tiny_model_dir)
    ctx = MethodContext(device=torch.device("cpu"), seed=0, num_classes=6)
    earlier = stack_factors(attach_kv_lora(copy.deepcopy(base), 3, "sparse", seed=5, request=0))
    earlier["b_k"], earlier["b_v"] = earlier["b_k"] * 50, earlier["b_v"] * 50   # a large, visible update
    current = merge_kv(base, earlier)                                  # the weights hold W0 + ΔW
    method = build_method({"name": "lora_sub_drs"}, ctx)
    method.device = torch.device("cpu")
    method.layers = attach_kv_lora(current, 4, "sparse", seed=0, request=1)
    images = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    method.drift_resistant_space(current, torch.utils.data.TensorDataset(images, torch.zeros(10)), [earlier])
    # reference: the model with ΔW subtracted from W0 (W0 − ΔW), the new LoRA absent
    reference = merge_kv(base, {**earlier, "b_k": -earlier["b_k"], "b_v": -earlier["b_v"]}).eval()
    seen = {}

    def keep_input(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0]
        return hook

    reference.backbone.blocks[1].attn.qkv.register_forward_hook(keep_input("x"))
    reference.embed(images)
    flat = seen["x"].reshape(-1, seen["x"].shape[-1])
    assert torch.allclose(method.layers[1].covariance, flat.T @ flat, rtol=1e-4, atol=1e-3)
    # and not the current model's (the earlier update kept in the weights)
    kept = merge_kv(base, earlier).eval()
    kept.backbone.blocks[1].attn.qkv.register_forward_hook(keep_input("kept"))
    kept.embed(images)
    flat = seen["kept"].reshape(-1, seen["kept"].shape[-1])
    assert not torch.allclose(method.layers[1].covariance, flat.T @ flat, rtol=1e-2, atol=1e-1)
    assert method.space_dims and all(1 <= k <= base.spec.embed_dim for k in method.space_dims)


def brute_force_atl(f, y, margin, old):
    f = torch.nn.functional.normalize(f, dim=1)
    old = torch.nn.functional.normalize(old, dim=1) if old is not None else None
    total = 0.0
    for i in range(len(f)):
        d = [max(float((f[i] - f[j]).norm()), 1e-6) for j in range(len(f))]
        ap = max(d[j] for j in range(len(f)) if y[j] == y[i])
        negatives = [d[j] for j in range(len(f)) if y[j] != y[i]]
        an = min(negatives) if negatives else ap + margin
        if old is not None:
            an = min(an, min(max(float((f[i] - p).norm()), 1e-6) for p in old))
        total += max(0.0, ap - an + margin)
    return total / len(f)


def test_augmented_triplet_loss_against_hand_values_and_brute_force():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    # i=0: ap √2, an 0 (clamped 1e-6) -> √2 + 1; i=1: ap √2, an √2 -> 1; i=2: ap 0 -> 1e-6, an 0 -> 1
    assert augmented_triplet_loss(f, y, 1.0).item() == pytest.approx((2 ** 0.5 + 1 + 1 + 1) / 3, abs=1e-5)
    same = torch.tensor([0, 0, 0])  # no in-batch negative: e_an = e_ap + m, so the loss is 0 ...
    assert augmented_triplet_loss(f, same, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    old = torch.tensor([[0.0, 3.0]])  # ... unless an old prototype is close: it is the negative
    assert augmented_triplet_loss(f, same, 1.0, old).item() == pytest.approx(
        brute_force_atl(f, same, 1.0, old), abs=1e-5) and augmented_triplet_loss(f, same, 1.0, old).item() > 0
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        f, y, old = torch.randn(12, 5, generator=gen), torch.randint(0, 3, (12,), generator=gen), torch.randn(4, 5)
        assert augmented_triplet_loss(f, y, 0.7, old).item() == pytest.approx(brute_force_atl(f, y, 0.7, old),
                                                                               abs=1e-5)


def test_prototype_head_predicts_the_nearest_class_mean_and_grows(tiny_model_dir):
    head = PrototypeHead(2, 3, scale=16.0)
    head.prototypes.data = torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])
    emb = torch.tensor([[2.0, 0.1], [0.1, 0.2], [-3.0, -2.0]])
    assert head(emb).argmax(1).tolist() == [0, 1, 2]   # cosine: the prototypes' lengths do not matter
    model, _ = fk.load_model(tiny_model_dir)
    data = fk.load_data(fk.DataConfig(source="synthetic")).with_preprocess(model.spec.preprocess)
    means = class_means(model, data.train, [4, 1], torch.device("cpu"))
    assert means.shape == (2, model.spec.embed_dim)
    grown = with_prototypes(copy.deepcopy(model), means)
    assert grown.spec.head == "prototype" and grown.spec.num_classes == 2
    assert grown(data.test[0][0][None]).shape == (1, 2)


def drs_setup(tiny_model_dir):
    """LoRA-Sub-DRS fitted (no steps) on a request that learns classes 4 and 5 of a model that knows 0-3 and forgot
    class 1."""
    from forgetkit.methods import MethodContext, build_method
    from forgetkit.requests import Request, RequestData

    model, _ = fk.load_model(tiny_model_dir)
    train = fk.load_data(fk.DataConfig(source="synthetic")).with_preprocess(model.spec.preprocess).train
    request = Request(0, "learn", [4, 5], [0, 2, 3], [1])
    data = RequestData({"forget": train.subset(train.indices_of([4, 5])),
                        "retain": train.subset(train.indices_of([0, 2, 3]))})
    method = build_method({"name": "lora_sub_drs"}, MethodContext(device=torch.device("cpu"), seed=0, num_classes=6,
                                                                  steps=1))
    method.fit(model, request, data, lambda: None)
    return method, request, data


def test_a_forgotten_class_zero_prototype_never_wins_and_is_no_triplet_negative(tiny_model_dir):
    """After a class is forgotten its prototype row is zero. An image whose cosine to every real prototype is
    negative still goes to a real class; LoRA-Sub-DRS's triplet takes only the retained classes' prototypes."""
    head = PrototypeHead(2, 3, scale=16.0)
    head.prototypes.data = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])   # class 1 forgotten
    emb = torch.tensor([[-1.0, -0.2]])                                           # cos < 0 to classes 0 and 2
    logits = head(emb)
    assert logits.argmax(1).tolist() == [2] and torch.isfinite(logits).all()
    assert logits[0, 1] < logits[0, [0, 2]].min()
    from forgetkit.requests import Request

    method, request, data = drs_setup(tiny_model_dir)
    old = method.old_prototypes
    assert (old[request.old].abs().sum(1) == 0).all()               # the forgotten class's row is zero ...
    assert torch.equal(method.retained_prototypes, old[request.retain])   # ... and not among the negatives
    assert isinstance(request, Request)


def test_learn_forget_learn_on_one_model_keeps_one_ledger(tiny_model_dir, tmp_path, capsys):
    data = ["--data", "synthetic", "-o", "data.num_classes=10"]
    assert main(["learn", "--model", str(tiny_model_dir), "--classes", "class_6,class_7", "--out",
                 str(tmp_path / "l1"), *data, *LEARN]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "l1")
    assert manifest["classes"] == [f"class_{i}" for i in range(8)]       # the six it knew, then the two new ones
    model, _ = fk.load_model(tmp_path / "l1")
    assert model.spec.head == "prototype" and model.head.prototypes.shape[0] == 8
    first = RunRecord.read(tmp_path / "l1").requests[0]
    assert first.details["known_classes"] == [f"class_{i}" for i in range(6)] and first.after["acc_new"] is not None
    assert main(["forget", "--model", str(tmp_path / "l1"), "--classes", "class_6", "--out", str(tmp_path / "f"),
                 "-q", "--allow-fail", "-o", "train.steps=12", "-o", "train.threads=1"]) == 0
    assert main(["learn", "--model", str(tmp_path / "f"), "--classes", "class_8,class_9", "--out",
                 str(tmp_path / "l2"), *LEARN]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "l2")
    assert [(e["kind"], e["method"], e["classes"]) for e in ledger] == [
        ("learn", "lora_sub_drs", ["class_6", "class_7"]), ("forget", "gs_lora", ["class_6"]),
        ("learn", "lora_sub_drs", ["class_8", "class_9"])]
    assert manifest["classes"] == [f"class_{i}" for i in range(10)]
    assert fk.fingerprint(fk.replay_ledger(tmp_path / "l2")) == manifest["fingerprint"]
    last = RunRecord.read(tmp_path / "l2").requests[0]
    assert last.old_classes == ["class_6"] and "class_6" not in last.details["known_classes"]
    assert last.stats["drs_dims"]                               # the second learn request projects its updates
    assert set(last.details["prototype_gap"]) == set(last.details["known_classes"] + last.classes)
    # learning a class the model knows, or one the data lacks: one line, exit 2
    capsys.readouterr()
    for classes, message in (("class_7", "already knows 'class_7'"), ("class_12", "unknown class 'class_12'")):
        assert main(["learn", "--model", str(tmp_path / "l2"), "--classes", classes, "--out", str(tmp_path / "x"),
                     *LEARN]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("method", ["lora_sub_drs", "seq_lora", "ncm", "joint"])
def test_every_learn_method_runs_a_two_task_protocol_from_a_backbone(method, tiny_model_dir, tmp_path):
    """A backbone pre-trained on other classes (the tiny model's six are not in the data): it starts knowing none,
    learns two requests, and the class-incremental summary is complete."""
    out = tmp_path / method
    cfg = fk.load_config("cil", [f"model={tiny_model_dir}", "data.source=image_folder", f"data.root={tmp_path}/d",
                                 "data.classes=null",
                                 f"method={{name: {method}}}", "protocol.classes_per_request=2",
                                 "protocol.num_requests=2",
                                 "train.steps=8", "train.batch_size=8", "train.threads=1", f"output_dir={out}"])
    from conftest import make_image_folder

    make_image_folder(tmp_path / "d", classes=("ant", "bee", "cow", "elk", "owl"), per_class=6, size=(16, 16),
                      mode="L")
    results = fk.run_requests(cfg, progress=False)
    assert [len(t.classes) for t in results.requests] == [2, 2]
    assert results.requests[0].details["known_classes"] == [] and len(results.requests[1].details["known_classes"]) == 2
    s = results.summary
    assert len(s["accuracy_matrix"]) == 2 and s["accuracy_matrix"][0][1] is None
    assert s["last_accuracy"] == results.requests[1].after["acc_seen"] and s["forgetting"] is not None
    assert s["feature_drift"][0] is None and s["feature_drift"][1] is not None
    if method == "ncm":  # frozen features: the known classes' prototypes and embeddings do not move
        assert abs(s["feature_drift"][1]) < 1e-6
    assert (out / "learning.png").is_file() and "Accuracy matrix" in (out / "report.md").read_text()
    model, manifest = fk.load_model(out / "model")
    assert model.spec.num_classes == 4 and len(manifest["classes"]) == 4


def test_the_python_api_learns_like_the_command(tiny_model_dir, tmp_path):
    results = fk.learn(str(tiny_model_dir), [["class_7"], ["class_6"]], method="ncm", output_dir=str(tmp_path / "r"),
                       data={"source": "synthetic", "num_classes": 8}, train={"threads": 1}, progress=False)
    assert [t.classes for t in results.requests] == [["class_7"], ["class_6"]]
    assert fk.read_ledger(tmp_path / "r" / "model")[1]["classes"] == [f"class_{i}" for i in range(6)] + [
        "class_7", "class_6"]                                    # in the order learnt: the model knows a prefix
    assert results.requests[1].trainable_params == 0         # NCM trains nothing


def test_bench_compares_learn_runs_and_runs_variants_under_their_own_names(tiny_model_dir, tmp_path):
    from conftest import make_image_folder

    from forgetkit.bench import BenchSpec, run_bench

    make_image_folder(tmp_path / "d", classes=("ant", "bee", "cow", "elk"), per_class=6, size=(16, 16), mode="L")
    spec = BenchSpec(base="cil", output_dir=str(tmp_path / "b"),
                     overrides=[f"model={tiny_model_dir}", "data.source=image_folder", f"data.root={tmp_path}/d",
                                "data.classes=null", "protocol.classes_per_request=2", "protocol.num_requests=2",
                                "train.steps=4", "train.batch_size=8", "train.threads=1"],
                     methods={"ncm": {}, "frozen": {"method": "ncm"}, "seq_lora": {}})
    rows = run_bench(spec, progress=False)
    assert {r["method"] for r in rows} == {"ncm", "frozen", "seq_lora"} and len(rows) == 6
    assert json.loads((tmp_path / "b" / "frozen" / "results.json").read_text())["method"] == "ncm"
    table = (tmp_path / "b" / "comparison.md").read_text()
    assert "| frozen |" in table and "last accuracy" in table and (tmp_path / "b" / "comparison.png").is_file()


def test_a_learn_run_killed_after_a_request_resumes_to_the_same_results(tiny_model_dir, tmp_path):
    """The state after request 1 holds a grown prototype head; the resumed run rebuilds that shape."""
    import os
    import subprocess
    import sys

    def learn(out, crash_at=None):
        env = {k: v for k, v in os.environ.items() if k != "FORGETKIT_CRASH_AT"}
        if crash_at:
            env["FORGETKIT_CRASH_AT"] = crash_at
        return subprocess.run([sys.executable, "-m", "forgetkit.cli", "learn", "--model", str(tiny_model_dir),
                               "--data", "synthetic", "-o", "data.num_classes=9", "--classes", "class_6",
                               "--classes", "class_7,class_8", "--out", str(out), *LEARN, *extra],
                              env=env, capture_output=True, text=True, timeout=300)

    extra = ["-o", "train.log_every=4"]
    assert learn(tmp_path / "ref").returncode == 0
    assert learn(tmp_path / "run", crash_at="request_1_step_5").returncode == -9
    extra += ["--resume"]
    resumed = learn(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    ref, run = (RunRecord.read(tmp_path / name) for name in ("ref", "run"))
    assert [t.fingerprint_after for t in run.requests] == [t.fingerprint_after for t in ref.requests]
    assert run.summary["accuracy_matrix"] == ref.summary["accuracy_matrix"]


def test_a_classifier_that_forgot_a_class_learns_without_bringing_it_back(tiny_model_dir, tmp_path):
    """The first learn request turns the linear head into prototypes of the classes it knows; the class its ledger
    forgot gets a zero prototype, not the mean of its images."""
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_2", "--out", str(tmp_path / "f"),
                 "-q", "--allow-fail", "-o", "train.steps=8", "-o", "train.threads=1"]) == 0
    assert main(["learn", "--model", str(tmp_path / "f"), "--data", "synthetic", "-o", "data.num_classes=7",
                 "--classes", "class_6", "--out", str(tmp_path / "l"), *LEARN]) == 0
    model, manifest = fk.load_model(tmp_path / "l")
    assert manifest["classes"] == [f"class_{i}" for i in range(7)]
    rows = model.head.prototypes.detach()
    assert rows[2].abs().sum() == 0 and (rows[[0, 1, 3, 4, 5, 6]].norm(dim=1) > 0).all()
    request = RunRecord.read(tmp_path / "l").requests[0]
    assert request.old_classes == ["class_2"] and "class_2" not in request.details["known_classes"]
