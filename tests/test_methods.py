"""Table-driven tests over the method registry, on the tiny pre-trained ViT (peft-style)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run_overrides
from helpers import batch

import forgetkit as fk
from forgetkit.errors import ForgetkitError
from forgetkit.losses import group_norms
from forgetkit.methods import METHODS, MethodContext, build_method
from forgetkit.methods.finetune import kd_loss
from forgetkit.methods.lirf import attention_map
from forgetkit.requests.protocol import Protocol, ProtocolConfig

FULL_FINETUNE = ["l2", "ewc", "mas", "lwf", "der", "der_pp", "fdr", "scrub", "scrub_s"]


# methods that edit a forgetkit ViT classifier (clip_text edits a CLIP's text projection: tests/test_clip.py)
VIT_METHODS = [n for n in METHODS.names() if "forget" in METHODS.get(n).supports
               and METHODS.get(n).requires <= {"lora_targets", "split_backbone", "rebuildable"}]


def test_registry_has_gs_lora_pp_fg_oriu_and_the_eleven_baselines():
    assert set(METHODS.names()) == {"gs_lora", "gs_lora_pp", "fg_oriu", "retrain", "l2", "ewc", "mas", "lwf", "der",
                                    "der_pp",
                                    "fdr", "scrub", "scrub_s", "lirf", "lirf_eccv", "clip_text", "undo", "withdraw",
                                    "redeposit", "lora_sub_drs", "seq_lora", "ncm", "joint"}
    assert set(VIT_METHODS) == set(METHODS.names()) - {"clip_text", "undo", "withdraw", "redeposit", "lora_sub_drs",
                                                       "seq_lora", "ncm", "joint"}


# GS-LoRA as the papers define it (forgetkit's defaults add a per-sample bound, a proximal lasso and γ)
PAPER_FORM = dict(lasso_update="gradient", bound_per_sample=False, forgotten_mass_weight=0.0)


def setup(tiny_model_dir, name, model=None, **cfg):
    """A method set up on a one-request protocol of the synthetic data (``model``: another vit_test-sized model)."""
    model = model if model is not None else fk.load_model(tiny_model_dir)[0]
    splits = fk.load_data(fk.DataConfig(source="synthetic")).with_preprocess(model.spec.preprocess)
    proto = Protocol(ProtocolConfig(num_requests=1, forget_ratio=0.5, retain_ratio=0.2), splits, seed=0)
    request = proto.requests[0]
    ctx = MethodContext(device=torch.device("cpu"), seed=0, num_classes=6, steps=16)
    method = build_method({"name": name, **cfg}, ctx)
    original = copy.deepcopy(model)
    module = method.setup(model, request, proto.request_data(request))
    data = proto.request_data(request)
    forget = next(iter(torch.utils.data.DataLoader(data.forget, batch_size=8)))
    retain = next(iter(torch.utils.data.DataLoader(data.retain, batch_size=8)))
    return method, module, original, request, forget, retain


def expected_trainable(name, module):
    names = {n for n, _ in module.named_parameters()}
    if name in ("gs_lora", "gs_lora_pp", "fg_oriu"):
        return {n for n in names if "lora_" in n}
    if name == "lirf":       # the GS-LoRA authors' split: the middle block
        return module.lower_parameter_names(module.spec.depth // 2)
    if name == "lirf_eccv":  # chosen on validation: every block (the upper half is the final norm and the head)
        return module.lower_parameter_names(module.spec.depth)
    if name == "retrain":
        return names
    return {n for n in names if not n.startswith("head.")}


@pytest.mark.parametrize("name", VIT_METHODS)
def test_one_step_changes_only_what_it_should(tiny_model_dir, name):
    method, module, original, request, forget, retain = setup(tiny_model_dir, name)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer = method.make_optimizer(1e-3, 0.0)
    for _ in range(2):  # two steps: on the first, LoRA's A gets no gradient while B is still zero
        losses = method.step(batch(forget, retain), 0, optimizer)
    assert torch.isfinite(losses["loss"])
    changed = {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}
    allowed = expected_trainable(name, module)
    assert changed <= allowed, sorted(changed - allowed)[:3]
    assert len(changed) >= 0.8 * len(allowed)
    if name == "retrain":  # a fresh model: the pre-trained one is left alone and not reused
        assert not torch.equal(module.head.fc.weight, original.head.fc.weight)


def perturb(module, scale=0.05):
    """Move the trainable weights away from the teacher copy so distillation terms are non-zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def fix_labels(method):
    """Seed the method's wrong-label draw so that `_replay_wrong` can predict it."""
    method.generator = torch.Generator().manual_seed(7)


