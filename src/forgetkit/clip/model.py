"""CLIP models for forgetkit: small open_clip presets, forgetkit CLIP checkpoints and local open_clip / OpenAI files.

A forgetkit CLIP checkpoint is a folder::

    model.safetensors   the weights
    manifest.json       format, the open_clip model config, preprocessing, fingerprint, ledger of edits (docs/ledger.md)

Nothing is downloaded: an open_clip architecture is built from its config (``open_clip.create_model`` with no
``pretrained`` tag) and the weights come from a local file, read as safetensors or with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Preprocess
from ..errors import ForgetkitError
from ..extras import require
from ..io import load_weights, save_weights, write_json
from ..models.checkpoint import fingerprint, load_state_strict, read_manifest
from ..registry import Registry

open_clip = require("open_clip", "a CLIP model")  # the clip extra, before anything else of CLIP
SimpleTokenizer = open_clip.tokenizer.SimpleTokenizer

FORMAT = "forgetkit-clip"
CLIP_PRESETS: Registry = Registry("CLIP preset")
CLIP_FIX = "choose the open_clip architecture the weights were trained with"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@CLIP_PRESETS.register("clip_fmnist")
def clip_fmnist() -> dict:
    """The embedded demo's CLIP: 28 px ViT image tower (patch 7, width 128, 4 blocks), 2-block text tower."""
    return {"embed_dim": 64,
            "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 128, "layers": 4, "head_width": 32,
                           "mlp_ratio": 4.0},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@CLIP_PRESETS.register("clip_test")
def clip_test() -> dict:
    """A very small CLIP for tests (16 px, 2 blocks per tower)."""
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
            "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


@dataclass
class ClipBundle:
    """A CLIP model with what it needs to be used: its tokenizer, image preprocessing and manifest."""

    model: open_clip.CLIP
    tokenizer: SimpleTokenizer
    preprocess: Preprocess
    manifest: dict

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)


def _bundle(model: open_clip.CLIP, manifest: dict) -> ClipBundle:
    if not isinstance(getattr(model, "text_projection", None), (torch.nn.Parameter, torch.nn.Linear)):
        raise ForgetkitError("this CLIP has no text projection matrix (e.g. a Hugging Face text tower); text-space "
                             "forgetting needs an open_clip CLIP with a `text_projection`")
    model.eval()
    pre = manifest.get("preprocess") or {}
    visual = model.visual
    size = pre.get("image_size") or (visual.image_size[0] if isinstance(visual.image_size, (tuple, list))
                                     else visual.image_size)
    preprocess = Preprocess(image_size=int(size), in_chans=3, mean=tuple(pre.get("mean", OPENAI_MEAN)),
                            std=tuple(pre.get("std", OPENAI_STD)))
    tokenizer = SimpleTokenizer(context_length=model.context_length)  # the BPE vocabulary ships with open_clip
    return ClipBundle(model, tokenizer, preprocess, manifest)


def create_clip(preset: str, seed: int = 0, mean=(0.5,) * 3, std=(0.5,) * 3) -> ClipBundle:
    """A randomly initialised CLIP from a forgetkit preset (``forgetkit clip-pretrain`` trains it)."""
    model_cfg = CLIP_PRESETS.get(preset)()
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    manifest = {"format": FORMAT, "preset": preset, "model_cfg": model_cfg,
                "preprocess": {"image_size": model_cfg["vision_cfg"]["image_size"], "mean": list(mean),
                               "std": list(std)}, "ledger": []}
    return _bundle(model, manifest)


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@torch.no_grad()
def round_weights(model: torch.nn.Module, weights_dtype: str) -> None:
    """Round every floating tensor of ``model`` in place to ``weights_dtype`` precision (it stays float32).

    Rounding before evaluating and saving makes the evaluated model, the saved file and its fingerprint one model.
    """
    if weights_dtype not in WEIGHT_DTYPES:
        raise ForgetkitError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, not {weights_dtype!r}")
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(WEIGHT_DTYPES[weights_dtype]))


