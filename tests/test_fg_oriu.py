"""FG-OrIU: its subspaces, projections and feature terms against hand-made cases, the released code's form behind
``faithful``, and a tiny run that forgets."""

import copy

import pytest
import torch
from helpers import batch
from test_methods import setup

import forgetkit as fk
from forgetkit.methods.fg_oriu import (
    energy_basis,
    expand_basis,
    nuclear_push,
    outside_pull,
    project_off,
    project_onto,
)


def plane(n=40, d=6, dims=(0, 1), seed=0):
    """n points in the span of the unit vectors ``dims`` of R^d."""
    x = torch.zeros(n, d)
    x[:, list(dims)] = torch.randn(n, len(dims), generator=torch.Generator().manual_seed(seed))
    return x


def test_the_energy_basis_spans_the_features_and_keeps_the_fewest_directions():
    basis = energy_basis(plane(), 0.999)
    assert basis.shape == (6, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-5)
    assert project_off(plane(seed=1), basis).abs().max() < 1e-5      # the whole plane, not only the sample
    # σ⁴ (the released code's criterion) keeps fewer directions than σ² at the same threshold
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([5., 3., 2., 1., 0.5, 0.2])
    assert energy_basis(x, 0.9, power=4).shape[1] < energy_basis(x, 0.9, power=2).shape[1]


def test_expanding_a_basis_adds_only_the_new_directions():
    first = energy_basis(plane(dims=(0,)), 0.99)
    merged = expand_basis(first, plane(dims=(0, 2), seed=3), 0.99)
    assert merged.shape == (6, 2) and torch.allclose(merged[:, :1], first)
    assert torch.allclose(merged.T @ merged, torch.eye(2), atol=1e-5)
    assert project_off(plane(dims=(0, 2), seed=4), merged).abs().max() < 1e-5
    assert expand_basis(merged, plane(dims=(2,), seed=5), 0.99).shape == (6, 2)   # nothing new: kept as it is


def test_a_projected_gradient_has_no_component_in_the_protected_subspace():
    basis = energy_basis(plane(dims=(1, 3)), 0.999)
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    assert (project_off(g, basis) @ basis).abs().max() < 1e-6
    assert torch.allclose(project_off(g, basis) + project_onto(g, basis), g, atol=1e-6)


def test_the_feature_terms_vanish_where_they_should():
    basis = energy_basis(plane(dims=(0, 1)), 0.999)
    inside = plane(n=8, dims=(0, 1), seed=7)
    outside = plane(n=8, dims=(2, 3), seed=7)
    assert outside_pull(inside, basis) < 1e-5          # retain features in their subspace: nothing to pull
    assert outside_pull(outside, basis) == pytest.approx(8 ** 0.5, rel=1e-4)   # unit rows, all outside
    assert nuclear_push(outside, basis) < 1e-5         # forget features already out of it: nothing to push
    assert nuclear_push(inside, basis) > 1.0


def _train(method, module, forget, retain, steps=6):
    optimizer = method.make_optimizer(1e-2, 0.05)      # AdamW with decay: breaks orthogonality unless corrected
    for step in range(steps):
        losses = method.step(batch(forget, retain), step, optimizer)
    return losses


def test_the_update_leaves_every_retained_input_untouched(tiny_model_dir):
    method, module, original, request, forget, retain = setup(tiny_model_dir, "fg_oriu")
    losses = _train(method, module, forget, retain)
    assert float(losses["forget_subspace"].detach()) > 0
    for param, index, name, side in method.factors:
        if side == "A":   # ΔW x = B·A·x = 0 for every x in the protected subspace of the layer's inputs
            basis = method.retain_in[(index, name)]
            assert (param.detach() @ basis).abs().max() < 1e-5, (index, name)
    # so each fc1 gives the pre-request output on inputs in its protected subspace
    inner = module.base_model.model
    block = inner.backbone.blocks[0]
    x = method.retain_in[(0, "fc1")].T[:3] * 2.0
    with torch.no_grad():
        edited = block.mlp.fc1(x)
        before = original.backbone.blocks[0].mlp.fc1(x)
    assert torch.allclose(edited, before, atol=1e-5)


def test_faithful_mode_projects_as_the_released_code(tiny_model_dir):
    method, module, original, request, forget, retain = setup(tiny_model_dir, "fg_oriu", faithful=True)
    g = {}
    for param, index, name, side in method.factors:
        g[(index, name, side)] = torch.randn(param.shape, generator=torch.Generator().manual_seed(index))
    retain_basis = method.retain_out[0]
    d = retain_basis.shape[0]
    proj = method._project_gradient
    assert torch.equal(proj(g[(0, "fc1", "B")], 0, "fc1", "B"), g[(0, "fc1", "B")])          # left as it is
    assert torch.allclose(proj(g[(0, "fc1", "A")], 0, "fc1", "A"), project_off(g[(0, "fc1", "A")], retain_basis))
    b = g[(0, "fc2", "B")]                                                                    # a reshape, not .T
    assert torch.allclose(proj(b, 0, "fc2", "B"), project_off(b.reshape(-1, d), retain_basis).reshape(b.shape))
    a = g[(0, "fc2", "A")]
    assert torch.allclose(proj(a, 0, "fc2", "A"), project_off(a.reshape(d, -1).T, retain_basis).reshape(a.shape))
    # and its A factor is not kept off the subspace: AdamW's update leaves it
    _train(method, module, forget, retain)
    a_weight = next(p for p, i, n, s in method.factors if (i, n, s) == (0, "fc1", "A"))
    assert (a_weight.detach() @ method.retain_out[0]).abs().max() > 1e-3


def test_the_block_mixup_needs_faithful_and_the_forget_subspaces_merge_across_requests(tiny_model_dir):
    with pytest.raises(fk.ForgetkitError, match="needs method.faithful"):
        fk.load_config(None, ["method.name=fg_oriu", "method.faithful_block_mixup=true"])
    method, module, *_ = setup(tiny_model_dir, "fg_oriu")
    dims = {blk: b.shape[1] for blk, b in method.forget_bases.items()}
    state = copy.deepcopy(method.state_dict())
    assert set(state) == {f"forget_basis.{blk}" for blk in dims}
    fresh, *_ = setup(tiny_model_dir, "fg_oriu")
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.forget_bases[blk], state[f"forget_basis.{blk}"]) for blk in dims)


def test_a_tiny_fg_oriu_run_forgets(tiny_model_dir, tmp_path):
    from conftest import tiny_run_overrides

    cfg = fk.load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path) + [
        # a 32-wide, 2-block toy: the 0.99 subspaces would leave LoRA almost no direction to move in
        "method={name: fg_oriu, energy: 0.9}", "protocol.num_requests=2", "train.steps=48"])
    requests = fk.run_requests(cfg, progress=False).requests
    assert requests[0].before["acc_f"] >= 50
    assert all(t.after["acc_f"] <= t.before["acc_f"] - 20 for t in requests), [t.after for t in requests]
    assert set(requests[1].stats["subspace_dims"]) == {"forget", "retain", "retain_inputs"}