def _replay_wrong(y, method):
    """The wrong labels a method seeded by `fix_labels` draws next (uniform over the other classes)."""
    gen = torch.Generator().manual_seed(7)
    c = method.ctx.num_classes
    return (y + torch.randint(1, c, y.shape, generator=gen)) % c


def test_gs_lora_loss_terms(tiny_model_dir):
    method, module, _, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, "gs_lora", alpha_warmup_steps=0,
                                                           alpha=0.3, bnd=20.0, beta=[0.5], **PAPER_FORM)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    ce_f = F.cross_entropy(module(xf), yf)
    groups = {}
    for n, p in module.named_parameters():
        if "lora_" in n:
            groups.setdefault(n.split("blocks.")[1].split(".")[0], []).append(p)
    expected_structure = sum(torch.sqrt(sum((p ** 2).sum() for p in g)) for g in groups.values())
    expected = 0.5 * torch.relu(20.0 - ce_f) + F.cross_entropy(module(xr), yr) + 0.3 * expected_structure
    assert torch.allclose(losses["structure"], expected_structure, atol=1e-5)
    assert torch.allclose(losses["loss"], expected, atol=1e-4)
    assert method.alpha_at(0) == 0.3
    method.cfg.alpha_warmup_steps = 2
    assert method.alpha_at(1) == 0.0 and method.alpha_at(2) == 0.3


def test_gs_lora_proximal_lasso(tiny_model_dir):
    method, module, _, _request, forget, retain = setup(tiny_model_dir, "gs_lora", alpha_warmup_steps=0,
                                                        lasso_update="proximal", alpha=5.0,
                                                        forgotten_mass_weight=0.0)
    losses = method.training_step(batch(forget, retain), step=0)
    plain = method.beta * losses["forget"] + losses["retain"]
    assert torch.allclose(losses["loss"], plain) and losses["structure"] > 0   # the lasso is not in the loss
    norms_before = group_norms(method.groups)
    optimizer = method.make_optimizer(1e-3, 0.0)
    method.step(batch(forget, retain), 0, optimizer)
    # after Adam's step (≤ lr per coordinate) every group shrank by lr·α = 0.005 in norm, or became exactly 0
    for key, norm in group_norms(method.groups).items():
        assert norm == 0.0 or norm < norms_before[key]
    method.cfg.alpha = 1e6                                  # lr·α = 1000 exceeds every group's norm
    method.step(batch(forget, retain), 0, optimizer)
    assert all(v == 0.0 for v in group_norms(method.groups).values())
    losses = method.step(batch(forget, retain), 0, optimizer)      # zero groups: no √0 gradient, the loss stays finite
    assert torch.isfinite(losses["loss"])


def test_gs_lora_forgotten_mass_term(tiny_model_dir):
    method, module, _, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, "gs_lora", alpha=0.0, beta=[0.5],
                                                           forgotten_mass_weight=2.0)
    perturb(module)
    request.old = [request.retain[0]]           # as if a class had been forgotten by an earlier request
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    p_forget_images = F.softmax(module(xf), dim=1)
    mass = p_forget_images[:, request.classes + request.old].sum(dim=1)
    expected_mass = -torch.log(1 - mass).mean()
    assert torch.allclose(losses["forgotten_mass"], expected_mass, atol=1e-5)
    assert torch.allclose(losses["loss"], 0.5 * losses["forget"] + losses["retain"] + 2.0 * expected_mass, atol=1e-5)
    method.cfg.forgotten_mass_weight = 0.0  # off (the paper): no term
    assert method.training_step(batch((xf, yf), (xr, yr)), step=0)["forgotten_mass"] == 0


