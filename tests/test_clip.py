"""Zero-shot CLIP forgetting: loss, LoRA, target re-drawing, names, checkpoints, bad input, a whole run."""

from __future__ import annotations

import json
import math

import pytest
import torch

import forgetkit as fk
from forgetkit.clip import (
    ProjectionLoRA,
    TextForgetConfig,
    ZeroShotClassifier,
    create_clip,
    empty_prompt_target,
    forget_text_classes,
    load_clip,
    read_names,
    save_clip,
    text_forget_loss,
)
from forgetkit.clip.pretrain import class_aware_clip_loss
from forgetkit.clip.text_forget import fit_projection_lora
from forgetkit.clip.zeroshot import projection
from forgetkit.config import from_dict
from forgetkit.data import DataConfig, load_data
from forgetkit.errors import ForgetkitError

CLASSES = [f"class_{i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny_clip():
    return create_clip("clip_test", seed=0)


@pytest.fixture
def names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# test list\nclass_0: zeroth thing, first item\nclass_1: second item\nwidget\nclass_0x\n")
    return path


def test_loss_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 4, generator=gen)
    lora = ProjectionLoRA(w0, rank=2, lora_alpha=1.0, generator=gen)
    with torch.no_grad():
        lora.B.copy_(torch.randn(3, 2, generator=gen))
    hf, hr = torch.randn(2, 4, generator=gen), torch.randn(5, 4, generator=gen)
    target = torch.randn(2, 3, generator=gen)
    cfg = TextForgetConfig(lambda_r=0.3, lambda_w=0.7)
    got = text_forget_loss(lora, hf, target, hr, cfg, lambda_f=1.3)
    w = w0 + 0.5 * lora.B.detach() @ lora.A.detach()   # scaling 1/2
    fro = lambda m: math.sqrt(float((m ** 2).sum()))  # noqa: E731
    forget, retain = fro(target - hf @ w.T), fro(hr @ w0.T - hr @ w.T)
    size = fro(lora.B.detach() @ lora.A.detach())          # unscaled, not squared
    assert got["forget"].item() == pytest.approx(forget, rel=1e-5)
    assert got["retain"].item() == pytest.approx(retain, rel=1e-5)
    assert got["weight"].item() == pytest.approx(size, rel=1e-5)
    assert got["loss"].item() == pytest.approx(1.3 * forget + 0.3 * retain + 0.7 * size, rel=1e-5)


def test_lora_starts_at_zero_update_and_copies_w0():
    w0 = torch.randn(3, 4)
    lora = ProjectionLoRA(w0, rank=5, lora_alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lora.weight(), w0) and lora.scaling == pytest.approx(0.2)
    w0.add_(1.0)                                   # the LoRA holds a copy, never the model's storage
    assert not torch.equal(lora.w0, w0)


def test_fit_sends_forget_features_to_the_target_and_keeps_retained_ones():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 12, generator=gen) / 3
    h_f, h_r = torch.randn(1, 12, generator=gen), torch.randn(6, 12, generator=gen)
    target = torch.nn.functional.normalize(torch.randn(1, 6, generator=gen), dim=1)
    cfg = TextForgetConfig(steps=400, lambda_f=1.3, lambda_r=0.3, lambda_w=0.01)
    (_loss, w, _step), start, end = fit_projection_lora(w0, h_f, target, h_r, cfg, 1.3, gen)
    assert end["forget"] < 0.3 * start["forget"]
    assert (h_f @ w.T - target).norm() < 0.3 * (h_f @ w0.T - target).norm()
    assert (h_r @ w.T - h_r @ w0.T).norm() < 0.3 * (h_r @ w0.T).norm()
    assert torch.linalg.matrix_rank(w - w0).item() <= cfg.rank


def test_forgetting_leaves_the_model_untouched(tiny_clip):
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    cfg = TextForgetConfig(steps=50, max_trials=2)
    new_p, info = forget_text_classes(tiny_clip, ["class_0"], ["widget", "gadget"], CLASSES, cfg,
                                      torch.Generator().manual_seed(0))
    after = tiny_clip.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "only the returned projection may change"
    p0 = projection(tiny_clip.model)[0]
    assert new_p.shape == p0.shape and not torch.allclose(new_p, p0)
    assert info["trials"] in (1, 2) and info["loss_end"]["forget"] < info["loss_start"]["forget"]


