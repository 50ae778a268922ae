"""File helpers: atomic writes, safetensors weights and safe loading of foreign ``.pth`` files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from .errors import ForgetkitError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write a file through ``write(tmp_path)`` and move it into place, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ForgetkitError(f"file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ForgetkitError(f"{path} is not valid JSON ({err}); restore it or re-create it") from None


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors (never pickle)."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights from a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file without unpickling code.

    ``.pth`` files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling (a whole
    pickled model, custom classes) is refused, because unpickling a file from elsewhere can run any code.
    """
    path = Path(path)
    if not path.is_file():
        raise ForgetkitError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ForgetkitError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ForgetkitError(
            f"refusing to load {path}: it is not a plain tensor checkpoint that torch.load(weights_only=True) accepts "
            f"({type(err).__name__}). Unpickling it could run arbitrary code; re-save it as a state_dict or "
            f"safetensors file from a trusted environment"
        ) from None
    for key in ("state_dict", "model", "module"):  # common wrappers around a state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ForgetkitError(f"{path} does not hold a state_dict of tensors; save model.state_dict() instead")
    return obj