@pytest.mark.parametrize("name", ["l2", "ewc", "mas"])
def test_importance_penalty_terms(tiny_model_dir, name):
    method, module, original, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, name, reg_lambda=2.0)
    fix_labels(method)
    wrong = _replay_wrong(yf, method)
    theta0 = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    omega = method.anchors[0][1]
    if name == "l2":
        assert all(torch.equal(o, torch.ones_like(o)) for o in omega.values())
    if name == "ewc":  # Fisher by hand over the replay batches method.importance uses
        module.eval()
        batches = list(method.replay_batches())
        name0 = "backbone.blocks.0.mlp.fc1.weight"
        fisher = sum(torch.autograd.grad(F.cross_entropy(module(x), y), dict(module.named_parameters())[name0])[0]
                     .pow(2) * len(x) for x, y in batches) / len(batches)
        module.train()
        assert torch.allclose(omega[name0], fisher, rtol=1e-4, atol=1e-10)
    perturb(module)
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    penalty = sum((omega[n] * (p - theta0[n]) ** 2).sum() for n, p in module.named_parameters() if p.requires_grad)
    expected = F.cross_entropy(module(xf), wrong) + F.cross_entropy(module(xr), yr) + 2.0 * penalty
    assert torch.allclose(losses["penalty"], penalty, rtol=1e-5)
    assert torch.allclose(losses["loss"], expected, rtol=1e-5)


def test_wrong_labels_are_wrong_and_cover_all_classes(tiny_model_dir):
    method, *_ = setup(tiny_model_dir, "lwf")
    y = torch.full((3000,), 2)
    wrong = method.wrong_labels(y)
    assert (wrong != 2).all() and set(wrong.tolist()) == {0, 1, 3, 4, 5}
    method.cfg.faithful_relabel = True  # the original's bug: only indices below K = number of forget classes
    k = len(method.request.classes)
    assert set(method.wrong_labels(y).tolist()) <= set(range(k))
    low = torch.arange(k).repeat(500)  # true labels below K never keep their own label (the original's y + 1 fix)
    assert (method.wrong_labels(low) != low).all()


def test_lwf_der_fdr_terms(tiny_model_dir):
    for name in ("lwf", "der", "der_pp", "fdr"):
        method, module, original, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, name)
        fix_labels(method)
        wrong = _replay_wrong(yf, method)
        perturb(module)
        if name == "der_pp":
            method.second = iter([(xr, yr)])
        losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
        teacher = original.eval()
        forget_ce = F.cross_entropy(module(xf), wrong)
        if name == "lwf":
            p_t = F.softmax(teacher(xr) / 2, 1)
            kd = (p_t * (p_t.log() - F.log_softmax(module(xr) / 2, 1))).sum(1).mean() * 4
            expected = forget_ce + 0.5 * kd + 10 * F.cross_entropy(module(xr), yr)
        elif name in ("der", "der_pp"):
            der = ((module.embed(xr) - teacher.embed(xr)) ** 2).sum()
            expected = forget_ce + method.cfg.der_weight * der
            if name == "der_pp":
                expected = expected + 0.005 * F.cross_entropy(module(xr), yr)
        else:
            expected = forget_ce + 50 * torch.sqrt(((module(xr) - teacher(xr)) ** 2).sum(1)).mean()
        assert losses["loss"].item() > forget_ce.item() + 1e-4, name  # the teacher term is really there
        assert torch.allclose(losses["loss"], expected, rtol=1e-4), name


