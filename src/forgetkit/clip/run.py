"""A zero-shot CLIP forgetting run: evaluate, forget each request from the original model, evaluate, report.

Every request starts from the original CLIP (as the paper's single-class and multi-class modes do); a request with
several classes forgets them jointly. Outputs in ``output_dir``: ``config.yaml``, ``report.md``, ``accuracy.png``,
``request_K/text_projection.safetensors`` (the adapted projection, tagged with the base model's fingerprint) and
``results.json``, written last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, to_dict
from ..data import DataConfig, load_data
from ..errors import ForgetkitError
from ..io import atomic_write, save_weights, write_json, write_text, write_yaml
from ..models.checkpoint import fingerprint
from ..report import fmt
from ..runtime import rng, seed_everything, setup_device
from .image_forget import ClipImageClassifier
from .model import load_clip
from .names import builtin_names, read_names
from .text_forget import TextForgetConfig, forget_text_classes
from .zeroshot import accuracy_over, class_weights, image_features, per_class_accuracy, projection, set_projection

BUILTIN_CLIPS = {"builtin:clip_fmnist": Path(__file__).parent.parent / "assets" / "clip_fmnist"}


@dataclass
class ClipForgetConfig:
    """A zero-shot CLIP forgetting run; saved as ``config.yaml`` next to its results."""

    model: str = field(default="builtin:clip_fmnist", metadata={
        "help": "forgetkit CLIP folder, builtin:clip_fmnist, or a local open_clip / OpenAI state-dict file"})
    arch: str | None = field(default=None, metadata={
        "help": "open_clip architecture of a weights file (e.g. ViT-B-16); null for OpenAI-format state dicts"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the dataset whose classes are forgotten"})
    other_data: list[DataConfig] = field(default_factory=lambda: [DataConfig(source="mnist_5k")], metadata={
        "help": "datasets checked for collateral damage (the paper's cross-dataset check)"})
    requests: list[list[str]] = field(default_factory=lambda: [["Trouser"], ["Trouser", "Sandal", "Bag"]], metadata={
        "help": "forgetting requests, each a list of class names forgotten jointly, each from the original CLIP"})
    names: str | None = field(default=None, metadata={
        "help": "related-name list (text file) kept as the retain set; null = the list shipped for the dataset"})
    method: TextForgetConfig = field(default_factory=TextForgetConfig)
    image_forgetting: dict[str, Any] | None = field(default=None, metadata={
        "help": "also forget each request with images, by GS-LoRA on the image tower, for comparison: sections of "
                "a forgetting run (method, train, protocol ratios); null = text-space forgetting only"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice (LoRA init, target re-draws)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda; the optimisation is tiny either way"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = torch's default)"})
    output_dir: str = field(default="runs/clip-forget", metadata={"help": "where results, report and projections go"})


def _accuracies(feats, labels, weights, forget_idx, others, other_weights) -> dict:
    retain_idx = [c for c in range(weights.shape[0]) if c not in forget_idx]
    other = {name: accuracy_over(f, y, other_weights[name]) for name, (f, y) in others.items()}
    return {"acc_forget": accuracy_over(feats, labels, weights, forget_idx),
            "acc_retain": accuracy_over(feats, labels, weights, retain_idx),
            "acc_other": sum(other.values()) / len(other) if other else None,
            "acc_other_per_dataset": other}


def run_clip_forgetting(cfg: ClipForgetConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Run every request of ``cfg`` and write the outputs; returns the results dict."""
    out = Path(cfg.output_dir)
    if (out / "results.json").exists() and not overwrite:
        raise ForgetkitError(f"{out} already holds results.json; choose another output_dir or pass --overwrite")
    if not cfg.requests or any(not r for r in cfg.requests):
        raise ForgetkitError("requests is empty or holds an empty request; give lists of class names to forget")
    setup_device(cfg.device, cfg.threads)
    seed_everything(cfg.seed)
    path = BUILTIN_CLIPS.get(cfg.model, cfg.model)
    if str(cfg.model).startswith("builtin:") and cfg.model not in BUILTIN_CLIPS:
        raise ForgetkitError(f"unknown built-in CLIP {cfg.model!r}; known: {', '.join(BUILTIN_CLIPS)}")
    bundle = load_clip(path, cfg.arch)
    base_fingerprint = fingerprint(bundle.model)
    main = load_data(cfg.data)
    classes = main.classes
    for request in cfg.requests:
        for name in request:
            if name not in classes:
                raise ForgetkitError(f"unknown class {name!r} in requests; the classes of {main.name} are: "
                                     f"{', '.join(classes)}")
    name_list = read_names(cfg.names or builtin_names(main.name), classes)
    feats, labels = image_features(bundle, main.test, progress=progress, desc=f"image features {main.name}")
    others = {}
    for other_cfg in cfg.other_data:
        split = load_data(other_cfg)
        others[split.name] = (*image_features(bundle, split.test, progress=progress,
                                              desc=f"image features {split.name}"), split.classes)
    other_feats = {k: (f, y) for k, (f, y, _c) in others.items()}

    def all_weights():
        return class_weights(bundle, classes), {k: class_weights(bundle, c) for k, (_f, _y, c) in others.items()}

    weights0, other_weights0 = all_weights()
    per_class0 = per_class_accuracy(feats, labels, weights0)
    original = projection(bundle.model)[0].clone()
    results = {"method": "clip_text_forget", "model": str(cfg.model), "dataset": main.name,
               "other_datasets": list(others), "seed": cfg.seed, "base_fingerprint": base_fingerprint,
               "pretrained": {"acc": accuracy_over(feats, labels, weights0),
                              "per_class": dict(zip(classes, per_class0.tolist())),
                              "acc_other_per_dataset": {k: accuracy_over(f, y, other_weights0[k])
                                                        for k, (f, y) in other_feats.items()}},
               "requests": []}
    for index, request in enumerate(cfg.requests):
        forget_idx = [classes.index(c) for c in request]
        before = _accuracies(feats, labels, weights0, forget_idx, other_feats, other_weights0)
        retain = name_list.retain_names(classes, request)
        start = time.time()
        new_projection, info = forget_text_classes(bundle, request, retain, classes, cfg.method,
                                                   rng(cfg.seed, "clip_targets", index))
        set_projection(bundle.model, new_projection)
        try:
            weights, other_weights = all_weights()
            after = _accuracies(feats, labels, weights, forget_idx, other_feats, other_weights)
        finally:
            set_projection(bundle.model, original)
        seconds = time.time() - start
        save_weights(out / f"request_{index}" / "text_projection.safetensors", {"text_projection": new_projection},
                     metadata={"base_fingerprint": base_fingerprint, "forget_classes": ",".join(request)})
        entry = {"index": index, "forget_classes": request, "retain_names": retain, "before": before, "after": after,
                 "score": avg_gain_score(before, after), "seconds": seconds, **info}
        if cfg.image_forgetting is not None:
            entry["image_gs_lora"] = _image_gs_lora(cfg, bundle, main, request, index, forget_idx, others, before,
                                                    progress)
        results["requests"].append(entry)
        if progress:
            print(f"request {index} {request}: forget {fmt(before['acc_forget'])} -> {fmt(after['acc_forget'])}, "
                  f"retain {fmt(before['acc_retain'])} -> {fmt(after['acc_retain'])}, other "
                  f"{fmt(before['acc_other'])} -> {fmt(after['acc_other'])} ({seconds:.1f} s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", to_dict(cfg))
    write_text(out / "report.md", clip_report(results))
    plot_clip(results, out / "accuracy.png")
    write_json(out / "results.json", results)
    return results


