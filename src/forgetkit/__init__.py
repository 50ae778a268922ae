"""forgetkit: make pre-trained vision models forget selected classes, request after request.

Example:
    >>> import forgetkit as fk
    >>> results = fk.run_forgetting(fk.load_config("demo"))
"""

__version__ = "0.1.0"

from .api import forget, load_config, packaged_configs
from .config import from_dict, to_dict
from .data import DataConfig, load_data
from .engine import EvalConfig, RunConfig, TrainConfig, run_forgetting
from .errors import ForgetkitError
from .ledger import read_ledger, replay_ledger
from .methods import METHODS, Method, register_method
from .models import PRESETS, create_model, fingerprint, load_external_weights, load_model, save_model
from .models.lora import LoRASettings, add_lora, apply_adapter, merge_lora
from .pretrain import PretrainConfig, pretrain
from .protocol import ProtocolConfig, class_order, make_tasks

__all__ = [
    "forget", "load_config", "packaged_configs", "from_dict", "to_dict", "DataConfig", "load_data", "EvalConfig",
    "RunConfig", "TrainConfig", "run_forgetting", "ForgetkitError", "read_ledger", "replay_ledger", "fingerprint", "METHODS", "Method", "register_method", "PRESETS",
    "create_model", "load_external_weights", "load_model", "save_model", "LoRASettings", "add_lora", "apply_adapter",
    "merge_lora", "PretrainConfig", "pretrain", "ProtocolConfig", "class_order", "make_tasks",
]