def test_retry_raises_lambda_f_until_the_forget_term_falls_enough(tiny_clip):
    # 1 step can never reduce the forget term by 70 %: every trial is rejected and λ_f rises by the step each time
    cfg = TextForgetConfig(steps=1, max_trials=4, lambda_f=1.0, lambda_f_step=0.05)
    _p, info = forget_text_classes(tiny_clip, ["class_1"], ["widget"], CLASSES, cfg, torch.Generator().manual_seed(0))
    assert info["trials"] == 4 and not info["accepted"]
    assert info["lambda_f"] == pytest.approx(1.15)


def test_keep_last_versus_best(tiny_clip):
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    _p, best = forget_text_classes(tiny_clip, ["class_1"], ["widget"], CLASSES,
                                   TextForgetConfig(steps=30, lr=0.5, max_trials=1), gen())
    _p, last = forget_text_classes(tiny_clip, ["class_1"], ["widget"], CLASSES,
                                   TextForgetConfig(steps=30, lr=0.5, max_trials=1, keep="last"), gen())
    assert last["kept_step"] == 29
    assert best["loss_end"]["loss"] <= last["loss_end"]["loss"] + 1e-6


def test_empty_prompt_target_and_its_redraw(tiny_clip):
    empty = tiny_clip.model.encode_text(tiny_clip.tokenize([""]))[0].detach()
    unit = empty / empty.norm()
    names = tiny_clip.model.encode_text(tiny_clip.tokenize([c.replace("_", " ") for c in CLASSES]),
                                        normalize=True).detach()
    nearest = CLASSES[int((names @ unit).argmax())]
    other = next(c for c in CLASSES if c != nearest)
    cfg = TextForgetConfig()
    target, draws = empty_prompt_target(tiny_clip, CLASSES, [other], cfg, torch.Generator().manual_seed(0))
    assert draws == 0 and torch.allclose(target, unit, atol=1e-6)
    target, draws = empty_prompt_target(tiny_clip, CLASSES, [nearest], cfg, torch.Generator().manual_seed(0))
    assert draws >= 1 and target.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert CLASSES[int((names @ target).argmax())] != nearest
    with pytest.raises(ForgetkitError, match="re-draws"):
        empty_prompt_target(tiny_clip, CLASSES, CLASSES, TextForgetConfig(max_resamples=3),
                            torch.Generator().manual_seed(0))


def test_names_retain_set_drops_the_forgotten_class_and_its_aliases(names_file):
    names = read_names(names_file, CLASSES)
    retain = names.retain_names(CLASSES, ["class_0"])
    assert retain == ["second item", "widget", "class_0x"]
    assert names.retain_names(CLASSES, ["class_1"]) == ["zeroth thing", "first item", "widget", "class_0x"]


@pytest.mark.parametrize("text,match", [("# only a comment\n\n", "empty"), ("dog: puppy\n", "not a class")])
def test_names_bad_input(tmp_path, text, match):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ForgetkitError, match=match):
        read_names(path, CLASSES)


def test_unknown_and_empty_forget_requests(tiny_clip):
    with pytest.raises(ForgetkitError, match="unknown class 'Dog'"):
        forget_text_classes(tiny_clip, ["Dog"], [], CLASSES, TextForgetConfig(), torch.Generator())
    with pytest.raises(ForgetkitError, match="nothing to forget"):
        forget_text_classes(tiny_clip, [], [], CLASSES, TextForgetConfig(), torch.Generator())


