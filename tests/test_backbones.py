"""Bring your own backbone: a random-weight checkpoint of a small member of each family, imported as a user's
local file would be, forgets one class (docs/scaling.md)."""

import pytest
import torch
from conftest import make_image_folder
from safetensors.torch import save_file

import forgetkit as fk
from forgetkit.cli import main
from forgetkit.errors import ForgetkitError


def test_a_timm_vit_by_name_gets_its_geometry_preprocessing_and_lora_targets_from_timm():
    model = fk.create_model("timm:vit_tiny_patch16_224", 3, image_size=32)
    spec = model.spec
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.patch_size, spec.image_size) == (192, 12, 3, 16, 32)
    assert spec.mean == (0.5, 0.5, 0.5)  # from timm's pretrained config of that model
    targets = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and __import__("re").fullmatch(spec.lora_targets, n)}
    assert len(targets) == 24 and all(".mlp." in n for n in targets)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name, match", [("timm:resnet18", "not a VisionTransformer"),
                                         ("timm:no_such_model", "cannot build timm model")])
def test_a_timm_name_that_is_no_vit_is_refused_in_one_line(name, match):
    with pytest.raises(ForgetkitError, match=match):
        fk.create_model(name, 3)


def test_a_timm_models_fixed_geometry_cannot_be_overridden():
    with pytest.raises(ForgetkitError, match="fixed by the timm model"):
        fk.create_model("timm:vit_tiny_patch16_224", 3, embed_dim=64)


@pytest.mark.slow
def test_a_random_timm_checkpoint_imported_from_a_local_file_forgets_one_class(tmp_path):
    import timm

    torch.manual_seed(0)
    weights = tmp_path / "vit_tiny.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).state_dict(),
              str(weights))
    data = make_image_folder(tmp_path / "imgs", per_class=12, size=(32, 32))
    out = tmp_path / "ckpt"
    assert main(["import-weights", "--weights", str(weights), "--arch", "timm:vit_tiny_patch16_224",
                 "--data-root", str(data), "--out", str(out), "-q"]) == 0
    model, manifest = fk.load_model(out)
    assert manifest["spec"]["arch"] == "timm:vit_tiny_patch16_224" and manifest["spec"]["image_size"] == 32
    cfg = fk.load_config(None, [f"model={out}", "protocol.requests=[[cat]]", "train.steps=30", "train.batch_size=8",
                                "train.threads=1", "eval.forget_threshold=100", f"output_dir={tmp_path / 'run'}"])
    run = fk.run_requests(cfg, progress=False)
    before, after = run.requests[0].before, run.requests[0].after
    assert before["acc_f"] >= 10 and after["acc_f"] <= 5  # the class it recognised some of is gone
    assert run.requests[0].trainable_params < 0.1 * run.requests[0].total_params
    edited, _ = fk.load_model(tmp_path / "run" / "model")
    assert edited.spec.arch == "timm:vit_tiny_patch16_224"


def _best_known_class(checkpoint, data):
    """The class a random-weight model recognises most of (so that forgetting it is measurable)."""
    from forgetkit.data import DataConfig, load_data
    from forgetkit.metrics import evaluate_classes

    model, _ = fk.load_model(checkpoint)
    test = load_data(DataConfig(source="image_folder", root=str(data))).test.with_preprocess(model.spec.preprocess)
    counts = evaluate_classes(model, test)
    return test.classes[int(counts.correct.argmax())]


def _torchvision_weights(path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128,
                              num_classes=3)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts its head at zero: no gradient
    torch.save(model.state_dict(), path)  # a plain state dict: read with weights_only=True
    return ["--arch", "vit_test", "-o", "in_chans=3"]


def _face_transformer_weights(path):
    from test_models import FACE_TEST, face_transformer_state

    torch.save({"module." + k: v for k, v in face_transformer_state(classes=3).items()}, path)  # as GS-LoRA saves
    return ["--arch", "vit_test"] + [a for k, v in FACE_TEST.items() for a in ("-o", f"{k}={v}")]


