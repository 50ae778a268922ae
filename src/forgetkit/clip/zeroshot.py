"""Zero-shot classification with CLIP: prompt embeddings per class, cached image features, per-class accuracy.

Text-space forgetting never touches the image tower, so image features are computed once per dataset and reused
for every evaluation, before and after each forgetting request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import LabeledImages
from ..runtime import inference_loader
from .model import ClipBundle

EVAL_TEMPLATE = "a photo of a {}."  # the paper's one template (its flower dataset adds ", a type of flower")


def prompt_name(name: str) -> str:
    """A class name as a prompt sees it (``ankle_boot`` -> ``ankle boot``), as the original replaces ``_``."""
    return name.replace("_", " ")


@torch.no_grad()
def text_features(bundle: ClipBundle, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """The input of the text projection for each text: ``ln_final`` output pooled at the end-of-text token.

    Batched (the original's hook kept only the first element of a batch, so it encoded names one by one).
    """
    from open_clip.transformer import text_global_pool

    model = bundle.model
    captured = []
    hook = model.ln_final.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = bundle.tokenize(texts[start: start + batch_size])
            captured.clear()
            model.encode_text(tokens)
            chunks.append(text_global_pool(captured[0], tokens, model.text_pool_type,
                                           eos_token_id=getattr(model, "text_eos_id", None)))
    finally:
        hook.remove()
    return torch.cat(chunks).float()


def projection(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text projection as ``(P, bias)`` with ``embedding = h @ P + bias`` (P is width × embed_dim)."""
    proj = model.text_projection
    if isinstance(proj, torch.nn.Linear):
        return proj.weight.detach().T, None if proj.bias is None else proj.bias.detach()
    return proj.detach(), None


def set_projection(model, matrix: torch.Tensor) -> None:
    """Write a new ``P`` (width × embed_dim) into the model, whatever form its projection has."""
    proj = model.text_projection
    with torch.no_grad():
        if isinstance(proj, torch.nn.Linear):
            proj.weight.copy_(matrix.T)
        else:
            proj.copy_(matrix)


@torch.no_grad()
def class_weights(bundle: ClipBundle, classes: list[str], templates: list[str] | None = None) -> torch.Tensor:
    """Normalised text embedding per class (mean over templates, re-normalised), rows in class order."""
    templates = templates or [EVAL_TEMPLATE]
    rows = []
    for name in classes:
        emb = bundle.model.encode_text(bundle.tokenize([t.format(prompt_name(name)) for t in templates]),
                                       normalize=True)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_features(bundle: ClipBundle, images: LabeledImages, batch_size: int = 256, progress: bool = False,
                   desc: str = "image features") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image embeddings and labels of a dataset (its preprocessing set to the CLIP's)."""
    images.with_preprocess(bundle.preprocess)
    loader = inference_loader(images, batch_size, next(bundle.model.parameters()).device)
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        feats.append(bundle.model.encode_image(x, normalize=True).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def accuracy_over(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  classes: list[int] | None = None) -> float | None:
    """Sample-weighted accuracy (percent) on the images of ``classes`` (all classes when None)."""
    pred = (features @ weights.T).argmax(dim=1)
    mask = torch.ones_like(labels, dtype=torch.bool) if classes is None else torch.isin(labels, torch.tensor(classes))
    if not mask.any():
        return None
    return 100.0 * (pred[mask] == labels[mask]).float().mean().item()