def test_checkpoint_round_trip_and_local_state_dict_files(tiny_clip, tmp_path):
    save_clip(tiny_clip, tmp_path / "ckpt")
    loaded = load_clip(tmp_path / "ckpt")
    tokens = tiny_clip.tokenize(["a photo of a class_2."])
    assert torch.allclose(loaded.model.encode_text(tokens), tiny_clip.model.encode_text(tokens))
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_clip.model.state_dict().items()}}, tmp_path / "w.pth")
    from_pth = load_clip(tmp_path / "w.pth", arch="clip_test")
    assert torch.allclose(from_pth.model.encode_text(tokens), tiny_clip.model.encode_text(tokens))


def test_half_precision_checkpoint_is_the_model_it_fingerprints(tmp_path):
    from safetensors.torch import load_file

    from forgetkit.models.checkpoint import fingerprint

    tiny_clip = create_clip("clip_test", seed=0)  # its own copy: saving in float16 rounds the model
    unrounded = tiny_clip.model.text_projection.detach().clone()
    save_clip(tiny_clip, tmp_path / "half", weights_dtype="float16")
    stored = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert stored["text_projection"].dtype == torch.float16
    assert not torch.equal(unrounded, tiny_clip.model.text_projection)        # the saved model was rounded ...
    assert torch.equal(unrounded.half().float(), tiny_clip.model.text_projection)   # ... to float16 precision
    loaded = load_clip(tmp_path / "half")
    assert loaded.model.text_projection.dtype == torch.float32
    assert fingerprint(loaded.model) == loaded.manifest["fingerprint"] == fingerprint(tiny_clip.model)
    assert loaded.manifest["weights_dtype"] == "float16"
    with pytest.raises(ForgetkitError, match="weights_dtype must be one of"):
        save_clip(tiny_clip, tmp_path / "bad", weights_dtype="int8")


def test_open_clip_architecture_from_a_local_file(tmp_path):
    import open_clip

    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1,
                                          "head_width": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "forgetkit-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "forgetkit-test-tiny.json")
    model = open_clip.create_model("forgetkit-test-tiny", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    bundle = load_clip(tmp_path / "tiny.pt", arch="forgetkit-test-tiny")
    tokens = bundle.tokenize(["shoe"])
    assert torch.allclose(bundle.model.encode_text(tokens), model.eval().encode_text(tokens))
    with pytest.raises(ForgetkitError, match="does not match"):
        load_clip(tmp_path / "tiny.pt", arch="clip_test")


def test_files_that_are_not_clip(tiny_clip, tmp_path):
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "not_clip.pth")
    with pytest.raises(ForgetkitError, match="not a CLIP checkpoint"):
        load_clip(tmp_path / "not_clip.pth")
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "manifest.json").write_text(json.dumps({"format": "forgetkit-model"}))
    with pytest.raises(ForgetkitError, match="not a CLIP checkpoint"):
        load_clip(tmp_path / "classifier")
    torch.save(tiny_clip.model.state_dict(), tmp_path / "clip.pth")
    with pytest.raises(ForgetkitError, match="unknown CLIP architecture"):
        load_clip(tmp_path / "clip.pth", arch="ViT-Nope")
    with pytest.raises(ForgetkitError, match="not an OpenAI-format CLIP state dict"):
        load_clip(tmp_path / "clip.pth")                     # an open_clip file needs its architecture name


def test_class_aware_loss_counts_same_class_pairs_as_positives():
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 2])
    matched = class_aware_clip_loss(img, img.clone(), labels, torch.tensor(10.0))
    # swapping the two same-class texts changes nothing; swapping across classes does
    swapped_same = class_aware_clip_loss(img, img[[1, 0, 2, 3]], labels, torch.tensor(10.0))
    swapped_other = class_aware_clip_loss(img, img[[2, 1, 0, 3]], labels, torch.tensor(10.0))
    assert swapped_same.item() == pytest.approx(matched.item(), rel=1e-5)
    assert swapped_other.item() > matched.item()


def test_mnist_5k_source():
    splits = load_data(DataConfig(source="mnist_5k"))
    assert len(splits.train) + len(splits.test) == 5000 and 3900 <= len(splits.train) <= 4010
    assert splits.train.classes[3] == "three"
    counts = torch.bincount(splits.test.targets, minlength=10)
    assert (counts > 50).all()