def _image_gs_lora(cfg: ClipForgetConfig, bundle, main, request, index, forget_idx, others, before, progress):
    """Forget ``request`` with GS-LoRA on the image tower (forgetkit's engine) and measure it like the text way."""
    from ..engine import RunConfig, run_forgetting

    section = dict(cfg.image_forgetting)
    protocol = {**section.get("protocol", {}), "tasks": [list(request)]}
    run_cfg = from_dict(RunConfig, {**section, "data": to_dict(cfg.data), "protocol": protocol, "save_model": False,
                                    "seed": cfg.seed, "output_dir": str(Path(cfg.output_dir) / f"request_{index}" /
                                                                        "image_gs_lora")})
    classifier = ClipImageClassifier(bundle, main.classes)
    start = time.time()
    run = run_forgetting(run_cfg, progress=progress, overwrite=True, model=classifier)
    original_visual = bundle.model.visual
    bundle.model.visual = classifier.visual.cpu().eval()   # the tower GS-LoRA merged its update into
    try:
        feats, labels = image_features(bundle, main.test, progress=progress, desc="image features (edited)")
        other = {k: image_features(bundle, load_data(c).test)[:2] for k, c in zip(others, cfg.other_data)}
        weights, other_weights = class_weights(bundle, main.classes), {
            k: class_weights(bundle, c) for k, (_f, _y, c) in others.items()}
        after = _accuracies(feats, labels, weights, forget_idx, other, other_weights)
    finally:
        bundle.model.visual = original_visual
    task = run["tasks"][0]
    return {"after": after, "score": avg_gain_score(before, after), "seconds": time.time() - start,
            "trainable_params": task["trainable_params"], "groups_zeroed": task.get("groups_zeroed"),
            "num_groups": task.get("num_groups"), "forget_images": task["forget_images"],
            "retain_images": task["retain_images"]}


