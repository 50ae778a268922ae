"""Every check of a run's inputs that needs neither torch nor the data, made once before any slow work.

:func:`plan_run` reads only the config, the checkpoint's ``manifest.json`` and the output folder's listing, so a
wrong model, data folder, class name, budget or output folder answers in a fraction of a second with one line. The
runner (``engine.run_forgetting``) calls it first and then only runs; the CLI calls it before it imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..classes import resolve_class_names
from ..config import to_dict
from ..data.config import DataConfig, check_data_config, model_data_config
from ..errors import ForgetkitError
from ..methods.configs import resolved_method_config
from ..models.formats import RUN_MODEL_DIR, is_classifier_arch, read_manifest
from ..models.presets import PRESETS
from ..outputs import refuse_input_as_output, refuse_replacing
from ..requests import REQUEST_KINDS
from .config import PretrainConfig, RunConfig, VerifyConfig

STATE_DIR = "state"
RESUMABLE_CHANGES = ("output_dir", "train.threads")
"""keys that may differ between a run and its resumption: they change no number"""


@dataclass
class RunPlan:
    """What :func:`plan_run` decided: where everything is, and whether the run starts, resumes or is finished."""

    config: dict
    """the whole resolved config (every default filled in), as config.yaml saves it"""
    out: Path
    model_dir: Path
    data: DataConfig
    source: Path | None = None
    """the checkpoint the run starts from (None: a model passed in directly)"""
    manifest: dict = field(default_factory=dict)
    finished: bool = False
    """``--resume`` on a run that already finished, with the same config: nothing to do"""


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, but those :data:`RESUMABLE_CHANGES` allows."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{prefix}{key}.")
        elif _normal(a) != _normal(b) and f"{prefix}{key}" not in RESUMABLE_CHANGES:
            keys.append(f"{prefix}{key}")
    return keys


def _normal(value):
    """A value as YAML and JSON give it back (tuples come back as lists)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def resume_refusal(out: Path, differ: list[str], saved: dict, current: dict) -> ForgetkitError:
    def value(config, key):
        for part in key.split("."):
            config = config.get(part) if isinstance(config, dict) else None
        return config

    shown = "; ".join(f"{k}: {value(saved, k)!r} then, {value(current, k)!r} now" for k in differ[:3])
    return ForgetkitError(f"cannot resume {out}: it was started with another config ({shown}); use the same config "
                          f"and requests, or --overwrite to start again")


def plan_run(cfg: RunConfig, overwrite: bool = False, resume: bool = False, model_given: bool = False) -> RunPlan:
    """Check a run before any work and decide where its outputs go (``model_given``: the model is passed in)."""
    REQUEST_KINDS.get(cfg.kind)  # an unknown kind: the registry's one-line error
    out = Path(cfg.output_dir)
    model_dir = Path(cfg.model_dir) if cfg.model_dir else out / RUN_MODEL_DIR
    config = to_dict(cfg) | {"method": resolved_method_config(cfg.method)}
    source, manifest = None, {}
    if model_given:
        if cfg.save_model:
            raise ForgetkitError("a model passed in directly cannot be saved as a forgetkit checkpoint; set "
                                 "save_model: false")
        if cfg.data is None:
            raise ForgetkitError("a model passed in directly needs its data named (data.source, data.root)")
        data = cfg.data
    else:
        source, manifest = read_manifest(cfg.model)
        external = manifest.get("format") == "external"
        if external and cfg.model_arch and not is_classifier_arch(cfg.model_arch) \
                and cfg.model_arch.startswith(("vit_", "deit", "face_")):  # not an open_clip name (ViT-B-16)
            raise ForgetkitError(f"model_arch {cfg.model_arch} is neither a preset nor timm:NAME; a timm ViT is "
                                 f"named timm:{cfg.model_arch}")
        if cfg.save_model and external and not is_classifier_arch(cfg.model_arch):
            raise ForgetkitError(f"{cfg.model} is a CLIP weights file, not a forgetkit checkpoint, so no edited "
                                 f"checkpoint can be written from it; set save_model: false")
        data = cfg.data or model_data_config(manifest, cfg.model)
        refuse_input_as_output(out, [source], "the output folder")
        if cfg.save_model:
            refuse_input_as_output(model_dir, [source], "the model folder")
    if cfg.protocol.independent and cfg.save_model:
        raise ForgetkitError("protocol.independent requests are alternatives, each from the start model: there is no "
                             "one edited model to save; set save_model: false")
    check_data_config(data)
    if cfg.protocol.requests is not None and cfg.kind in ("forget", "restore") and manifest.get("classes"):
        # a classifier forgets and restores its own classes: a misspelt name answers before anything loads
        for i, names in enumerate(cfg.protocol.requests):
            resolve_class_names(list(names), list(manifest["classes"]), f"request {i + 1}")
    finished = _check_output(out, config, overwrite, resume)
    return RunPlan(config, out, model_dir, data, source, manifest, finished)


