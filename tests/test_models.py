import pickle
import re

import pytest
import torch

import forgetkit as fk
from forgetkit.errors import ForgetkitError
from forgetkit.io import load_weights
from forgetkit.models import PRESETS, CosFaceHead, ForgetModel, load_model, model_spec, save_model
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
    # another preset: the geometry comes from the weights, but the head count must be given (no shape shows it)
    with pytest.raises(ForgetkitError, match="embed_dim 32, not the vit_fmnist preset's 128.*-o num_heads=H"):
        load_external_weights(tmp_path / "t.safetensors", "vit_fmnist", 3)
    read = load_external_weights(tmp_path / "t.safetensors", "vit_fmnist", 3, num_heads=2)
    assert read.imported_geometry["adopted"] == {"embed_dim": 32, "depth": 2, "patch_size": 4, "image_size": 16}
    with torch.no_grad():
        assert torch.allclose(timm_vit(x), read(x), atol=1e-5)
    with pytest.raises(ForgetkitError, match="does not match"):  # a field only the key names show (qkv bias)
        load_external_weights(tmp_path / "t.safetensors", "vit_fmnist", 3, num_heads=2, qkv_bias=False)


def face_transformer_state(dim=32, depth=2, mlp=128, patch=4, chans=3, tokens=17, classes=5, seed=0):
    """Random weights under the key names of the Face Transformer's ViT_face (CosFace head)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, base=0.0):
        return base + scale * torch.randn(*shape, generator=gen)

    state = {"pos_embedding": rand(1, tokens, dim), "cls_token": rand(1, 1, dim),
             "patch_to_embedding.weight": rand(dim, patch * patch * chans), "patch_to_embedding.bias": rand(dim),
             "mlp_head.0.weight": rand(dim, base=1.0), "mlp_head.0.bias": rand(dim), "loss.weight": rand(classes, dim)}
    for i in range(depth):
        pre = f"transformer.layers.{i}."
        state |= {pre + "0.fn.norm.weight": rand(dim, base=1.0), pre + "0.fn.norm.bias": rand(dim),
                  pre + "0.fn.fn.to_qkv.weight": rand(3 * dim, dim),
                  pre + "0.fn.fn.to_out.0.weight": rand(dim, dim), pre + "0.fn.fn.to_out.0.bias": rand(dim),
                  pre + "1.fn.norm.weight": rand(dim, base=1.0), pre + "1.fn.norm.bias": rand(dim),
                  pre + "1.fn.fn.net.0.weight": rand(mlp, dim), pre + "1.fn.fn.net.0.bias": rand(mlp),
                  pre + "1.fn.fn.net.3.weight": rand(dim, mlp), pre + "1.fn.fn.net.3.bias": rand(dim)}
    return state


def face_transformer_forward(state, img, patch, heads, depth, scale=64.0):
    """The Face Transformer's forward written from its description (gs-lora.md §1.1), independent of timm:
    patches flattened as (p1 p2 c), pre-norm blocks with LayerNorm eps 1e-5, softmax scale dim**-0.5, class-token
    pooling, LayerNorm, CosFace cosine logits."""
    F = torch.nn.functional
    b, c, h, w = img.shape
    x = img.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
    x = x.reshape(b, -1, patch * patch * c)
    x = F.linear(x, state["patch_to_embedding.weight"], state["patch_to_embedding.bias"])
    x = torch.cat([state["cls_token"].expand(b, -1, -1), x], dim=1) + state["pos_embedding"]
    n, dim = x.shape[1], x.shape[2]

    def norm(t, key):
        return F.layer_norm(t, (dim,), state[key + ".weight"], state[key + ".bias"], eps=1e-5)

    for i in range(depth):
        pre = f"transformer.layers.{i}."
        q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2)
                   for t in F.linear(norm(x, pre + "0.fn.norm"), state[pre + "0.fn.fn.to_qkv.weight"]).chunk(3, -1))
        attn = (q @ k.transpose(-1, -2) * dim ** -0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + F.linear(out, state[pre + "0.fn.fn.to_out.0.weight"], state[pre + "0.fn.fn.to_out.0.bias"])
        hidden = F.gelu(F.linear(norm(x, pre + "1.fn.norm"), state[pre + "1.fn.fn.net.0.weight"],
                                 state[pre + "1.fn.fn.net.0.bias"]))
        x = x + F.linear(hidden, state[pre + "1.fn.fn.net.3.weight"], state[pre + "1.fn.fn.net.3.bias"])
    emb = norm(x[:, 0], "mlp_head.0")
    return emb, scale * F.normalize(emb) @ F.normalize(state["loss.weight"]).T


FACE_TEST = dict(in_chans=3, qkv_bias=False, attn_scale="model_dim", head="cosface", norm_eps=1e-5)


def test_face_transformer_weights_convert_exactly(tmp_path):
    state = face_transformer_state()
    # as GS-LoRA saves it: through nn.DataParallel ("module."), with the last task's LoRA factors next to the
    # weights they were already merged into
    saved = {"module." + k: v for k, v in state.items()}
    saved["module.transformer.layers.0.1.fn.fn.net.0.lora_A"] = torch.randn(8, 32)
    saved["module.transformer.layers.0.1.fn.fn.net.0.lora_B"] = torch.randn(128, 8)
    torch.save(saved, tmp_path / "face.pth")
    ours = load_external_weights(tmp_path / "face.pth", "vit_test", 5, **FACE_TEST)
    x = torch.rand(3, 3, 16, 16)
    emb, logits = face_transformer_forward(state, x, patch=4, heads=2, depth=2)
    with torch.no_grad():
        assert torch.allclose(ours.embed(x), emb, atol=1e-5)
        assert torch.allclose(ours(x), logits, atol=1e-4)
        picked = load_external_weights(tmp_path / "face.pth", "vit_test", 2, class_indices=[3, 0], **FACE_TEST)
        assert torch.allclose(picked(x), logits[:, [3, 0]], atol=1e-4)


def test_face_transformer_mismatches_are_explained(tmp_path):
    torch.save(face_transformer_state(), tmp_path / "face.pth")
    with pytest.raises(ForgetkitError, match="patch_size"):
        load_external_weights(tmp_path / "face.pth", "vit_test", 5, **{**FACE_TEST, "patch_size": 8})
    with pytest.raises(ForgetkitError, match="-o depth=3 contradicts the weights.*whose depth is 2"):
        load_external_weights(tmp_path / "face.pth", "vit_test", 5, **{**FACE_TEST, "depth": 3})
    torch.save(face_transformer_state() | {"loss.kernel": torch.ones(1)}, tmp_path / "other.pth")
    with pytest.raises(ForgetkitError, match="unknown key loss.kernel"):
        load_external_weights(tmp_path / "other.pth", "vit_test", 5, **FACE_TEST)


def test_face_preset_has_no_dropout_on_the_final_embedding():
    """The Face Transformer drops out embeddings, attention and MLP outputs, but not its final embedding."""
    torch.manual_seed(0)
    model = fk.create_model("face_vit_p8s8", 5, depth=1, embed_dim=64, num_heads=2)
    x = torch.rand(2, 3, 112, 112)
    reference = model.eval().embed(x)
    model.train()
    for name, module in model.named_modules():  # every dropout before the pooled embedding off
        if isinstance(module, torch.nn.Dropout) and not name.endswith("head_drop"):
            module.eval()
    assert torch.allclose(model.embed(x), reference, atol=1e-6)
    model.train()
    assert not torch.allclose(model.embed(x), model.embed(x))  # the block dropouts themselves still act
