"""forgetkit model checkpoints (safetensors + JSON manifest) and loading of timm / torchvision ViT weights.

A forgetkit checkpoint is a folder::

    model.safetensors   the merged weights (never any LoRA factor: an update can never be applied twice)
    manifest.json       format, ModelSpec, class names, preprocessing, fingerprint, ledger of edits (docs/ledger.md)
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch

from ..errors import ForgetkitError
from ..io import load_weights, read_json, save_weights, write_json
from .formats import resolve_model_path
from .presets import TIMM_GEOMETRY, TIMM_PREFIX, ModelSpec, model_spec
from .vit import ForgetModel

FORMAT = "forgetkit-model"
FORMAT_VERSION = 1


def fingerprint(model: torch.nn.Module, skip: frozenset[str] | set[str] = frozenset()) -> str:
    """SHA-256 of the model's tensors (names, shapes and bytes): identifies exactly one set of weights (those not in
    ``skip``)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_no_lora(state: dict[str, torch.Tensor], where: str) -> None:
    lora = [k for k in state if "lora_" in k]
    if lora:
        raise ForgetkitError(
            f"{where} holds un-merged LoRA factors ({lora[0]}, ...); merge them first (forgetkit merges after each "
            f"task) so that a saved model can never apply its update twice"
        )