def test_scrub_passes(tiny_model_dir):
    method, module, original, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, "scrub_s", smoothing=0.5)
    perturb(module)
    swa = method.swa
    smooth = sum((p - swa[n]).norm() for n, p in module.named_parameters() if p.requires_grad)
    teacher = original.eval()
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    assert torch.allclose(losses["max"], -kd_loss(module(xf), teacher(xf), 2.0) + 0.5 * smooth, rtol=1e-4)
    expected_min = 0.99 * F.cross_entropy(module(xr), yr) + 1e-3 * kd_loss(module(xr), teacher(xr), 2.0) + 0.5 * smooth
    assert torch.allclose(losses["min"], expected_min, rtol=1e-4)
    assert method.max_active(7) and not method.max_active(8)  # first half of the 16-step budget


def test_lirf_terms_use_the_real_class_indices(tiny_model_dir):
    method, module, original, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, "lirf")
    fix_labels(method)
    wrong = _replay_wrong(yf, method)
    perturb(module)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(module.upper(module.lower(x, 1), 1), module(x), atol=1e-6)
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    teacher, deposit = original.eval(), method.deposit
    s, t, d = module(xf), teacher(xf), deposit(xf)

    def kl(a, b, cols):
        p = F.softmax(a[:, cols] / 10, 1)
        return (p * (p.log() - F.log_softmax(b[:, cols] / 10, 1))).sum(1).mean() * 100

    at = F.mse_loss(attention_map(module.lower(xf, 1)), attention_map(teacher.lower(xf, 1)))
    expected = (0.9 * F.cross_entropy(s, wrong) - 300 * at + 10 * 0.1 * kl(t, s, request.retain)
                + 0.05 * (0.1 * kl(t, d, request.classes) + 0.9 * F.cross_entropy(d, yf))
                + 5 * F.cross_entropy(module(xr), yr))
    assert torch.allclose(losses["loss"], expected, rtol=1e-4)
    optimizer = method.make_optimizer(1e-3, 0.0)
    dep_before = {n: p.detach().clone() for n, p in deposit.named_parameters() if p.requires_grad}
    method.step(batch((xf, yf), (xr, yr)), 0, optimizer)
    assert any(not torch.equal(dep_before[n], p) for n, p in deposit.named_parameters() if p.requires_grad), \
        "the deposit half must be trained (the original never optimised it)"


# Paper defaults assume CosFace logits on a 100-class face model; on the 6-class toy, FDR's λ = 50 anchors the
# model so firmly that it cannot move in a few steps, so the toy uses λ = 1 (the benchmark reports both).
# LIRF* trains only its lower half at lr 1e-4: 48 steps take this toy's Acc_f from 77.5 to 60, 96 steps to 42.5.
# LIRF's ECCV form forgets only through a random-label CE weighted 1 − α (0.05), which flattens the target's output
# before it moves its argmax: 48 steps take this toy's Acc_f from 77.5 to 75, 200 steps to 70, 300 to 42.5 (measured
# 2026-12-04 on the toy pre-trained in its loader's own order; the order of before reached 57.5 in 200).
# fg_oriu: on a 32-wide, 2-block toy the 0.99 subspaces leave LoRA almost no direction to move in
TOY_OVERRIDES = {"fdr": ["method.fdr_weight=1.0"], "fg_oriu": ["method.energy=0.9"], "lirf": ["train.steps=96"],
                 "lirf_eccv": ["train.steps=300"]}


@pytest.mark.parametrize("name", VIT_METHODS)
def test_forgetting_happens_on_a_toy_task(tiny_model_dir, tmp_path, name):
    cfg = fk.load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path) + [
        f"method={{name: {name}}}", "protocol.num_requests=1", "train.steps=48"] + TOY_OVERRIDES.get(name, []))
    request = fk.run_requests(cfg, progress=False).requests[0]
    assert request.before["acc_f"] >= 50
    assert request.after["acc_f"] <= request.before["acc_f"] - 20, request.after


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path_factory.mktemp("folder") / "imgs", classes=("ant", "bee", "cat", "dog"),
                             per_class=6, size=(20, 20))
    out = root.parent / "model"
    fk.pretrain(fk.PretrainConfig(data=fk.DataConfig(source="image_folder", root=str(root)), arch="vit_test",
                                  epochs=1, batch_size=8, warmup_steps=1, threads=1, out=str(out)), progress=False)
    return root, out


