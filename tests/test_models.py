import pickle
import re

import pytest
import torch

import forgetkit as fk
from forgetkit.errors import ForgetkitError
from forgetkit.io import load_weights
from forgetkit.models import CosFaceHead, ForgetModel, PRESETS, load_model, model_spec, save_model
from forgetkit.models.checkpoint import load_external_weights


@pytest.mark.parametrize("arch", PRESETS.names())
def test_every_preset_builds_runs_and_declares_lora_targets_and_groups(arch):
    spec = model_spec(arch, 7)
    model = ForgetModel(spec).eval()
    x = torch.randn(2, spec.in_chans, spec.image_size, spec.image_size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and re.fullmatch(spec.lora_targets, n)]
    assert len(targets) == 2 * spec.depth  # fc1 and fc2 of every block, nothing else
    assert all(n.endswith(("mlp.fc1", "mlp.fc2")) for n in targets)
    groups = {re.search(spec.group_pattern, n).group(1) for n in targets}
    assert groups == {str(i) for i in range(spec.depth)}


def test_face_preset_matches_the_paper_geometry():
    model = fk.create_model("face_vit_p8s8", 100)
    n = sum(p.numel() for p in model.parameters())
    assert n == 19_157_504  # gs-lora.md §1.1, the denominator of the paper's "tunable ratio"
    attn = model.backbone.blocks[0].attn
    assert attn.scale == pytest.approx(512 ** -0.5) and not attn.fused_attn
    assert isinstance(model.head, CosFaceHead)


def test_cosface_margin_only_with_labels():
    head = CosFaceHead(4, 3, scale=10.0, margin=0.5)
    emb = torch.randn(2, 4)
    labels = torch.tensor([0, 2])
    plain, margin = head(emb), head(emb, labels)
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(head.weight).T
    assert torch.allclose(plain, 10 * cos, atol=1e-6)
    expected = plain.clone()
    expected[0, 0] -= 5.0
    expected[1, 2] -= 5.0
    assert torch.allclose(margin, expected, atol=1e-6)


def test_checkpoint_roundtrip_and_fingerprint(tmp_path):
    model = fk.create_model("vit_test", 3)
    save_model(model, tmp_path / "m", ["a", "b", "c"], note="x")
    loaded, manifest = load_model(tmp_path / "m")
    assert manifest["classes"] == ["a", "b", "c"] and manifest["note"] == "x"
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model.eval()(x), loaded(x))
    assert manifest["fingerprint"] == fk.models.fingerprint(loaded)


def test_architecture_mismatch_is_explained(tmp_path):
    save_model(fk.create_model("vit_test", 3), tmp_path / "m", ["a", "b", "c"])
    manifest = (tmp_path / "m" / "manifest.json")
    manifest.write_text(manifest.read_text().replace('"depth": 2', '"depth": 3'))
    with pytest.raises(ForgetkitError, match="architecture .* does not match.*missing"):
        load_model(tmp_path / "m")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ForgetkitError, match="not a forgetkit checkpoint"):
        load_model(tmp_path)


class Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickled_pth_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ForgetkitError, match="weights_only=True"):
        load_weights(path)
    path.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ForgetkitError, match="refusing"):
        load_weights(path)


def test_plain_state_dict_pth_is_accepted(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    assert torch.equal(load_weights(tmp_path / "ok.pth")["w"], torch.ones(2))


def test_torchvision_vit_weights_convert_exactly(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    tv = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128,
                           num_classes=5).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = load_external_weights(tmp_path / "tv.pth", "vit_test", 5, in_chans=3)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(tv(x), ours(x), atol=1e-5)
    picked = load_external_weights(tmp_path / "tv.pth", "vit_test", 2, class_indices=[4, 1], in_chans=3)
    with torch.no_grad():
        assert torch.allclose(tv(x)[:, [4, 1]], picked(x), atol=1e-5)


def test_timm_vit_weights_load(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    timm_vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=2,
                                 num_heads=2).eval()
    save_file(timm_vit.state_dict(), str(tmp_path / "t.safetensors"))
    ours = load_external_weights(tmp_path / "t.safetensors", "vit_test", 3)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(timm_vit(x), ours(x), atol=1e-5)
    with pytest.raises(ForgetkitError, match="does not match"):
        load_external_weights(tmp_path / "t.safetensors", "vit_fmnist", 3)