def clip_run(tmp_path, names_file, **sections):
    """The CLIP demo's config on a tiny CLIP and synthetic data."""
    from forgetkit.engine.config import RunConfig

    synthetic = {"source": "synthetic", "num_classes": 6, "test_per_class": 10}
    cfg = {"model": str(tmp_path / "ckpt"), "data": synthetic,
           "protocol": {"requests": [["class_0"], ["class_0", "class_1", "class_2"]], "independent": True,
                        "forget_ratio": 0.2, "retain_ratio": 0.2},
           "method": {"name": "clip_text", "steps": 60, "names": str(names_file)},
           "eval": {"other_data": [{**synthetic, "seed": 1}]}, "save_model": False,
           "train": {"threads": 1}, "output_dir": str(tmp_path / "run")}
    for key, value in sections.items():  # a section is updated, the method section replaced
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key != "method" else value
    return from_dict(RunConfig, cfg)


def test_text_forgetting_runs_through_the_shared_runner(tiny_clip, tmp_path, names_file):
    from forgetkit.engine import run_requests

    save_clip(tiny_clip, tmp_path / "ckpt")
    results = run_requests(clip_run(tmp_path, names_file), progress=False)
    first, second = results.requests
    assert results.method == "clip_text" and second.classes == ["class_0", "class_1", "class_2"]
    # independent requests: each starts from the original CLIP, so both have the same "before"
    assert first.before["acc_r"] is not None and first.per_class["before"] == second.per_class["before"]
    for request in results.requests:
        for when in ("before", "after"):
            assert set(getattr(request, when)) >= {"acc_f", "acc_r", "acc_other", "acc_other_per_dataset"}
        assert "pass" in request.verdict
    assert first.stats["retain_names"] == ["second item", "widget", "class_0x"]
    assert first.trainable_params == 5 * (tiny_clip.model.text_projection.shape[0]
                                             + tiny_clip.model.text_projection.shape[1])
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "log.csv").is_file()
    assert len(results.ledger) == 2 and results.ledger[0]["method"] == "clip_text"


def test_a_clip_checkpoint_is_edited_saved_and_replayed(tiny_clip, tmp_path, names_file, tiny_model_dir):
    """Sequential requests on a CLIP: the edited CLIP is saved with its ledger, whose text-projection edits replay
    to its weights."""
    import forgetkit as fk
    from forgetkit.engine import run_requests

    save_clip(tiny_clip, tmp_path / "ckpt")
    cfg = clip_run(tmp_path, names_file, protocol={"requests": [["class_0"], ["class_3"]], "independent": False},
                   save_model=True)
    results = run_requests(cfg, progress=False)
    assert results.requests[1].old_classes == ["class_0"]
    ledger, manifest = fk.read_ledger(tmp_path / "run" / "model")
    assert [e["edit"]["type"] for e in ledger] == ["text_projection", "text_projection"]
    assert fk.fingerprint(fk.replay_ledger(tmp_path / "run" / "model")) == manifest["fingerprint"]
    with pytest.raises(ForgetkitError, match="no one edited model to save"):
        run_requests(clip_run(tmp_path, names_file, save_model=True), progress=False, overwrite=True)
    with pytest.raises(ForgetkitError, match="unknown class 'class_9'"):
        run_requests(clip_run(tmp_path, names_file, protocol={"requests": [["class_9"]]}), progress=False,
                       overwrite=True)
    with pytest.raises(ForgetkitError, match="clip_text needs a model with text_projection"):  # a ViT classifier
        run_requests(clip_run(tmp_path, names_file, model=str(tiny_model_dir), eval={"other_data": []},
                                protocol={"requests": [["class_0"]]}), progress=False, overwrite=True)


def test_a_local_clip_weights_file_runs_through_the_runner(tiny_clip, tmp_path, names_file):
    from forgetkit.engine import run_requests

    torch.save(tiny_clip.model.state_dict(), tmp_path / "clip.pth")
    cfg = clip_run(tmp_path, names_file, model=str(tmp_path / "clip.pth"), model_arch="clip_test",
                   protocol={"requests": [["class_1"]]})
    assert run_requests(cfg, progress=False).requests[0].classes == ["class_1"]
    cfg.save_model, cfg.protocol.independent = True, False
    with pytest.raises(ForgetkitError, match="weights file.*save_model: false"):
        run_requests(cfg, progress=False, overwrite=True)