@pytest.mark.parametrize("requests", [[["bee"], ["dog"]], [["bee", "dog"]]], ids=["continual", "single_step"])
@pytest.mark.parametrize("name", VIT_METHODS)
def test_every_method_runs_on_an_image_folder(folder_model, tmp_path, name, requests):
    root, model_dir = folder_model
    results = fk.forget(str(model_dir), requests, method=name, output_dir=str(tmp_path), progress=False,
                        data={"source": "image_folder", "root": str(root)},
                        overrides=["protocol.forget_ratio=1.0", "protocol.retain_ratio=1.0", "train.steps=8",
                                   "train.batch_size=4"])
    assert results.setting == ("continual" if len(requests) == 2 else "single_step")
    assert [t.classes for t in results.requests] == requests
    if len(requests) == 2:
        assert results.requests[1].old_classes == ["bee"]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_mas_importance_and_retrain_loss_by_hand(tiny_model_dir):
    method, module, original, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, "mas")
    module.eval()
    batches = list(method.replay_batches())
    name0 = "backbone.blocks.1.mlp.fc2.weight"
    param = dict(module.named_parameters())[name0]
    expected = sum(torch.autograd.grad(module(x).pow(2).mean(), param)[0].abs() for x, _ in batches) / len(batches)
    assert torch.allclose(method.anchors[0][1][name0], expected, rtol=1e-4, atol=1e-12)
    retrain, fresh, original, *_ = setup(tiny_model_dir, "retrain")
    losses = retrain.training_step(batch((xf, yf), (xr, yr)), step=0)
    assert torch.allclose(losses["loss"], F.cross_entropy(fresh(xr), yr))


def test_bench_inherits_shared_method_settings_only():
    import yaml

    from forgetkit.bench import method_overrides

    def parsed(overrides):
        return [(o.split("=", 1)[0], yaml.safe_load(o.split("=", 1)[1])) for o in overrides]

    from forgetkit.methods import MethodConfig

    base = MethodConfig.parse({"name": "gs_lora", "lora": {"rank": 2}, "bnd": 15.0})
    (key, section), = parsed(method_overrides(base, "gs_lora_pp", {"proto_bound": 3.0}))
    assert key == "method" and section["name"] == "gs_lora_pp"
    assert section["lora"]["rank"] == 2 and section["bnd"] == 15.0 and section["proto_bound"] == 3.0
    assert parsed(method_overrides(base, "l2", {"train": {"lr": 0.001}})) == [
        ("method", {"name": "l2"}), ("train.lr", 0.001)]
    # LIRF has an `alpha` too, with another meaning: it must not receive GS-LoRA's group-lasso weight
    base = MethodConfig.parse({"name": "gs_lora", "alpha": 0.2})
    assert parsed(method_overrides(base, "lirf", {})) == [("method", {"name": "lirf"})]
    # a subclass keeps its own defaults where the base config left its method's: seq_lora has no DRS and no ATL
    base = MethodConfig.parse({"name": "lora_sub_drs", "rank": 4})
    (key, section), = parsed(method_overrides(base, "seq_lora", {}))
    assert section == {"name": "seq_lora", "rank": 4}


def cosface_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return fk.create_model("vit_test", 6, head="cosface", **overrides)


def test_scrub_max_pass_applies_the_cosface_margin(tiny_model_dir):
    """The original calls student(x_f, y_f) and teacher(x_f, y_f): on a CosFace head the margin is in both."""
    method, module, original, _, (xf, yf), _ = setup(tiny_model_dir, "scrub", model=cosface_model())
    perturb(module)
    teacher = original.eval()
    with_margin = -kd_loss(module(xf, yf), teacher(xf, yf), 2.0)
    without = -kd_loss(module(xf), teacher(xf), 2.0)
    assert not torch.allclose(with_margin, without, rtol=1e-3)
    assert torch.allclose(method.max_loss((xf, yf)), with_margin, rtol=1e-5)


