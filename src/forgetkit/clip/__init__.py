"""Zero-shot CLIP class forgetting (text-image space adaptation) and the small CLIP of the embedded demo."""

from .model import CLIP_PRESETS, ClipBundle, create_clip, load_clip, save_clip
from .names import NameList, builtin_names, read_names
from .pretrain import ClipPretrainConfig, pretrain_clip
from .run import ClipForgetConfig, run_clip_forgetting
from .text_forget import ProjectionLoRA, TextForgetConfig, empty_prompt_target, forget_text_classes, text_forget_loss

__all__ = [
    "CLIP_PRESETS", "ClipBundle", "create_clip", "load_clip", "save_clip", "NameList", "builtin_names", "read_names",
    "ClipPretrainConfig", "pretrain_clip", "ClipForgetConfig", "run_clip_forgetting", "ProjectionLoRA",
    "TextForgetConfig", "empty_prompt_target", "forget_text_classes", "text_forget_loss",
]
