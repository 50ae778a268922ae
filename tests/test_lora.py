import pytest
import torch

import forgetkit as fk
from forgetkit.errors import ForgetkitError
from forgetkit.models import fingerprint, save_model
from forgetkit.models.lora import LoRASettings, add_lora, apply_adapter, lora_groups, merge_lora, save_adapter


def _trained_adapter(seed=0):
    torch.manual_seed(seed)
    model = fk.create_model("vit_test", 4).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_lora(model, LoRASettings(rank=4, lora_alpha=1.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as if trained: a non-zero update
    return peft_model, base


def test_fresh_adapter_changes_nothing_and_only_lora_trains():
    torch.manual_seed(0)
    model = fk.create_model("vit_test", 4).eval()
    x = torch.randn(3, 1, 16, 16)
    ref = model(x)
    peft_model = add_lora(model, LoRASettings(rank=8))
    assert torch.allclose(peft_model(x), ref)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    spec = model.spec
    hidden = int(spec.embed_dim * spec.mlp_ratio)
    # per block: fc1 (r·in + out·r) + fc2 (r·hidden + dim·r)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == \
        spec.depth * 2 * 8 * (spec.embed_dim + hidden)


def test_merged_outputs_equal_base_plus_adapter():
    peft_model, _ = _trained_adapter()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        adapted = peft_model(x)
        merged = merge_lora(peft_model)
        assert not any("lora_" in k for k in merged.state_dict())
        assert torch.allclose(merged(x), adapted, atol=1e-5)
        # and the update is really there: W_merged − W_base = B·A·scaling for a target layer
        layer = merged.backbone.blocks[0].mlp.fc1
    assert layer.weight.shape == (128, 32)


def test_merge_is_b_times_a_times_scaling():
    torch.manual_seed(1)
    model = fk.create_model("vit_test", 4)
    w0 = model.backbone.blocks[1].mlp.fc2.weight.detach().clone()
    peft_model = add_lora(model, LoRASettings(rank=2, lora_alpha=1.0))
    layer = peft_model.base_model.model.backbone.blocks[1].mlp.fc2
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        a, b = layer.lora_A["default"].weight.clone(), layer.lora_B["default"].weight.clone()
    merged = merge_lora(peft_model)
    assert torch.allclose(merged.backbone.blocks[1].mlp.fc2.weight, w0 + (b @ a) * 0.5, atol=1e-6)


def test_groups_one_per_block():
    peft_model, _ = _trained_adapter()
    groups = lora_groups(peft_model, peft_model.base_model.model.spec.group_pattern)
    assert list(groups) == ["0", "1"] and all(len(g) == 4 for g in groups.values())  # A,B of fc1 and fc2
    assert len(lora_groups(peft_model, "", "module")) == 4
    assert len(lora_groups(peft_model, "", "matrix")) == 8


def test_no_saved_checkpoint_applies_an_update_twice(tmp_path):
    peft_model, base = _trained_adapter()
    base_model = fk.create_model("vit_test", 4)
    base_model.load_state_dict(base)
    save_adapter(peft_model, tmp_path / "adapter", fingerprint(base_model), request=0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = peft_model(x)
    # a model with un-merged LoRA factors cannot be saved as a checkpoint
    with pytest.raises(ForgetkitError, match="un-merged LoRA"):
        save_model(peft_model.base_model.model, tmp_path / "bad", ["a", "b", "c", "d"])
    merged = merge_lora(peft_model)
    save_model(merged, tmp_path / "merged", ["a", "b", "c", "d"])
    reloaded, _ = fk.load_model(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(reloaded(x), expected, atol=1e-5)
    # the adapter re-applies exactly onto its own base...
    with torch.no_grad():
        assert torch.allclose(apply_adapter(base_model, tmp_path / "adapter").eval()(x), expected, atol=1e-5)
    # ...and is refused on the merged model, which already contains it
    with pytest.raises(ForgetkitError, match="trained on other weights"):
        apply_adapter(reloaded, tmp_path / "adapter")