def test_lirf_cosface_margins_and_frozen_upper_half_in_eval_mode(tiny_model_dir):
    method, module, original, request, (xf, yf), (xr, yr) = setup(tiny_model_dir, "lirf",
                                                                  model=cosface_model(drop_rate=0.3))
    split = method.split_at
    tokens = module.lower(xf, split)
    # the shared upper half has no dropout during training (the original keeps teacher_up in eval mode) ...
    assert torch.equal(module.upper(tokens, split), module.upper(tokens, split))
    assert torch.equal(method.deposit.upper(tokens, split), method.deposit.upper(tokens, split))
    # ... while the lower half that trains keeps its dropout
    assert not torch.equal(module.lower(xf, split), module.lower(xf, split))
    # the forget CE puts the CosFace margin at the wrong label, as the original's teacher_up(mid, ỹ)
    fix_labels(method)
    wrong = _replay_wrong(yf, method)
    torch.manual_seed(1)
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    torch.manual_seed(1)
    s_mid = module.lower(xf, split)
    expected = F.cross_entropy(module.upper(s_mid, split, wrong), wrong)
    assert torch.allclose(losses["forget"], expected, rtol=1e-5)
    assert not torch.allclose(expected, F.cross_entropy(module.upper(s_mid, split), wrong), rtol=1e-3)


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_importance_sees_every_retained_class(tiny_model_dir, name):
    """The importance pass draws its images class-balanced: a cap of 8 images still covers all 4 replay classes
    (the old pass took the first batches of a class-sorted set, i.e. the lowest classes only)."""
    method, *_ = setup(tiny_model_dir, name, importance_images=8)
    seen = torch.cat([y for _, y in method.replay_batches()])
    assert len(seen) == 8 and sorted(set(seen.tolist())) == sorted(method.request.replay)
    method.cfg.importance_images = 0  # every replay image exactly once
    seen = torch.cat([y for _, y in method.replay_batches()])
    assert torch.equal(torch.sort(seen).values, torch.sort(method.data.retain.targets).values)


def test_pooled_data_term_weights_each_set_by_its_size(tiny_model_dir):
    method, module, _, _, (xf, yf), (xr, yr) = setup(tiny_model_dir, "l2", data_term="pooled", reg_lambda=0.0)
    fix_labels(method)
    wrong = _replay_wrong(yf, method)
    n_f, n_r = len(method.data.forget), len(method.data.retain)
    losses = method.training_step(batch((xf, yf), (xr, yr)), step=0)
    expected = (n_f * F.cross_entropy(module(xf), wrong) + n_r * F.cross_entropy(module(xr), yr)) / (n_f + n_r)
    assert torch.allclose(losses["loss"], expected, rtol=1e-5)
    with pytest.raises(ForgetkitError, match="data_term must be one of sum, pooled"):
        setup(tiny_model_dir, "l2", data_term="mixed")


def test_lirf_recover_logits_take_deposited_columns_from_the_deposit_and_couple_the_target():
    from forgetkit.methods.lirf import recover_logits

    target = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    deposit = torch.tensor([[10.0, 20.0, 30.0, 40.0]], requires_grad=True)
    recovered = recover_logits(target, deposit, [1, 3])          # hand-built: columns 1 and 3 from the deposit
    assert recovered.tolist() == [[1.0, 20.0, 3.0, 40.0]]
    F.cross_entropy(recovered, torch.tensor([1])).backward()
    # the recovery CE reaches the target only through its preserved columns, the deposit only through its own
    assert target.grad[0, [1, 3]].abs().sum() == 0 and target.grad[0, [0, 2]].abs().min() > 0
    assert deposit.grad[0, [0, 2]].abs().sum() == 0 and deposit.grad[0, [1, 3]].abs().min() > 0