def test_gs_lora_edits_the_image_tower_of_a_zero_shot_classifier(tiny_clip, tmp_path, names_file):
    from forgetkit.engine import run_requests
    from forgetkit.models import fingerprint

    save_clip(tiny_clip, tmp_path / "ckpt")
    cfg = clip_run(tmp_path, names_file, method={"name": "gs_lora", "lora": {"rank": 2}, "alpha": 0.0},
                   train={"steps": 8, "batch_size": 8}, protocol={"requests": [["class_0"]]})
    results = run_requests(cfg, progress=False)
    request = results.requests[0]
    assert request.stats["num_groups"] == 2 and request.forget_images == 12  # one lasso group per image-tower block
    assert request.fingerprint_after != request.fingerprint_before
    assert "acc_other" in request.after
    classifier = ZeroShotClassifier(tiny_clip, CLASSES)
    assert fingerprint(classifier) == request.fingerprint_before   # the loaded CLIP was edited, not this one


def test_clip_demo_command_and_alias(tiny_clip, tmp_path, names_file, capsys):
    from forgetkit.cli import main

    save_clip(tiny_clip, tmp_path / "ckpt")
    synthetic = "{source: synthetic, num_classes: 6, test_per_class: 5}"
    args = ["clip-forget", "-c", "clip_demo", "-q", "--allow-fail", "-o", f"model={tmp_path / 'ckpt'}", "-o",
            f"data={synthetic}", "-o", "eval.other_data=[]", "-o", f"method.names={names_file}", "-o",
            "protocol.requests=[[class_2]]", "-o", "method.steps=20", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "| clip_text |" in capsys.readouterr().out
    assert main(args) == 2 and "already holds a finished run (results.json)" in capsys.readouterr().err
    assert main(args[:-2] + ["-o", "method.stepz=3"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert main(["config", "clip_text"]) == 0
    assert "method.lambda_f" in capsys.readouterr().out


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_shipped_clip_is_a_working_zero_shot_classifier():
    from forgetkit.clip.zeroshot import accuracy_over, class_weights, image_features
    from forgetkit.models.formats import BUILTIN_MODELS

    bundle = load_clip(BUILTIN_MODELS["builtin:clip_fmnist"])
    test = load_data(DataConfig(source="fashion_mnist")).test
    subset = test.subset(torch.arange(0, len(test), 20))          # 500 images, every class
    feats, labels = image_features(bundle, subset)
    assert accuracy_over(feats, labels, class_weights(bundle, test.classes)) >= 70.0


def test_openai_format_state_dict_needs_no_architecture_name(tmp_path):
    import open_clip

    # OpenAI-format: the architecture is read from tensor shapes (heads = width / 64, QuickGELU)
    model = open_clip.CLIP(embed_dim=32, quick_gelu=True,
                           vision_cfg={"image_size": 16, "patch_size": 8, "width": 64, "layers": 1, "head_width": 64},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1})
    torch.save(model.state_dict(), tmp_path / "openai.pt")
    bundle = load_clip(tmp_path / "openai.pt")
    tokens, image = bundle.tokenize(["a shoe"]), torch.randn(1, 3, 16, 16)
    assert bundle.manifest["arch"] == "openai"
    assert torch.allclose(bundle.model.encode_text(tokens), model.eval().encode_text(tokens), atol=1e-5)
    assert torch.allclose(bundle.model.encode_image(image), model.encode_image(image), atol=1e-5)


def test_text_forget_keep_is_a_choice_refused_in_python_and_in_yaml():
    with pytest.raises(ForgetkitError, match=r"method\(clip_text\)\.keep must be one of best, last; got 'first'"):
        TextForgetConfig(keep="first")
    with pytest.raises(ForgetkitError, match="keep must be one of best, last"):
        fk.load_config("clip_demo", ["method.keep=first"])