def avg_gain_score(before: dict, after: dict) -> float:
    """The original's summary score (``compute_avg_gain``; lower is better, 0 = perfect): the share of the forget
    accuracy kept, plus the relative losses of the retained classes and of each other dataset, averaged over the
    terms (a term whose reference accuracy is 0 counts 0)."""

    def ratio(num: float, ref: float) -> float:
        return max(0.0, num / ref) if ref else 0.0

    terms = [ratio(after["acc_forget"], before["acc_forget"]),
             ratio(before["acc_retain"] - after["acc_retain"], before["acc_retain"])]
    for name, acc in before["acc_other_per_dataset"].items():
        terms.append(ratio(acc - after["acc_other_per_dataset"][name], acc))
    return sum(terms) / len(terms)


def clip_report(results: dict) -> str:
    lines = [f"# Zero-shot CLIP class forgetting on {results['dataset']}", "",
             f"Model {results['model']}; zero-shot test accuracy {fmt(results['pretrained']['acc'])} % "
             f"(other datasets: " + ", ".join(f"{k} {fmt(v)} %" for k, v in
                                              results["pretrained"]["acc_other_per_dataset"].items()) + ").", "",
             "Accuracy in percent, before → after; `other` is the mean over the other datasets.", "",
             "| forgotten | forget | retain | other | trials (λ_f) | score ↓ | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in results["requests"]:
        b, a = r["before"], r["after"]
        lines.append(f"| {', '.join(r['forget_classes'])} | {fmt(b['acc_forget'])} → {fmt(a['acc_forget'])} | "
                     f"{fmt(b['acc_retain'])} → {fmt(a['acc_retain'])} | {fmt(b['acc_other'])} → "
                     f"{fmt(a['acc_other'])} | {r['trials']} ({r['lambda_f']:.2f}) | {r['score']:.3f} | "
                     f"{r['seconds']:.1f} |")
    compared = [r for r in results["requests"] if "image_gs_lora" in r]
    if compared:
        lines += ["", "Text-space forgetting (no images, the text projection) against GS-LoRA on the image tower "
                      "(with images):", "",
                  "| forgotten | way | forget | retain | other | trained parameters | seconds | score ↓ |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in compared:
            g = r["image_gs_lora"]
            for way, a, params, secs, score in (
                    ("text projection", r["after"], r["trainable_params"], r["seconds"], r["score"]),
                    (f"GS-LoRA image tower ({g['forget_images']} + {g['retain_images']} images)", g["after"],
                     g["trainable_params"], g["seconds"], g["score"])):
                lines.append(f"| {', '.join(r['forget_classes'])} | {way} | {fmt(a['acc_forget'])} | "
                             f"{fmt(a['acc_retain'])} | {fmt(a['acc_other'])} | {params:,} | {secs:.1f} | "
                             f"{score:.3f} |")
    return "\n".join(lines) + "\n"


def plot_clip(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    requests = results["requests"]
    fig, axes = plt.subplots(1, len(requests), figsize=(4.2 * len(requests), 3.4), squeeze=False)
    for ax, r in zip(axes[0], requests):
        keys = ["acc_forget", "acc_retain", "acc_other"]
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [r["before"][k] or 0 for k in keys], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [r["after"][k] or 0 for k in keys], width=0.4, label="after")
        ax.set_xticks(list(xs), ["forgotten", "retained", "other data"])
        ax.set_ylim(0, 100)
        ax.set_title("forget " + ", ".join(r["forget_classes"]), fontsize=9)
        ax.set_ylabel("zero-shot accuracy (%)")
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
