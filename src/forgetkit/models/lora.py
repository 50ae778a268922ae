"""LoRA through peft: inject on a preset's target layers, group the factors, merge, save and re-apply adapters.

forgetkit never relies on a merge-on-``eval()`` side effect (the original loralib code did): an adapter is merged
explicitly with peft's ``merge_and_unload`` at the end of each task, and the next task starts fresh adapters on the
merged weights. Saved adapters carry the fingerprint of the weights they were trained on, so applying one to any
other weights (for instance the merged model, which already contains it) is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ..errors import ForgetkitError
from ..io import read_json, write_json
from .checkpoint import fingerprint
from .lora_config import LoRASettings


def add_lora(model: torch.nn.Module, settings: LoRASettings, targets: str | None = None) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters (B = 0, so outputs are unchanged); only LoRA factors train."""
    if settings.rank < 1:
        raise ForgetkitError(f"LoRA rank must be at least 1, got {settings.rank}")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout,
                        target_modules=targets or model.spec.lora_targets, bias="none")
    return get_peft_model(model, config)


def merge_lora(peft_model: PeftModel) -> torch.nn.Module:
    """Fold the adapters into the base weights (W ← W + B·A·scaling) and return the plain model."""
    return peft_model.merge_and_unload()


def lora_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def lora_groups(model: torch.nn.Module, group_pattern: str, grouping: str = "block") -> dict[str, list[torch.Tensor]]:
    """The trainable LoRA factors grouped for the group lasso.

    ``block``: one group per transformer block (the group is named by ``group_pattern``'s first capture);
    ``module``: one group per adapted layer (A and B together); ``matrix``: each factor alone.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    pattern = re.compile(group_pattern)
    for name, param in lora_parameters(model):
        if grouping == "block":
            m = pattern.search(name)
            if not m:
                raise ForgetkitError(f"LoRA parameter {name} matches no group of pattern {group_pattern!r}")
            key = m.group(1)
        elif grouping == "module":
            key = name.split(".lora_")[0]
        elif grouping == "matrix":
            key = name
        else:
            raise ForgetkitError(f"unknown grouping '{grouping}'; use block, module or matrix")
        groups.setdefault(key, []).append(param)
    if not groups:
        raise ForgetkitError("the model has no trainable LoRA parameters; call add_lora first")

    def order(key: str):
        return (0, int(key)) if key.isdigit() else (1, key)

    return {k: groups[k] for k in sorted(groups, key=order)}


def save_adapter(peft_model: PeftModel, directory: str | Path, base_fingerprint: str, **info) -> Path:
    """Save the adapter with peft (``adapter_model.safetensors`` + ``adapter_config.json``) and our sidecar."""
    directory = Path(directory)
    peft_model.save_pretrained(str(directory))
    write_json(directory / "forgetkit_adapter.json", {"base_fingerprint": base_fingerprint, **info})
    return directory


def apply_adapter(model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
    """Load a saved adapter onto the exact weights it was trained on and merge it; refuse any other weights."""
    directory = Path(directory)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        # checked here: peft reads a folder that lacks them as a Hugging Face Hub id and tries to download it
        if not (directory / name).is_file():
            raise ForgetkitError(f"adapter {directory} lacks {name}; restore the file from the checkpoint it came "
                                 f"with")
    info = read_json(directory / "forgetkit_adapter.json")
    if fingerprint(model) != info["base_fingerprint"]:
        raise ForgetkitError(
            f"adapter {directory} was trained on other weights (fingerprint {info['base_fingerprint'][:12]}); "
            f"applying it here would add an update twice or to the wrong model. Apply it to the model it was "
            f"trained on (the start of its task)"
        )
    try:
        return PeftModel.from_pretrained(model, str(directory)).merge_and_unload()
    except Exception as err:  # a damaged file: safetensors and peft raise their own error types
        raise ForgetkitError(f"adapter {directory} cannot be read ({type(err).__name__}: {err}); restore it from the "
                             f"checkpoint it came with") from None
