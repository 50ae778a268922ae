"""Train a small CLIP (an open_clip architecture) on captioned labelled images, for the embedded CLIP demo.

No CLIP weights can be downloaded here, so forgetkit makes its own: every training image gets a caption drawn from
templates over its class name and that class's aliases (the shipped name lists), e.g. "a photo of a jumper.".
The contrastive loss counts every caption of the same class in the batch as a positive (with ten classes a batch
holds many), instead of CLIP's one-positive InfoNCE, which would push apart identical captions.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import to_dict
from ..data import load_data
from ..data.config import check_data_config
from ..errors import ForgetkitError
from ..outputs import OutputLock, refuse_replacing
from ..runtime import adamw, optimizer_step, process_state, rng, seed_everything, setup_device, step_scheduler
from .config import ClipPretrainConfig
from .model import create_clip, round_weights, save_clip
from .names import shipped_names
from .zeroshot import accuracy_over, class_weights, image_features, prompt_name

CAPTION_TEMPLATES = [
    "{}", "a {}.", "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.",
    "a black and white photo of a {}.", "a low resolution photo of a {}.", "a small {}.", "a drawing of a {}.",
]


class _Captioned(torch.utils.data.Dataset):
    """Images of several datasets with one global class index (dataset offset + class)."""

    def __init__(self, parts, repeats):
        self.items = []
        for offset, images, repeat in parts:
            self.items += [(images, i, offset) for _ in range(repeat) for i in range(len(images))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        images, i, offset = self.items[index]
        x, y = images[i]
        return x, y + offset


def class_aware_clip_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor):
    """Symmetric cross-entropy of image-text similarities, with every same-class pair a positive."""
    logits = scale * img @ txt.T
    target = (labels[:, None] == labels[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target.T * F.log_softmax(logits.T, 1), 1).mean())


def pretrain_clip(cfg: ClipPretrainConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Train and save the CLIP; returns the zero-shot test accuracy per dataset and the time taken. A checkpoint
    already in ``cfg.out`` is replaced only with ``overwrite``."""
    if len(cfg.repeats) != len(cfg.datasets):
        raise ForgetkitError(f"repeats has {len(cfg.repeats)} values for {len(cfg.datasets)} datasets; give one "
                             f"per dataset")
    for data in cfg.datasets:
        check_data_config(data)
    refuse_replacing(Path(cfg.out) / "manifest.json", overwrite, "a checkpoint")
    with OutputLock(Path(cfg.out)), process_state():
        return _pretrain_clip(cfg, progress)


def _pretrain_clip(cfg: ClipPretrainConfig, progress: bool) -> dict:
    device = setup_device(cfg.device, cfg.threads)
    seed_everything(cfg.seed)
    bundle = create_clip(cfg.preset, seed=cfg.seed)
    splits = [load_data(d) for d in cfg.datasets]
    parts, captions, caption_class, offset = [], [], [], 0
    for split, repeat in zip(splits, cfg.repeats):
        split.with_preprocess(bundle.preprocess)
        names = shipped_names(split.name, split.classes)  # class names alone where forgetkit ships no list
        for c, cls in enumerate(split.classes):
            for name in names.names_of(cls):
                for template in CAPTION_TEMPLATES:
                    captions.append(template.format(prompt_name(name)))
                    caption_class.append(offset + c)
        parts.append((offset, split.train, repeat))
        offset += len(split.classes)
    tokens = bundle.tokenize(captions)
    caption_class = torch.tensor(caption_class)
    by_class = [torch.nonzero(caption_class == c).flatten() for c in range(offset)]
    data = _Captioned(parts, cfg.repeats)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         generator=rng(cfg.seed, "train_order"))
    caption_gen = rng(cfg.seed, "augment")
    model = bundle.model.to(device).train()
    tables = {id(p) for n, p in model.named_parameters() if "embedding" in n}  # token and position tables
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay, decay=lambda p: p.ndim >= 2 and id(p) not in tables)
    scheduler = step_scheduler(opt, cfg.epochs * len(loader), cfg.warmup_steps, warmup_prefix=True)
    start, step = time.time(), 0
    for epoch in range(cfg.epochs):
        bar = tqdm(loader, desc=f"clip-pretrain epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            pick = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,), generator=caption_gen)]
                                for c in y.tolist()]).flatten()
            img = model.encode_image(x.to(device), normalize=True)
            txt = model.encode_text(tokens[pick].to(device), normalize=True)
            loss = class_aware_clip_loss(img, txt, y.to(device), model.logit_scale.exp().clamp(max=100))
            scheduler.step_update(step)
            optimizer_step(opt, loss)
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - start
    model.eval().cpu()
    round_weights(model, cfg.weights_dtype)
    accuracy = {}
    for split in splits:
        feats, labels = image_features(bundle, split.test, progress=progress, desc=f"zero-shot {split.name}")
        accuracy[split.name] = accuracy_over(feats, labels, class_weights(bundle, split.classes))
    save_clip(bundle, cfg.out, cfg.weights_dtype, pretrain={"config": to_dict(cfg), "zero_shot_test_accuracy": accuracy,
                                                            "seconds": round(seconds, 1)})
    return {"zero_shot_test_accuracy": accuracy, "seconds": seconds, "out": cfg.out}