def test_gs_lora_replay_logit_matching_is_on_by_default_only_when_retained_classes_lack_replay_data(tiny_model_dir):
    import dataclasses

    method, module, original, request, forget, retain = setup(tiny_model_dir, "gs_lora")
    assert method.replay_logit_weight == 0.0        # every retained class has replay data: off
    missing = dataclasses.replace(request, missing=[request.retain[0]])
    method.setup(original, missing, None)
    assert method.replay_logit_weight == 1.0        # a retained class without replay data: on
    optimizer = method.make_optimizer(1e-2, 0.0)
    for step in range(3):
        losses = method.step(batch(forget, retain), step, optimizer)
    assert losses["replay_logits"].item() > 0
    explicit = setup(tiny_model_dir, "gs_lora", replay_logit_weight=0.0)[0]
    explicit.setup(fk.load_model(tiny_model_dir)[0], missing, None)
    assert explicit.replay_logit_weight == 0.0      # an explicit value wins


def test_gs_lora_forget_feature_term_moves_the_forgotten_class_means_onto_the_replay_centre(tiny_model_dir):
    from forgetkit.losses import class_mean_gap

    method, module, original, request, forget, retain = setup(tiny_model_dir, "gs_lora", forget_feature_weight=5.0,
                                                              alpha=0.0, beta=[0.0], forgotten_mass_weight=0.0)
    inner = module.base_model.model

    def gap() -> float:
        module.eval()
        with torch.no_grad():
            value = class_mean_gap(inner.embed(forget[0]), forget[1], inner.embed(retain[0])).item()
        module.train()
        return value

    start = gap()
    optimizer = method.make_optimizer(1e-2, 0.0)
    assert method.step(batch(forget, retain), 0, optimizer)["forget_features"].item() > 0
    for step in range(1, 30):
        method.step(batch(forget, retain), step, optimizer)
    assert gap() < 0.5 * start                    # the term moves the features, through LoRA only
    off = setup(tiny_model_dir, "gs_lora")[0].training_step(batch(forget, retain), 0)
    assert off["forget_features"].item() == 0.0
    assert method.training_step(batch(forget, None), 0)["forget_features"].item() == 0.0   # no replay batch: no centre


def test_gs_lora_relabel_term_moves_forget_features_onto_their_nearest_retained_ones(tiny_model_dir):
    from forgetkit.losses import feature_relabel_loss

    method, module, original, request, forget, retain = setup(tiny_model_dir, "gs_lora", forget_relabel_weight=5.0,
                                                              alpha=0.0, beta=[0.0], forgotten_mass_weight=0.0)
    inner = module.base_model.model
    with torch.no_grad():   # the targets: the pre-request features of each forget image's nearest replay image
        before_f, before_r = original.embed(forget[0]), original.embed(retain[0])
        nearest = (torch.nn.functional.normalize(before_f, dim=1)
                   @ torch.nn.functional.normalize(before_r, dim=1).T).argmax(1)
        targets = before_r[nearest]

    def distance() -> float:
        module.eval()
        with torch.no_grad():
            value = feature_relabel_loss(inner.embed(forget[0]), targets).item()
        module.train()
        return value

    start = distance()
    optimizer = method.make_optimizer(1e-2, 0.0)
    assert method.step(batch(forget, retain), 0, optimizer)["forget_relabel"].item() == pytest.approx(start, rel=0.2)
    for step in range(1, 40):
        method.step(batch(forget, retain), step, optimizer)
    assert distance() < start / 3
    assert setup(tiny_model_dir, "gs_lora")[0].training_step(batch(forget, retain), 0)["forget_relabel"].item() == 0.0