@pytest.mark.slow
@pytest.mark.parametrize("family", [_torchvision_weights, _face_transformer_weights], ids=["torchvision", "face"])
def test_a_random_checkpoint_of_each_vit_family_imports_and_forgets_one_class(family, tmp_path):
    weights = tmp_path / "weights.pth"
    options = family(weights)
    data = make_image_folder(tmp_path / "imgs", per_class=12, size=(16, 16))
    out = tmp_path / "ckpt"
    assert main(["import-weights", "--weights", str(weights), "--data-root", str(data), "--out", str(out), "-q",
                 *options]) == 0
    cfg = fk.load_config(None, [f"model={out}", f"protocol.requests=[[{_best_known_class(out, data)}]]",
                                "train.steps=30", "train.batch_size=8", "train.threads=1",
                                f"output_dir={tmp_path / 'run'}", "eval.max_retain_drop=100"])
    request = fk.run_requests(cfg, progress=False).requests[0]
    assert request.before["acc_f"] >= 10 and request.after["acc_f"] <= 5
    assert request.stats["num_groups"] == 2  # one lasso group per block, found from the module names


@pytest.mark.slow
def test_an_open_clip_image_tower_from_a_local_state_dict_forgets_one_class(tmp_path):
    """A CLIP state-dict file (open_clip format, random weights) is a zero-shot classifier over the data's class
    names; GS-LoRA edits its image tower."""
    from forgetkit.clip.model import create_clip

    torch.save(create_clip("clip_test", seed=0).model.state_dict(), tmp_path / "clip.pth")
    cfg = fk.load_config(None, [f"model={tmp_path / 'clip.pth'}", "model_arch=clip_test", "data.source=synthetic",
                                "data.num_classes=6", "data.test_per_class=10", "protocol.requests=[[class_0]]",
                                "method.name=gs_lora", "method.alpha=0.0", "train.steps=30", "train.batch_size=8",
                                "train.threads=1", "save_model=false", "eval.max_retain_drop=100",
                                f"output_dir={tmp_path / 'run'}"])
    request = fk.run_requests(cfg, progress=False).requests[0]
    assert request.stats["num_groups"] == 2 and request.fingerprint_after != request.fingerprint_before
    assert request.after["acc_f"] <= min(5.0, request.before["acc_f"])


@pytest.mark.slow
def test_a_timm_weights_file_runs_directly_as_the_model_of_a_run(tmp_path):
    """``model: FILE`` with ``model_arch: timm:NAME``: imported when the run starts, head from the data's classes; the
    edited model is saved as a forgetkit checkpoint of that timm model."""
    import timm

    torch.manual_seed(0)
    weights = tmp_path / "vit_tiny.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).state_dict(),
              str(weights))
    data = make_image_folder(tmp_path / "imgs", per_class=12, size=(32, 32))
    overrides = [f"model={weights}", "model_arch=timm:vit_tiny_patch16_224", "data.source=image_folder",
                 f"data.root={data}", "protocol.requests=[[cat]]", "train.steps=30", "train.batch_size=8",
                 "train.threads=1", "eval.forget_threshold=100", f"output_dir={tmp_path / 'run'}"]
    run = fk.run_requests(fk.load_config(None, overrides), progress=False)
    assert run.requests[0].after["acc_f"] <= 5
    edited, manifest = fk.load_model(tmp_path / "run" / "model")
    assert edited.spec.arch == "timm:vit_tiny_patch16_224" and edited.spec.image_size == 32
    assert manifest["classes"] == ["cat", "dog", "fox"]  # the head was built from the data's classes
    with pytest.raises(ForgetkitError, match="timm:vit_tiny_patch16_224"):  # the prefix forgotten
        fk.run_requests(fk.load_config(None, [*overrides[:1], "model_arch=vit_tiny_patch16_224", *overrides[2:-1],
                                              f"output_dir={tmp_path / 'mistake'}"]))
