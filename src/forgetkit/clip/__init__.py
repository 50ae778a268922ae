"""Zero-shot CLIP class forgetting (text-image space adaptation) and the small CLIP of the embedded demo.

A CLIP checkpoint runs through forgetkit's runner like any model (``forgetkit forget --model builtin:clip_fmnist``):
it becomes a :class:`ZeroShotClassifier` over the data's classes, and the ``clip_text`` method forgets in text space.
"""

from .model import CLIP_PRESETS, ClipBundle, create_clip, load_clip, save_clip
from .names import NameList, builtin_names, read_names
from .pretrain import ClipPretrainConfig, pretrain_clip
from .classifier import ZeroShotClassifier
from .text_forget import ProjectionLoRA, TextForgetConfig, empty_prompt_target, forget_text_classes, text_forget_loss

__all__ = [
    "CLIP_PRESETS", "ClipBundle", "create_clip", "load_clip", "save_clip", "NameList", "builtin_names", "read_names",
    "ClipPretrainConfig", "pretrain_clip", "ZeroShotClassifier", "ProjectionLoRA",
    "TextForgetConfig", "empty_prompt_target", "forget_text_classes", "text_forget_loss",
]