def save_model(model: ForgetModel, directory: str | Path, classes: list[str], **extra) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` (atomically) and return the folder."""
    directory = Path(directory)
    state = model.state_dict()
    _check_no_lora(state, "the model to save")
    if len(classes) != model.spec.num_classes:
        raise ForgetkitError(f"{len(classes)} class names given for a model with {model.spec.num_classes} outputs")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": model.spec.to_dict(),
        "classes": list(classes),
        "preprocess": model.spec.preprocess.to_dict(),
        "fingerprint": fingerprint(model),
        **extra,
    }
    save_weights(directory / "model.safetensors", state)
    write_json(directory / "manifest.json", manifest)
    return directory


def save_checkpoint(model: torch.nn.Module, directory: Path, classes: list[str], **extra) -> Path:
    """Save ``model`` as the kind of checkpoint it was loaded from (a model may define ``save_checkpoint``)."""
    own = getattr(model, "save_checkpoint", None)
    return own(directory, classes, **extra) if own else save_model(model, directory, classes, **extra)


def read_manifest(directory: Path, expected_format: str, what: str, fix: str) -> dict:
    """The ``manifest.json`` of a checkpoint folder, checked to be of ``expected_format``."""
    path = directory / "manifest.json"
    if not path.is_file():
        raise ForgetkitError(f"{directory} is not a {what} (no manifest.json); {fix}")
    manifest = read_json(path)
    if manifest.get("format") != expected_format:
        raise ForgetkitError(f"{directory} is not a {what} (its manifest has format {manifest.get('format')!r}); "
                             f"{fix}")
    return manifest


def load_model(directory: str | Path) -> tuple[ForgetModel, dict]:
    """Load a forgetkit checkpoint (its folder, its ``model.safetensors`` or a run folder holding ``model/``); returns
    the model (eval mode) and its manifest, after checking the weights against the manifest's fingerprint."""
    directory = resolve_model_path(directory)
    manifest = read_manifest(directory, FORMAT, "forgetkit checkpoint", "create one with `forgetkit pretrain`, or "
                             "load foreign weights with load_external_weights")
    spec = ModelSpec.from_dict(manifest["spec"])
    model = ForgetModel(spec)
    state = load_weights(directory / "model.safetensors")
    _check_no_lora(state, str(directory))
    load_state_strict(model, state, str(directory))
    recorded = manifest.get("fingerprint")
    if recorded and fingerprint(model) != recorded:
        raise ForgetkitError(f"the weights in {directory / 'model.safetensors'} are not the ones its manifest "
                             f"records (fingerprint {recorded[:12]}): the file was changed after it was written; "
                             f"restore it from a trusted copy (forgetkit ledger --verify rebuilds it from the base)")
    model.eval()
    return model, manifest


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str,
                      fix: str = "load it into the architecture it was saved from") -> None:
    """``load_state_dict(strict=True)`` with one error that says what differs and how to fix it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"wrong shape {len(wrong)} (e.g. {k}: checkpoint {tuple(state[k].shape)} vs model "
                         f"{tuple(own[k].shape)})")
        raise ForgetkitError(f"architecture of {where} does not match the model: {'; '.join(parts)}; {fix}")
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------ foreign ViT checkpoints
def _torchvision_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ``VisionTransformer`` keys to timm ``VisionTransformer`` keys (same maths)."""
    out = {}
    for key, value in state.items():
        new = key
        if key == "class_token":
            new = "cls_token"
        elif key == "encoder.pos_embedding":
            new = "pos_embed"
        elif key.startswith("conv_proj."):
            new = "patch_embed.proj." + key[len("conv_proj."):]
        elif key.startswith("encoder.ln."):
            new = "norm." + key[len("encoder.ln."):]
        elif key.startswith("heads.head."):
            new = "head." + key[len("heads.head."):]
        else:
            m = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.(.*)", key)
            if m:
                i, rest = m.groups()
                rest = (rest.replace("ln_1.", "norm1.").replace("ln_2.", "norm2.")
                        .replace("self_attention.in_proj_", "attn.qkv.")
                        .replace("self_attention.out_proj.", "attn.proj.")
                        .replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                        .replace("mlp.linear_1.", "mlp.fc1.").replace("mlp.linear_2.", "mlp.fc2."))
                new = f"blocks.{i}.{rest}"
        out[new] = value
    return out


# Face Transformer ViT_face key -> timm VisionTransformer key (Residual(PreNorm(...)) wrappers add ".fn")
_FACE_TRANSFORMER_KEYS = [
    (r"pos_embedding$", "pos_embed"),
    (r"cls_token$", "cls_token"),
    (r"patch_to_embedding\.", "patch_embed.proj."),
    (r"transformer\.layers\.(\d+)\.0\.fn\.norm\.", r"blocks.\1.norm1."),
    (r"transformer\.layers\.(\d+)\.0\.fn\.fn\.to_qkv\.", r"blocks.\1.attn.qkv."),
    (r"transformer\.layers\.(\d+)\.0\.fn\.fn\.to_out\.0\.", r"blocks.\1.attn.proj."),
    (r"transformer\.layers\.(\d+)\.1\.fn\.norm\.", r"blocks.\1.norm2."),
    (r"transformer\.layers\.(\d+)\.1\.fn\.fn\.net\.0\.", r"blocks.\1.mlp.fc1."),
    (r"transformer\.layers\.(\d+)\.1\.fn\.fn\.net\.3\.", r"blocks.\1.mlp.fc2."),
    (r"mlp_head\.0\.", "norm."),
    (r"loss\.weight$", "head.weight"),
]


def _face_transformer_to_timm(state: dict[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    """Rename Face Transformer ``ViT_face`` keys (zhongyy/Face-Transformer, the backbone GS-LoRA trains) to timm's.

    The maths is the same once three things are mapped: the patch embedding is a Linear over patches flattened as
    ``(p1 p2 c)``, i.e. a convolution whose weight is permuted; the final ``mlp_head`` LayerNorm is applied to the
    class token only, which equals timm's norm of every token followed by class-token pooling; the CosFace weight
    ``loss.weight`` is the head. LoRA factors are dropped: GS-LoRA saves after ``eval()``, when loralib has already
    merged them into the weights (docs/paper-settings.md, CASIA-100), so keeping them would apply the update twice.
    """
    out = {}
    p, c = spec.patch_size, spec.in_chans
    for key, value in state.items():
        if "lora_" in key:
            continue
        for pattern, replacement in _FACE_TRANSFORMER_KEYS:
            if re.match(pattern, key):
                new = re.sub("^" + pattern, replacement, key)
                break
        else:
            raise ForgetkitError(f"unknown key {key} in a Face Transformer checkpoint; only ViT_face (P8S8 patches) "
                                 f"with a CosFace head is supported")
        if new == "patch_embed.proj.weight":
            if value.shape[1] != p * p * c:
                raise ForgetkitError(f"patch embedding of the Face Transformer checkpoint takes {value.shape[1]} "
                                     f"inputs, the preset {p}×{p}×{c}; pass the matching patch_size / in_chans")
            value = value.reshape(-1, p, p, c).permute(0, 3, 1, 2).contiguous()
        out[new] = value
    return out


GEOMETRY = ("embed_dim", "depth", "patch_size", "in_chans", "image_size", "mlp_ratio")
"""the preset fields :func:`infer_geometry` reads from a ViT's weight shapes (``num_heads`` cannot be read)"""
GEOMETRY_FIX = ("name the preset closest to the weights with --arch (forgetkit models) and set the fields that differ "
                "with -o field=value (embed_dim, depth, num_heads, patch_size, image_size, in_chans, mlp_ratio)")


def infer_geometry(state: dict[str, torch.Tensor]) -> dict:
    """The ViT geometry a timm-named state dict's shapes give: embed_dim, in_chans and patch_size from the patch
    embedding, depth from the blocks, mlp_ratio from the first FFN, image_size from the position embedding (when
    its patch tokens make a square)."""
    found: dict = {}
    patch = state.get("patch_embed.proj.weight")
    if patch is not None and patch.ndim == 4 and patch.shape[2] == patch.shape[3]:
        found.update(embed_dim=int(patch.shape[0]), in_chans=int(patch.shape[1]), patch_size=int(patch.shape[2]))
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if blocks:
        found["depth"] = max(blocks) + 1
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and "embed_dim" in found:
        found["mlp_ratio"] = fc1.shape[0] / found["embed_dim"]
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and "patch_size" in found:
        tokens = pos.shape[1] - (1 if "cls_token" in state else 0)
        side = math.isqrt(tokens)
        if side * side == tokens:
            found["image_size"] = side * found["patch_size"]
    return found


def load_external_weights(path: str | Path, arch: str, num_classes: int, class_indices: list[int] | None = None,
                          **overrides) -> ForgetModel:
    """Build a preset and fill it from a timm, torchvision or Face Transformer ViT checkpoint (``.safetensors`` or
    ``.pth``).

    ``.pth`` files are read with ``torch.load(weights_only=True)`` only. The geometry the weight shapes give
    (:func:`infer_geometry`) replaces the preset's where the two differ; an override (``-o field=value``) that
    contradicts the weights is refused, and a width other than the preset's needs ``num_heads``, which no shape
    shows. The classifier rows are taken from the checkpoint's head: all of them when it has ``num_classes``
    outputs, or the rows ``class_indices`` (``--class-index-file``: for example the 100 ImageNet-1k indices of
    ImageNet100, as the GS-LoRA paper restricts the 1000-way head). The geometry read from the weights is recorded
    as ``model.imported_geometry``.
    """
    spec = model_spec(arch, num_classes, **overrides)
    state = {k.removeprefix("module."): v for k, v in load_weights(path).items()}  # nn.DataParallel saves
    if "patch_to_embedding.weight" in state:
        state = _face_transformer_to_timm(state, spec)
    elif any(k.startswith("encoder.layers.") for k in state):
        state = _torchvision_to_timm(state)
    inferred = infer_geometry(state)
    for key, value in inferred.items():
        if key in overrides and getattr(spec, key) != value:
            raise ForgetkitError(f"-o {key}={overrides[key]} contradicts the weights in {path}, whose {key} is "
                                 f"{value:g}; drop the override (the weights' value is read from them)")
    preset = model_spec(arch, num_classes)
    adopted = {k: v for k, v in inferred.items() if k not in overrides and getattr(preset, k) != v}
    clash = sorted(set(adopted) & set(TIMM_GEOMETRY)) if arch.startswith(TIMM_PREFIX) else []
    if clash:
        raise ForgetkitError(f"the weights in {path} are not {arch}'s: their {clash[0]} is {adopted[clash[0]]:g}, "
                             f"the model's {getattr(preset, clash[0]):g}; give the timm name they were trained as")
    width = adopted.get("embed_dim", spec.embed_dim)
    if width != preset.embed_dim and "num_heads" not in overrides:
        raise ForgetkitError(f"the weights in {path} have embed_dim {width}, not the {arch} preset's "
                             f"{preset.embed_dim}, and the number of attention heads cannot be read from weight "
                             f"shapes; pass -o num_heads=H (ViT-Ti 3, ViT-S 6, ViT-B 12, ViT-L 16)")
    if adopted:
        spec = model_spec(arch, num_classes, **{**overrides, **adopted})
    model = ForgetModel(spec)
    model.imported_geometry = {"from_weights": inferred, "adopted": adopted, "overrides": dict(overrides)}
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    body = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_state_strict(model.backbone, body, str(path), GEOMETRY_FIX)
    if head:
        target = model.head.fc if spec.head == "linear" else model.head
        weight, bias = head["weight"], head.get("bias")
        if class_indices is not None:
            weight, bias = weight[class_indices], (bias[class_indices] if bias is not None else None)
        if weight.shape != target.weight.shape:
            raise ForgetkitError(f"head of {path} has shape {tuple(weight.shape)}, the model's "
                                 f"{tuple(target.weight.shape)} ({num_classes} classes); pass --class-index-file "
                                 f"with the head's class names in order, to pick the rows of the classes you use")
        target.weight.data.copy_(weight)
        if bias is not None and getattr(target, "bias", None) is not None:
            target.bias.data.copy_(bias)
    return model.eval()