def test_lirf_eccv_trains_target_and_deposit_on_deposit_images_only(tiny_model_dir, tmp_path):
    from forgetkit.methods.lirf import load_deposit

    method, module, original, request, forget, retain = setup(tiny_model_dir, "lirf_eccv")
    losses = method.training_step(batch(forget, retain), step=0)
    assert set(losses) >= {"kd_preserved", "forget", "kd_deposit", "recover", "loss"}
    losses["recover"].backward()                  # the coupling: L_re on z_R moves the target's lower half too
    lower = module.lower_parameter_names(method.split_at)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters() if n in lower)
    # the same losses whatever the replay batch: the ECCV form never looks at it
    again = method.training_step(batch(forget, None), step=0)
    assert torch.allclose(again["kd_preserved"], losses["kd_preserved"])
    # the deposit goes to disk with its target's fingerprints, and comes back only onto weights with its upper half
    assert method.save_edit(tmp_path) is False
    info, state = load_deposit(tmp_path, module)
    assert info["classes"] == request.classes and info["split"] == method.split_at and set(state) == lower
    # T0 differs from the target in the lower half only (as a later LIRF request's target does): accepted
    assert load_deposit(tmp_path, original)[0] == info
    upper = next(p for n, p in original.named_parameters() if n not in lower)
    with torch.no_grad():                          # one number of the shared upper half changed: refused
        upper.view(-1)[0] += 1.0
    with pytest.raises(fk.ForgetkitError, match="belongs to the target network"):
        load_deposit(tmp_path, original)
    (tmp_path / "deposit.safetensors").unlink()
    with pytest.raises(fk.ForgetkitError, match="lacks deposit.safetensors"):
        load_deposit(tmp_path, module)


def test_lirf_eccv_on_a_cosface_head_puts_the_margin_on_the_random_label_ce_only(tiny_model_dir):
    """At the start student and teacher are one network: the preserved-class distillation is zero, and the forget CE
    is the one of the margin-penalised logits (a margin on the distilled logits made the KD 5.15 here)."""
    model = cosface_model()
    method, module, _, request, forget, _ = setup(tiny_model_dir, "lirf_eccv", model=model)
    losses = method.training_step(batch(forget, None), step=0)
    assert losses["kd_preserved"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["kd_deposit"].item() == pytest.approx(0.0, abs=1e-5)
    xf, _ = forget
    generator = torch.Generator().manual_seed(0)
    method.generator = generator                   # the same random labels as a fresh draw below
    draw = torch.randint(0, method.ctx.num_classes, (len(xf),), generator=torch.Generator().manual_seed(0))
    again = method.training_step(batch(forget, None), step=0)
    with torch.no_grad():
        expected = F.cross_entropy(module(xf, draw), draw)      # the CosFace margin at the random labels
        plain = F.cross_entropy(module(xf), draw)
    assert again["forget"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected.item() - plain.item()) > 1e-3         # the margin matters on this head


@pytest.mark.parametrize("split", [0, 3])
def test_lirf_split_outside_the_backbone_is_refused(tiny_model_dir, split):
    assert fk.load_model(tiny_model_dir)[0].spec.depth == 2
    with pytest.raises(fk.ForgetkitError, match="method.split must be between 1 and the backbone's 2 blocks"):
        setup(tiny_model_dir, "lirf_eccv", split=split)


def test_gs_lora_replay_logit_matching_compares_with_the_model_before_the_request(tiny_model_dir):
    method, module, original, request, forget, retain = setup(tiny_model_dir, "gs_lora", replay_logit_weight=1.0)
    optimizer = method.make_optimizer(1e-2, 0.0)
    first = method.step(batch(forget, retain), 0, optimizer)
    assert first["replay_logits"].item() == pytest.approx(0.0, abs=1e-10)   # LoRA's B = 0: the same logits
    for step in range(1, 6):
        losses = method.step(batch(forget, retain), step, optimizer)
    assert losses["replay_logits"].item() > 0
    with torch.no_grad(), module.disable_adapter():  # the reference is the model before the request, untouched
        assert torch.allclose(module(retain[0]), original.eval()(retain[0]), atol=1e-5)
    off = setup(tiny_model_dir, "gs_lora")[0].training_step(batch(forget, retain), 0)
    assert off["replay_logits"].item() == 0.0
