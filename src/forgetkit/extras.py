"""The optional parts of forgetkit: which pip extra brings each package, and the one-line hint when it is missing.

The core (forgetting, learning and restoring a forgetkit ViT) needs torch, torchvision, timm, peft, safetensors,
PyYAML, tqdm, NumPy and Pillow. Everything else is an extra (pyproject.toml), imported where it is used through
:func:`require`, so that a missing one fails with a sentence naming the extra instead of an ImportError.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import ForgetkitError

EXTRAS = {
    "open_clip": ("clip", "open_clip_torch"),
    "matplotlib": ("plot", "matplotlib"),
    "sklearn": ("verify", "scikit-learn"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "lightning_fabric": ("dist", "lightning-fabric"),
    "mlxtend": ("data", "mlxtend"),
    "fontTools": ("data", "fonttools"),
    "simplejpeg": ("data", "simplejpeg"),
}
"""importable module -> (the forgetkit extra that installs it, its distribution name)"""


def missing_hint(module: str, purpose: str) -> str:
    extra, dist = EXTRAS[module]
    return (f"{purpose} needs {dist}, which is not installed; install the extra: pip install 'forgetkit[{extra}]' "
            f"(or pip install {dist})")


def available(module: str) -> bool:
    """Whether an optional module can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional module (or one of its submodules: ``matplotlib.figure``), or raise
    :class:`ForgetkitError` naming the extra that brings it."""
    top = module.split(".")[0]
    if top not in EXTRAS:  # a programming error, not the user's
        raise KeyError(f"{top} is not one of forgetkit's extras ({', '.join(EXTRAS)})")
    if not available(top):
        raise ForgetkitError(missing_hint(top, purpose))
    return importlib.import_module(module)
