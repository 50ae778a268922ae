import pytest
import torch
from conftest import tiny_run_overrides
from helpers import batch
from test_methods import PAPER_FORM, setup

import forgetkit as fk
from forgetkit.methods.gs_lora_pp import class_prototypes, prototype_distance


def test_prototypes_are_class_mean_embeddings(tiny_model_dir):
    model, _ = fk.load_model(tiny_model_dir)
    splits = fk.load_data(fk.DataConfig(source="synthetic")).with_preprocess(model.spec.preprocess)
    part = splits.train.subset(torch.arange(0, 130))  # classes 0, 1 (60 each) and 10 images of class 2
    protos, present = class_prototypes(model, [part], 6, "cpu", batch_size=17)
    assert present.tolist() == [True, True, True, False, False, False]
    with torch.no_grad():
        emb = model.embed(torch.stack([part[i][0] for i in range(120, 130)]))
    assert torch.allclose(protos[2], emb.mean(0), atol=1e-5)


def test_prototype_distances_hand_computed():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    proto = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    kl = prototype_distance(emb, proto, "kl")
    p0, q0 = torch.tensor([0.5, 0.5]), torch.softmax(emb[0], 0)
    assert kl[0].item() == pytest.approx((p0 * (p0.log() - q0.log())).sum().item(), abs=1e-6)
    assert prototype_distance(emb, proto, "l2").tolist() == pytest.approx([0.5, 0.5])
    assert prototype_distance(proto, proto, "kl").abs().max() < 1e-6


@pytest.mark.parametrize("distance", ["kl", "l2"])
def test_push_and_pull_terms(tiny_model_dir, distance):
    method, module, original, request, (xf, yf), (xr, yr) = setup(
        tiny_model_dir, "gs_lora_pp", proto_forget_weight=[0.3], proto_retain_weight=[0.7], proto_bound=5.0,
        proto_distance=distance, alpha_warmup_steps=0, alpha=0.2, **PAPER_FORM)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    protos = method.prototypes
    inner = module.base_model.model
    d_f = prototype_distance(inner.embed(xf), protos[yf], distance).mean()
    d_r = prototype_distance(inner.embed(xr), protos[yr], distance).mean()
    assert losses["proto_push"].item() == pytest.approx(max(0.0, 5.0 - d_f.item()), abs=1e-5)
    assert losses["proto_pull"].item() == pytest.approx(d_r.item(), abs=1e-5)
    base = (0.2 * losses["forget"] + losses["retain"] + 0.2 * losses["structure"])
    assert losses["loss"].item() == pytest.approx((base + 0.3 * losses["proto_push"] + 0.7 * d_r).item(), rel=1e-5)
    # the pull term really pulls: its gradient moves replay embeddings towards their prototypes
    assert d_r.item() > 0
    grads = torch.autograd.grad(losses["proto_pull"], [p for p in module.parameters() if p.requires_grad],
                                allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_prototypes_come_from_the_start_of_task_model_not_a_random_one(tiny_model_dir):
    method, module, original, request, *_ = setup(tiny_model_dir, "gs_lora_pp")
    assert sorted(method.present.nonzero().flatten().tolist()) == sorted(request.classes + request.replay)
    data = [method.data.forget, method.data.retain]
    expected, _ = class_prototypes(original, data, 6, "cpu")
    assert torch.allclose(method.prototypes, expected, atol=1e-5)
    torch.manual_seed(3)
    random_protos, _ = class_prototypes(fk.create_model("vit_test", 6), data, 6, "cpu")
    assert not torch.allclose(method.prototypes, random_protos, atol=1e-2)  # the original's single-step bug


def test_ema_is_applied_to_the_merged_model(tiny_model_dir):
    method, module, original, request, forget, retain = setup(tiny_model_dir, "gs_lora_pp", ema_decay=0.5,
                                                              ema_start_step=0)
    layers = method.lora_layers()
    name = next(iter(layers))
    deltas = []
    method.cfg.ema_every = 5
    for update in range(3):
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        deltas.append(layers[name].get_delta_weight("default").detach().clone())
        for step in range(5 * update, 5 * update + 5):  # the EMA moves once every 5 steps
            method.end_step(step)
    expected_ema = 0.5 * (0.5 * deltas[0] + 0.5 * deltas[1]) + 0.5 * deltas[2]
    w0 = original.get_submodule(name.removeprefix("base_model.model.")).weight.detach()
    merged = method.finish()
    got = merged.get_submodule(name.removeprefix("base_model.model.")).weight.detach()
    assert torch.allclose(got, w0 + expected_ema, atol=1e-5)
    assert not torch.allclose(got, w0 + deltas[2], atol=1e-4)  # not simply the last update


def test_gs_lora_pp_end_to_end_with_missing_classes(tiny_model_dir, tmp_path):
    cfg = fk.load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path) + [
        "method.name=gs_lora_pp", "protocol.missing=1", "method.proto_retain_weight=[0.01]"])
    results = fk.run_requests(cfg, progress=False)
    for t in results.requests:
        assert t.missing_classes and "acc_m" in t.after and "acc_r_data" in t.after
        assert t.after["acc_f"] <= 10
    assert results.setting == "continual_1missing"


def test_prototypes_average_a_seeded_sample_of_each_class(tiny_model_dir):
    from forgetkit.methods.gs_lora_pp import per_class_sample
    from forgetkit.runtime import rng

    method, module, original, request, *_ = setup(tiny_model_dir, "gs_lora_pp", prototype_images=5)
    retain = method.data.retain
    sample = per_class_sample(retain, 5, torch.Generator().manual_seed(0))
    counts = torch.bincount(sample.targets, minlength=6)
    assert all(counts[c] == 5 for c in request.replay) and len(sample) == 5 * len(request.replay)
    again = per_class_sample(retain, 5, torch.Generator().manual_seed(0))
    assert torch.equal(sample.targets, again.targets) and torch.equal(sample.indices, again.indices)
    assert per_class_sample(retain, 0, torch.Generator()) is retain   # 0 = every image
    # the method's prototypes are the class means over such a sample, from the start-of-task model
    gen = rng(0, "prototype_images", request.index)
    data = [per_class_sample(d, 5, gen) for d in (method.data.forget, retain)]
    expected, _ = class_prototypes(original, data, 6, "cpu")
    assert torch.allclose(method.prototypes, expected, atol=1e-5)
