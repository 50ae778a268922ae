"""Methods (forgetting, restoring, learning), one module each, chosen by name from :data:`METHODS`.

``forgetkit methods`` lists them. A method registers itself with ``@register_method("name")``.
"""

from .base import METHODS, Method, MethodConfig, MethodContext, register_method, build_method
from . import gs_lora, gs_lora_pp, regularised, lwf, der, fdr, scrub, lirf, retrain, clip_text, undo, withdraw  # noqa: F401
from . import redeposit  # noqa: F401
from . import lora_sub_drs, ncm  # noqa: F401
# (each module registers its methods)

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext", "register_method", "build_method"]
