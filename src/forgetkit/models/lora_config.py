"""The shape of LoRA adapters, torch-free (a config section methods embed, checked before torch is imported)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoRASettings:
    """Shape of the LoRA adapters (peft ``LoraConfig``)."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=1.0, metadata={"help": "LoRA alpha; scaling = lora_alpha / rank (1/8 as in "
                                                             "the original loralib default)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
