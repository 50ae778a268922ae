"""Methods (forgetting, restoring, learning), one module each, chosen by name from :data:`METHODS`.

``forgetkit methods`` lists them. A method registers itself with ``@register_method("name")`` and its config with
``@method_config("name")`` in ``configs.py``; adding one is its module and a line in :data:`METHOD_MODULES`.
"""

from __future__ import annotations

import importlib

from ..lazy import lazy_exports

# public name -> module that defines it, imported on first use (PEP 562): importing the package loads no torch
_EXPORTS = {
    "METHODS": "base", "Method": "base", "MethodContext": "base", "register_method": "base", "build_method": "base",
    "MethodConfig": "configs", "METHOD_CONFIGS": "configs", "method_config": "configs"}
__all__ = sorted(_EXPORTS)

# the modules whose decorators register the methods; imported when METHODS is first looked up
METHOD_MODULES = ("gs_lora", "gs_lora_pp", "fg_oriu", "regularised", "lwf", "der", "fdr", "scrub", "lirf", "retrain",
                  "clip_text", "undo", "withdraw", "redeposit", "lora_sub_drs", "ncm")


def load_methods() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(f".{module}", __name__)


__getattr__ = lazy_exports(__name__, _EXPORTS)
