"""The CLIP configs, torch-free: text-space forgetting's hyper-parameters and the demo CLIP's pre-training recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import check_choices, check_device, check_threads
from ..data.config import DataConfig
from ..errors import ForgetkitError


@dataclass
class TextForgetConfig:
    """Hyper-parameters of text-space forgetting (defaults: the paper's, ViT-B/16 one-class row)."""

    rank: int = field(default=5, metadata={"help": "LoRA rank r of the update of the text projection"})
    lora_alpha: float = field(default=1.0, metadata={"help": "LoRA alpha; the update is scaled by lora_alpha / rank"})
    lambda_f: float = field(default=1.3, metadata={"help": "λ_f: weight of the forget term (raised on retries)"})
    lambda_r: float = field(default=0.3, metadata={"help": "λ_r: weight of the retain term"})
    lambda_w: float = field(default=1.0, metadata={"help": "λ_w: weight of ‖BA‖ (the unscaled update)"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate"})
    steps: int = field(default=2000, metadata={"help": "full-batch steps per trial"})
    reduction_threshold: float = field(default=0.7, metadata={
        "help": "a trial is accepted when the forget term falls by at least this fraction"})
    lambda_f_step: float = field(default=0.05, metadata={"help": "λ_f increase after a rejected trial"})
    max_trials: int = field(default=100, metadata={"help": "trials before giving up (the last one is kept)"})
    keep: Literal["best", "last"] = field(default="best", metadata={
        "help": "best (lowest total loss over the steps, as the paper intends) or last (the weights after the last "
                "step; the original code kept those before it, one update earlier: docs/clip.md)"})
    resample_scale: float = field(default=0.5, metadata={
        "help": "noise scale when the empty-prompt target lands nearest a forget class and is re-drawn"})
    max_resamples: int = field(default=1000, metadata={"help": "re-draws of the target before giving up"})

    def __post_init__(self):  # also the method config clip_text's (methods/configs.py), whose name it reports
        check_choices(self, f"method({getattr(self, 'name', 'clip_text')})")


@dataclass
class ClipPretrainConfig:
    """Recipe of the demo CLIP (defaults: Fashion-MNIST + the MNIST digits)."""

    preset: str = field(default="clip_fmnist", metadata={"help": "CLIP preset (forgetkit.clip.model.CLIP_PRESETS)"})
    datasets: list[DataConfig] = field(default_factory=lambda: [DataConfig(source="fashion_mnist"),
                                                                 DataConfig(source="mnist_5k")])
    repeats: list[int] = field(default_factory=lambda: [1, 5], metadata={
        "help": "passes over each dataset per epoch (the small MNIST subset is shown more often)"})
    epochs: int = 3
    batch_size: int = 128
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = 0.1
    warmup_steps: int = 200
    seed: int = 0
    device: str = "auto"
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = torch's default)"})
    out: str = field(default="checkpoints/clip", metadata={"help": "output checkpoint folder"})
    weights_dtype: Literal["float32", "float16"] = field(default="float32", metadata={
        "help": "precision of the saved weights: float32, or float16 (half the file; the model is rounded to it "
                "before the zero-shot evaluation, so the recorded accuracy is the saved model's)"})

    def __post_init__(self):
        check_choices(self, "clip-pretrain")
        if min(self.epochs, self.batch_size) < 1:
            raise ForgetkitError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1")
        check_threads(self.threads, "threads")
        check_device(self.device, "device")