def _check_output(out: Path, config: dict, overwrite: bool, resume: bool) -> bool:
    """Refuse to replace or mix runs; True when ``resume`` finds the same run already finished."""
    results = out / "results.json"
    state = out / STATE_DIR
    unfinished = (state / "latest.json").is_file()  # a request finished: work a fresh start would throw away
    if resume:
        saved = _saved_config(out)
        if saved is not None:
            differ = config_differences(saved, config)
            if differ:
                raise resume_refusal(out, differ, saved, config)
        return results.is_file()
    if overwrite:
        return False
    if results.is_file():
        raise ForgetkitError(f"{out} already holds a finished run (results.json); pass --overwrite to replace it, "
                             f"--resume to keep it, or choose another --out")
    if unfinished:
        done = _completed(state)
        raise ForgetkitError(f"{out} holds an unfinished run ({done} request(s) finished); pass --resume to continue "
                             f"it, or --overwrite to start again")
    return False


def _saved_config(out: Path) -> dict | None:
    """The config a run in ``out`` was started with: its state's (unfinished) or its config.yaml (finished)."""
    for path in (out / STATE_DIR / "run.yaml", out / "config.yaml"):
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                raise ForgetkitError(f"{path} is not valid YAML; the run in {out} cannot be resumed: "
                                     f"--overwrite starts it again") from None
    return None


def _completed(state: Path) -> int:
    try:
        return int(json.loads((state / "latest.json").read_text())["completed"])
    except (OSError, ValueError, KeyError):
        return 0


def plan_pretrain(cfg: PretrainConfig, overwrite: bool = False) -> None:
    """What can be checked before torch or the data load: the preset, the data section, the output folder."""
    PRESETS.get(cfg.arch)  # an unknown preset: the registry's one-line error, with the closest name
    check_data_config(cfg.data)
    refuse_replacing(Path(cfg.out) / "manifest.json", overwrite, "a checkpoint")


@dataclass
class VerifyPlan:
    """A checked ``forgetkit verify``: what to load and where to write (:func:`plan_verify`)."""

    model: str
    source: Path
    cfg: VerifyConfig
    data: DataConfig
    classes: list[str]
    """the checkpoint's classes"""
    forgotten: list[str]
    """the classes checked, by name"""
    out: Path
    reference: str | None = None
    base: str | None = None
    seed: int = 0
    threads: int = 0


def plan_verify(model: str, out: str | Path, cfg: VerifyConfig, classes: list[str] | None = None,
                reference: str | None = None, base: str | None = None, data: DataConfig | None = None,
                seed: int = 0, threads: int = 0, overwrite: bool = False) -> VerifyPlan:
    """Every check of a verification before any work (torch-free).

    Args:
        model: the checkpoint to verify (a folder, a run folder or ``builtin:NAME``).
        out: the folder for verify.json, verify.md and verify.png.
        cfg: the checks' settings (``eval.verify``'s section).
        classes: the classes to check; None: those the model's ledger has forgotten.
        reference: a checkpoint trained without those classes (its rows are the verdict's bar).
        base: the model before forgetting; None: the ledger's base.
        data: the data the model was trained on; None: what its checkpoint records.
        seed: the seed every draw flows from.
        threads: CPU threads (0: torch's default).
        overwrite: replace an earlier verification in ``out``.
    """
    from ..config import check_threads
    from ..ledger import forgotten_classes

    check_threads(threads, "--threads")
    source, manifest = read_manifest(model)
    if manifest.get("classes") is None:
        raise ForgetkitError("verify checks classifiers (forgetkit checkpoints with classes), not zero-shot CLIPs")
    for other in (reference, base):
        if other:
            read_manifest(other)
    data = data or model_data_config(manifest, model)
    check_data_config(data)
    names = list(manifest["classes"])
    wanted = list(classes) if classes else sorted(forgotten_classes(manifest.get("ledger", [])), key=names.index)
    if not wanted:
        raise ForgetkitError(f"{model}'s ledger has forgotten no class; name the classes to check with --classes")
    resolve_class_names(wanted, names, "--classes")
    if reference:
        known = [n for n in read_manifest(reference)[1].get("classes") or [] if n in wanted]
        if known:
            raise ForgetkitError(f"the reference {reference} knows the forgotten class {known[0]!r}; a reference "
                                 f"is a model trained without the forgotten classes (forgetkit pretrain -o "
                                 f"data.classes=[the retained classes])")
    if not (base or (manifest.get("base") or {}).get("path")):
        raise ForgetkitError(f"{model} names no base model; give the model before forgetting with --base")
    out = Path(out)
    refuse_input_as_output(out, [source])
    refuse_replacing(out / "verify.json", overwrite, "a verification (verify.json)")
    return VerifyPlan(model, source, cfg, data, names, wanted, out, reference, base, seed, threads)
