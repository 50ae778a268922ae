"""Where a checkpoint is and what format it has, read from its ``manifest.json`` alone: torch-free, so that a wrong
``--model`` answers before torch or the weights load.

A model can be named by any of:

* ``builtin:NAME``, a checkpoint shipped in the package (:data:`BUILTIN_MODELS`);
* a checkpoint folder (``model.safetensors`` + ``manifest.json``), or the path of its ``model.safetensors``;
* a run folder (``forgetkit forget ... --out RUN``), whose edited checkpoint is ``RUN/model``;
* a file that is not in a checkpoint folder: a local open_clip or OpenAI-format CLIP state dict, or, with a
  classifier ``model_arch`` (``timm:NAME``, ``vit_b16``, ``face_vit_p8s8``...), a ViT's weights, imported when the
  run starts with the head's classes from the data (:func:`is_classifier_arch`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..errors import ForgetkitError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_MODELS = {"builtin:fmnist_vit": ASSETS / "fmnist_vit",
                  "builtin:clip_fmnist": ASSETS / "clip_fmnist",
                  # the class-incremental benchmark's backbone: glyphs60's first 30 classes (docs/learning.md)
                  "builtin:glyphs30_vit": ASSETS / "glyphs30_vit"}

CHECKPOINT_LOADERS = {
    "forgetkit-model": "forgetkit.models.checkpoint:load_model",           # a classifier (pretrain, import-weights)
    "forgetkit-clip": "forgetkit.clip.classifier:load_zero_shot_clip",      # a CLIP, as a zero-shot classifier
    "forgetkit-recovered": "forgetkit.methods.withdraw:load_recovered",     # a LIRF recover net
    "external": "forgetkit.clip.classifier:load_zero_shot_clip",            # a CLIP state-dict file
}
"""manifest format -> the function that loads it, as ``module:name``: a format's module is imported only when a
checkpoint of that format is loaded (reading a manifest needs none of them, nor torch)"""
CHECKPOINT_FORMATS = tuple(name for name in CHECKPOINT_LOADERS if name != "external")

RUN_MODEL_DIR = "model"
"""where every run writes its edited checkpoint: ``<output_dir>/model`` (CLI and API alike)"""


def resolve_model_path(name: str | Path) -> Path:
    """The checkpoint folder (or CLIP state-dict file) a model name means."""
    name = str(name)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if name.startswith("builtin:"):
        raise ForgetkitError(f"unknown built-in model '{name}'; known: {', '.join(BUILTIN_MODELS)}")
    path = Path(name)
    if path.is_file() and (path.parent / "manifest.json").is_file():  # .../model.safetensors: its folder
        return path.parent
    if path.is_dir() and not (path / "manifest.json").is_file() and (path / RUN_MODEL_DIR / "manifest.json").is_file():
        return path / RUN_MODEL_DIR  # a run folder: its edited checkpoint
    return path


def read_manifest(name: str | Path) -> tuple[Path, dict]:
    """(path, manifest) of a model name, checked to be a checkpoint of a known format; a CLIP state-dict file has
    the manifest ``{"format": "external"}``."""
    path = resolve_model_path(name)
    if path.is_file():
        return path, {"format": "external"}
    if not path.exists():
        raise ForgetkitError(f"model {name} not found; give a checkpoint folder, a run folder, or builtin:fmnist_vit")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ForgetkitError(f"{path} is not a forgetkit checkpoint (no manifest.json); create one with `forgetkit "
                             f"pretrain` or `forgetkit import-weights`, or give a run folder holding model/")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ForgetkitError(f"{manifest_path} is not valid JSON ({err}); restore the checkpoint from a good "
                             f"copy") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in CHECKPOINT_FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ForgetkitError(f"{path} is not a forgetkit checkpoint (manifest format {found!r}, known: "
                             f"{', '.join(CHECKPOINT_FORMATS)}); create one with `forgetkit pretrain` or "
                             f"`forgetkit import-weights`")
    return path, manifest


def is_classifier_arch(arch: str | None) -> bool:
    """Whether ``model_arch`` names a ViT classifier (``timm:NAME`` or a preset: a weights file given as ``model`` is
    then imported with the data's classes, as ``forgetkit import-weights`` does) rather than an open_clip CLIP."""
    from .presets import PRESETS, TIMM_PREFIX

    return bool(arch) and (arch.startswith(TIMM_PREFIX) or arch in PRESETS.names())


def load_checkpoint(source: str | Path, arch: str | None = None):
    """Any forgetkit checkpoint as ``(model, manifest)``, by its manifest's format: a classifier, a CLIP (a zero-shot
    classifier over the data's classes) or a recover net. A file outside a checkpoint folder is a local open_clip or
    OpenAI-format CLIP state dict; ``arch`` names its open_clip architecture (None: OpenAI format)."""
    path, manifest = read_manifest(source)
    module, name = CHECKPOINT_LOADERS[manifest["format"]].split(":")
    loader = getattr(importlib.import_module(module), name)
    return loader(path, arch) if manifest["format"] == "external" else loader(path)
