"""A model's ledger: the ordered record of every request applied to it since its base checkpoint.

Each entry (written by the runner after the request finished) holds the request's kind and classes, the method and
its resolved config, the verdict and metrics, the SHA-256 fingerprints of the weights before and after, the time,
and the request's *edit*: its LoRA adapter when applying that adapter to the weights before gives the weights after
bit for bit (checked when it is saved), else the full weights after. :func:`replay_ledger` rebuilds a checkpoint's
weights from its base and those edits, checking every fingerprint on the way: what a deletion audit asks for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ForgetkitError
from .registry import Registry

if TYPE_CHECKING:  # the ledger's bookkeeping needs no torch: the run's checks read it before torch is imported
    import torch

EDIT_TYPES: Registry[Callable[[torch.nn.Module, Path], torch.nn.Module]] = Registry(
    "edit type", loader=lambda: importlib.import_module("forgetkit.methods").load_methods())
"""edit type (what a ledger entry's ``edit.type`` records) -> the function that applies such an edit to the model it
was made from; a method registers its ``edit_type`` with its ``apply_edit`` (methods/base.py), the ledger knows no
method"""


def register_edit_type(name: str, apply: Callable[[torch.nn.Module, Path], torch.nn.Module]) -> None:
    """Register ``apply`` for edits of type ``name``; methods that share a type (every LoRA method) share its
    function, and two different functions for one type are refused."""
    if name in EDIT_TYPES._items:
        if EDIT_TYPES._items[name] is not apply:
            raise ValueError(f"edit type '{name}' is registered twice with different appliers")
        return
    EDIT_TYPES.register(name)(apply)


def forgotten_classes(ledger: list[dict]) -> dict[str, int]:
    """Class name -> index of the ledger entry that forgot it, for every class forgotten and not restored since."""
    forgotten: dict[str, int] = {}
    for entry in ledger:
        for name in entry.get("classes", []):
            if entry.get("kind") == "forget":
                forgotten[name] = entry["index"]
            elif entry.get("kind") == "restore":
                forgotten.pop(name, None)
    return forgotten


def read_ledger(model_dir: str | Path) -> tuple[list[dict], dict]:
    """The ledger and manifest of a forgetkit checkpoint."""
    from .models.formats import load_checkpoint

    _, manifest = load_checkpoint(model_dir)
    return list(manifest.get("ledger", [])), manifest


def replay_ledger(model_dir: str | Path, base: torch.nn.Module | None = None,
                  upto: int | None = None) -> torch.nn.Module:
    """The checkpoint's weights rebuilt from its base model and its ledger's edits, in order.

    ``base`` defaults to the checkpoint named in the manifest. ``upto``: apply only the entries before this index
    (the weights before that request). Raises :class:`ForgetkitError` at the first entry whose fingerprint before or
    after does not match, naming the entry.
    """
    from .io import load_weights
    from .models.checkpoint import fingerprint, load_state_strict
    from .models.formats import load_checkpoint, resolve_model_path

    model_dir = resolve_model_path(model_dir)  # a run folder names its model/
    final, manifest = load_checkpoint(model_dir)
    ledger = manifest.get("ledger", [])
    if base is None:
        if not manifest.get("base"):
            raise ForgetkitError(f"{model_dir} names no base checkpoint; pass the base model to replay its ledger")
        base, _ = load_checkpoint(resolve_model_path(manifest["base"]["path"]))
    model = base
    for entry in ledger[:upto]:
        n = entry["index"] + 1
        if fingerprint(model) != entry["fingerprint_before"]:
            raise ForgetkitError(f"request {n} of {model_dir}'s ledger was applied to other weights than these "
                                 f"(fingerprint {entry['fingerprint_before'][:12]}); replay from the base it names")
        edit = entry.get("edit")
        if not edit:
            raise ForgetkitError(f"request {n} of {model_dir}'s ledger kept no edit (save_model was off)")
        path = model_dir / edit["path"]
        if edit["type"] == "weights":
            load_state_strict(model, load_weights(path / "model.safetensors"), str(path))
        else:  # the method's own edit (a LoRA adapter, a text projection), applied as the method applies it
            model = EDIT_TYPES.get(edit["type"])(model, path)
        if fingerprint(model) != entry["fingerprint_after"]:
            raise ForgetkitError(f"replaying request {n} of {model_dir}'s ledger did not give the weights it "
                                 f"recorded; the edit in {path} was changed or belongs to another model")
    if upto is None and fingerprint(model) != fingerprint(final):
        raise ForgetkitError(f"the ledger of {model_dir} does not lead to its saved weights")
    return model.eval()
