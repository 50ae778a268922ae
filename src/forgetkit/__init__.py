"""forgetkit: make pre-trained vision models forget selected classes, request after request.

Example:
    >>> import forgetkit as fk
    >>> run = fk.run_requests(fk.load_config("demo"))     # a RunRecord: run.requests, run.summary, run.passed

Names are imported on first use (PEP 562), so ``import forgetkit`` and ``forgetkit --help`` do not load torch.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "forget": "api", "restore": "api", "learn": "api", "unlearn": "api", "verify": "api", "load_config": "api",
    "packaged_configs": "api",
    "from_dict": "config", "to_dict": "config",
    "DataConfig": "data.config", "load_data": "data",
    "EvalConfig": "engine.config", "RunConfig": "engine.config", "TrainConfig": "engine.config",
    "run_requests": "engine", "run_forgetting": "engine",
    "ForgetkitError": "errors",
    "read_ledger": "ledger", "replay_ledger": "ledger",
    "METHODS": "methods", "Method": "methods", "register_method": "methods",
    "PRESETS": "models", "create_model": "models", "fingerprint": "models", "load_external_weights": "models",
    "load_model": "models", "save_model": "models",
    "LoRASettings": "models.lora_config", "add_lora": "models.lora", "apply_adapter": "models.lora",
    "merge_lora": "models.lora",
    "PretrainConfig": "engine.config", "pretrain": "pretraining",
    "ProtocolConfig": "engine.config", "class_order": "requests.protocol", "make_requests": "requests.protocol",
    "make_tasks": "requests.protocol",
    "REQUEST_KINDS": "requests", "Request": "requests", "RequestRecord": "requests", "RunRecord": "requests",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__():
    return sorted(list(globals()) + __all__)