def save_clip(bundle: ClipBundle, directory: str | Path, weights_dtype: str = "float32", **extra) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` atomically (results.json-style: manifest last).

    ``weights_dtype: float16`` halves the file; the bundle's model is first rounded to that precision, so that it
    is the model the file holds. Loading always gives a float32 model.
    """
    directory = Path(directory)
    if "model_cfg" not in bundle.manifest:
        raise ForgetkitError("only CLIPs built from a config can be saved as forgetkit checkpoints; save the "
                             "edited weights of an external CLIP with save_weights(model.state_dict())")
    round_weights(bundle.model, weights_dtype)
    dtype = WEIGHT_DTYPES[weights_dtype]
    save_weights(directory / "model.safetensors", {k: v.to(dtype) if v.is_floating_point() else v
                                                   for k, v in bundle.model.state_dict().items()})
    manifest = {**bundle.manifest, "weights_dtype": weights_dtype, "fingerprint": fingerprint(bundle.model), **extra}
    write_json(directory / "manifest.json", manifest)
    return directory


def _state_from_file(path: Path) -> dict[str, torch.Tensor]:
    state = load_weights(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ForgetkitError(f"{path} does not hold a flat state dict of tensors; save the CLIP's state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_clip(source: str | Path, arch: str | None = None) -> ClipBundle:
    """Load a CLIP from a forgetkit checkpoint folder, or from a local weights file.

    A file needs ``arch`` (an open_clip architecture name such as ``ViT-B-16`` or ``RN50``), unless it is an
    OpenAI-format state dict, whose architecture is read from its tensor shapes. TorchScript archives (the original
    OpenAI ``.pt`` downloads) are refused: convert them once with ``torch.save(torch.jit.load(f).state_dict(),
    out)`` on a machine you trust.
    """
    path = Path(source)
    if path.is_dir():
        manifest = read_manifest(path, FORMAT, "CLIP checkpoint", "give a folder written by `forgetkit clip-pretrain`"
                                 ", or the weights file itself with `arch` for an open_clip state dict")
        model = open_clip.CLIP(**manifest["model_cfg"])
        load_state_strict(model, _state_from_file(path / "model.safetensors"), str(path), CLIP_FIX)
        return _bundle(model, manifest)
    if not path.is_file():
        raise ForgetkitError(f"CLIP checkpoint {path} does not exist")
    state = _state_from_file(path)
    if "text_projection" not in state or "token_embedding.weight" not in state:
        raise ForgetkitError(f"{path} is not a CLIP checkpoint (no text_projection / token_embedding); give an "
                             f"open_clip or OpenAI CLIP state dict")
    if arch is None:
        try:
            model = open_clip.model.build_model_from_openai_state_dict(dict(state), cast_dtype=None).float()
            # the builder loads into fp16 copies (OpenAI's files are half precision); load the file's own values
            state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
            load_state_strict(model, {k: v.float() for k, v in state.items()}, str(path), CLIP_FIX)
        except (KeyError, AssertionError, RuntimeError, ValueError, ZeroDivisionError) as err:
            raise ForgetkitError(f"{path}: not an OpenAI-format CLIP state dict ({err}); pass the open_clip "
                                 f"architecture name (e.g. arch='ViT-B-16')") from None
        manifest = {"format": "external", "source": str(path), "arch": "openai", "ledger": []}
    else:
        if arch in CLIP_PRESETS:
            model = open_clip.CLIP(**CLIP_PRESETS.get(arch)())
        elif arch in open_clip.list_models():
            model = open_clip.create_model(arch, pretrained=None)
        else:
            raise ForgetkitError(f"unknown CLIP architecture {arch!r}; give an open_clip name (open_clip.list_models()"
                                 f") or a forgetkit preset ({', '.join(CLIP_PRESETS.names())})")
        load_state_strict(model, state, str(path), CLIP_FIX)
        manifest = {"format": "external", "source": str(path), "arch": arch, "ledger": []}
    return _bundle(model.float(), manifest)
