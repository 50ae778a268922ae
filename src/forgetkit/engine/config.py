"""The sections of a run config (``forgetkit config`` lists them), torch-free.

Everything a command reads from the user is a typed dataclass parsed once by :func:`forgetkit.config.from_dict`:
this module (the run, its training budget, evaluation, protocol and verification, and pre-training),
``data/config.py`` (the data), ``methods/configs.py`` (every method) and ``models/lora_config.py``. None of them
imports torch, so a typo in any key answers in a fraction of a second, before torch, the model or the data load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import check_choices, check_device, check_threads
from ..data.config import DataConfig, check_data_config
from ..errors import ForgetkitError
from ..methods.configs import MethodConfig, default_method_config


@dataclass
class ProtocolConfig:
    """Which classes each request is about, in which order, and how much training data each request may use."""

    classes_per_request: int = field(default=2, metadata={
        "help": "K: classes each request forgets (learn: C, the classes each request learns)"})
    num_requests: int = field(default=4, metadata={"help": "T: number of requests (1 = single-step; learn: the "
                                                           "first request included)"})
    initial_classes: int | None = field(default=None, metadata={
        "help": "learn: B, the classes of the first request (default C)"})
    first_retained: int | None = field(default=None, metadata={
        "help": "N: classes retained at the first request; N + K must equal the number of classes (default C − K)"})
    order_seed: int | None = field(default=1337, metadata={
        "help": "seed of the class-order shuffle (Python random; 1337 gives the papers' order); null = sorted order"})
    requests: list[list[str]] | None = field(default=None, metadata={
        "help": "explicit requests by class name, one list per request (overrides K, T, N and the order)"})
    retain_classes: list[str] | None = field(default=None, metadata={
        "help": "with requests: the classes to keep (default: every class never forgotten)"})
    forget_ratio: float = field(default=1.0, metadata={
        "help": "fraction of each forget class's training images the request may use (the papers: 0.1). It sets "
                "which images can be drawn, not how long training runs (train.steps does)"})
    retain_ratio: float = field(default=1.0, metadata={
        "help": "fraction of each retained class's training images kept as replay data (the papers: 0.1). Like "
                "forget_ratio it sets which images can be drawn, not how long training runs; a fraction of a small "
                "dataset is too few images to keep the retained classes (docs/benchmarks.md)"})
    shots: int | None = field(default=None, metadata={
        "help": "few-shot: exactly this many training images per forget and per retained class (overrides ratios)"})
    missing: int = field(default=0, metadata={
        "help": "M: the first M classes of the order are retained but have no replay data at all (missing classes)"})
    missing_classes: list[str] | None = field(default=None, metadata={
        "help": "with requests: retained classes, by name, that have no replay data"})
    independent: bool = field(default=False, metadata={
        "help": "every request starts from the model the run started with, instead of from the previous request's "
                "result: requests are alternatives to compare (the CLIP paper's single- and multi-class "
                "evaluations), not a sequence, so no edited model is saved"})
    backbone: bool = field(default=False, metadata={
        "help": "learn: start from the model's features alone, dropping every class it knows and its head (the "
                "class-incremental benchmark's pre-trained backbone); default false keeps every known class"})
    val_per_class: int = field(default=0, metadata={
        "help": "training images per class held out as a validation split (never trained on)"})
    eval_split: Literal["test", "val"] = field(default="test", metadata={
        "help": "test, or val (the held-out training images; for choosing hyper-parameters without the test set)"})

    def __post_init__(self):
        check_choices(self, "protocol")
        if self.eval_split == "val" and self.val_per_class < 1:
            raise ForgetkitError("protocol.eval_split is val but protocol.val_per_class is 0; hold out some images")
        for name in ("forget_ratio", "retain_ratio"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ForgetkitError(f"protocol.{name} must be in (0, 1], got {value}")
        if self.shots is not None and self.shots < 1:
            raise ForgetkitError("protocol.shots must be at least 1 (or null for ratio sampling)")
        if self.val_per_class < 0 or self.missing < 0:
            raise ForgetkitError("protocol.val_per_class and protocol.missing cannot be negative")


@dataclass
class VerifyConfig:
    """What to verify after each request (``eval.verify``) or on a checkpoint (``forgetkit verify``)."""

    enabled: bool = field(default=False, metadata={
        "help": "run the checks after every forget request (costs about a request's time; docs/verify.md)"})
    reference: list[str] | str | None = field(default=None, metadata={
        "help": "checkpoint of a model trained without the forgotten classes (forgetkit pretrain on the retained "
                "classes), or a list of them: each request is checked against the one trained on exactly the "
                "classes it retains (bench/references.py makes one per request; a request none fits is judged "
                "without one). A single checkpoint serves every request that forgets none of its classes"})
    images_per_class: int = field(default=100, metadata={
        "help": "images drawn per class and split for the attacks, the probes' scoring and CKA"})
    probe_per_class: int = field(default=30, metadata={"help": "training images per class for the probe and k-NN"})
    knn_k: int = 5
    prototype_shots: int = field(default=5, metadata={
        "help": "prototype attack: images per class whose mean feature is the class prototype"})
    prototype_draws: int = field(default=5, metadata={"help": "prototype attack: seeded draws averaged"})
    relearn_shots: list[int] = field(default_factory=lambda: [5], metadata={
        "help": "k: training images per class (forgotten and retained, balanced) the relearning fine-tune sees"})
    relearn_max_steps: int = field(default=100, metadata={
        "help": "cap of the relearning fine-tune; the pre-trained and reference curves always run to it"})
    relearn_batch: int = field(default=64, metadata={"help": "images per relearning (and rebound) step"})
    relearn_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the relearning fine-tune"})
    relearn_threshold: float = field(default=0.5, metadata={
        "help": "relearnt once the macro-F1 over the forgotten classes reaches this share of what the reference "
                "reaches at the cap (without a reference: of the pre-trained model's F1)"})
    relearn_eval_every: int = field(default=10, metadata={"help": "steps between two points of a relearning curve"})
    relearn_full_curve: bool = field(default=False, metadata={
        "help": "run the model's relearning to the cap, not only until the target (the whole curve, at up to the "
                "cap's cost)"})
    rebound_per_class: int = field(default=20, metadata={
        "help": "retain-only rebound: training images per retained class of the fine-tune"})
    rebound_steps: int = field(default=50, metadata={"help": "retain-only rebound: fine-tuning steps"})
    deep_tolerance: float = field(default=5.0, metadata={
        "help": "with a reference, a request passes only if probe, k-NN and prototype attack on the forgotten "
                "classes are at most this many points above the reference's, the retain-only rebound at most this "
                "many above its, and relearning takes at least as many steps (docs/verify.md)"})
    rebound_limit: float | None = field(default=5.0, metadata={
        "help": "without a reference, a request passes only if the retain-only rebound is at most this many points "
                "(null = not judged)"})
    novel: DataConfig | None = field(default=None, metadata={
        "help": "images of classes the model never trained on (a data section: e.g. {source: glyphs_novel}, or an "
                "image_folder of identities outside the training set). Without a reference, the forgotten classes' "
                "probe, k-NN and prototype attack are judged against what the model's features give on as many of "
                "these classes (docs/verify.md: how far that can be trusted)"})
    novel_flip: Literal["none", "horizontal", "vertical"] = field(default="none", metadata={
        "help": "make never-seen classes from the model's own domain: flip every novel image this way and name its "
                "class '<class> flipped <way>' (e.g. novel: {source: mnist_5k, classes: [two, three, four, five, six, "
                "seven, nine]} with horizontal: mirrored digits). Only for classes whose flip is none of the model's "
                "classes and no augmentation it trained with (not faces, nor a horizontal flip of a model trained "
                "with hflip)"})
    novel_draws: int = field(default=5, metadata={
        "help": "draws of never-seen classes (as many as forgotten each) whose checks are averaged: with few "
                "forgotten classes, one draw's level depends on which classes it drew"})
    novel_tolerance: float | None = field(default=21.0, metadata={
        "help": "without a reference, with novel images: a request passes only if probe, k-NN and prototype attack "
                "on the forgotten classes are at most this many points above the same checks on the novel classes "
                "(null = reported, not judged). 21: the smallest at which every reference passed on the validation "
                "splits of MNIST-5k and glyphs60 (bench/novel_calibration.py, docs/verify.md)"})
    folds: int = field(default=5, metadata={"help": "cross-validation folds of the loss attack's AUC"})

    def __post_init__(self):
        check_choices(self, "eval.verify")
        if min(self.images_per_class, self.probe_per_class, self.prototype_shots, self.prototype_draws,
               self.relearn_max_steps, self.relearn_batch, self.relearn_eval_every, self.rebound_per_class,
               self.rebound_steps, self.novel_draws) < 1 or not self.relearn_shots or min(self.relearn_shots) < 1:
            raise ForgetkitError("eval.verify's image counts, shots, steps and batch must be at least 1 (forgetkit "
                                 "config eval.verify lists them)")
        if self.knn_k > self.probe_per_class:
            raise ForgetkitError(f"eval.verify.knn_k ({self.knn_k}) exceeds probe_per_class "
                                 f"({self.probe_per_class}); lower knn_k")
        if self.novel is not None:
            try:
                check_data_config(self.novel)
            except ForgetkitError as err:
                raise ForgetkitError(f"eval.verify.novel: {err}") from None


@dataclass
class RuntimeConfig:
    """Where and how the training steps run (runtime.Runtime): the fields every training loop shares, the
    forgetting requests' (the train section) and pre-training's alike (docs/scaling.md)."""

    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int = field(default=0, metadata={
        "help": "CPU threads (0 = torch's default, one per core); use 1 when another process shares the cores"})
    devices: int = field(default=1, metadata={
        "help": "processes (one per GPU, or CPU processes) that share every step's batch, on Lightning Fabric (the "
                "dist extra); under torchrun or SLURM the launcher's count is used (docs/scaling.md)"})
    num_nodes: int = field(default=1, metadata={"help": "machines of a multi-node launch (torchrun, SLURM)"})
    strategy: Literal["auto", "ddp"] = field(default="auto", metadata={
        "help": "auto: one process, or ddp when several run (gradients averaged every step)"})
    precision: Literal["32", "bf16-mixed", "16-mixed"] = field(default="32", metadata={
        "help": "32, or mixed precision for the training steps (Fabric's autocast; 16-mixed with a gradient "
                "scaler); evaluation and verification stay in float32"})
    workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes decoding and preprocessing images (0 = in the main process; for image "
                "folders on a GPU machine, a few per GPU); pinned memory on CUDA"})
    accumulate: int = field(default=1, metadata={
        "help": "micro-batches per step: each process's share of the batch is cut into this many forward and "
                "backward passes before one update (less memory, same batch)"})
    cache_gb: float = field(default=2.0, metadata={
        "help": "GiB of decoded image-folder pixels kept in memory at the model's size (a request draws each of its "
                "images many times; 150 KB per 224 px RGB image); 0 = decode every time. Kept by the process "
                "that decodes: with train.workers, each worker's lasts one pass"})

    cpu_memory: Literal["keep", "release"] = field(default="keep", metadata={
        "help": "on a CPU with glibc: keep freed memory for reuse (each new batch and activation then skips the "
                "page faults of fresh memory: steps 10-30 % and batches 2x faster on the 2-core machine, "
                "docs/scaling.md), or release it to the system at once (glibc's defaults). Process-wide, from "
                "the first run that keeps it"})

    _section = "train"  # the keys' prefix in messages (train.device); pre-training's keys have none

    def __post_init__(self):
        key = f"{self._section}." if self._section else ""
        check_choices(self, self._section or "pretrain")
        if self.workers < 0:
            raise ForgetkitError(f"{key}workers must be 0 (the main process) or more, got {self.workers}")
        if self.cache_gb < 0:
            raise ForgetkitError(f"{key}cache_gb must be 0 (no cache) or more, got {self.cache_gb}")
        if min(self.devices, self.num_nodes, self.accumulate) < 1:
            raise ForgetkitError(f"{key}devices ({self.devices}), {key}num_nodes ({self.num_nodes}) and "
                                 f"{key}accumulate ({self.accumulate}) must be at least 1")
        check_threads(self.threads, f"{key}threads")
        check_device(self.device, f"{key}device")


@dataclass
class TrainConfig(RuntimeConfig):
    """Optimisation of each request: a fixed number of steps, whatever the size of the data (AdamW, per-step cosine
    schedule with linear warm-up, re-created per request)."""

    steps: int = field(default=300, metadata={
        "help": "optimisation steps per request; one step sees one forget batch and one replay batch"})
    batch_size: int = field(default=32, metadata={
        "help": "images per stream (forget and replay) per step, drawn class-balanced: every class of a stream "
                "comes round before any comes twice (capped at the stream's size)"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (null = the method's default)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on ≥2-d tensors"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the cosine schedule"})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear learning-rate warm-up (timm's)"})
    log_every: int = field(default=25, metadata={"help": "steps averaged into one row of the loss log"})
    def __post_init__(self):
        super().__post_init__()
        if (self.devices * self.num_nodes > 1 or self.accumulate > 1) and \
                self.batch_size < self.devices * self.num_nodes * self.accumulate:
            raise ForgetkitError(f"train.batch_size ({self.batch_size}) is smaller than train.devices × "
                                 f"train.num_nodes × train.accumulate; every process needs images in every "
                                 f"micro-batch: raise train.batch_size or lower those")
        if min(self.steps, self.batch_size, self.log_every) < 1:
            raise ForgetkitError(f"train.steps ({self.steps}), train.batch_size ({self.batch_size}) and "
                                 f"train.log_every ({self.log_every}) must be at least 1; the default budget is "
                                 f"train.steps=300")
        if self.lr is not None and self.lr <= 0:
            raise ForgetkitError(f"train.lr must be positive, got {self.lr}; leave it unset for the method's default")


@dataclass
class EvalConfig:
    """How accuracy is measured, and what a request must reach to pass."""

    margin_accuracy: bool = field(default=False, metadata={
        "help": "CosFace only: the original code's margin-penalised accuracy (uses the label); default plain argmax"})
    batch_size: int = 256
    batch_mean: int = field(default=0, metadata={
        "help": "LIRF's original reporting: accuracy as the mean over batches of this many images of the classes "
                "asked about (dataset order); 0 = weighted by image (forgetkit's default)"})
    forget_threshold: float = field(default=5.0, metadata={
        "help": "a request passes only if its forgotten classes' held-out accuracy is at most this (percent)"})
    max_retain_drop: float = field(default=5.0, metadata={
        "help": "... and its retained classes' accuracy is at most this many points below the model before it"})
    min_learn_accuracy: float = field(default=50.0, metadata={
        "help": "a learn request passes only if its new classes' held-out accuracy is at least this (percent)"})
    max_restore_gap: float = field(default=2.0, metadata={
        "help": "a restore request passes if it gives back the weights before the withdrawn request bit for bit, "
                "else only if the restored classes come within this many points of that model's accuracy on them"})
    verify: VerifyConfig = field(default_factory=VerifyConfig, metadata={
        "help": "membership inference, feature probes, relearning and CKA on the forgotten classes after every "
                "request (docs/verify.md)"})
    other_data: list[DataConfig] = field(default_factory=list, metadata={
        "help": "zero-shot models (CLIP): further datasets whose accuracy, over their own class names, is measured "
                "before and after every request (collateral damage)"})


@dataclass
class RunConfig:
    """A whole forgetting run; saved as ``config.yaml`` next to its results."""

    model: str = field(default="builtin:fmnist_vit", metadata={
        "help": "forgetkit checkpoint folder (or a run folder holding model/, or its model.safetensors); "
                "builtin:fmnist_vit (the shipped Fashion-MNIST ViT) or "
                "builtin:clip_fmnist (the shipped CLIP); or a local open_clip / OpenAI CLIP state-dict file"})
    model_arch: str | None = field(default=None, metadata={
        "help": "what a weights file given as model holds: a ViT classifier, timm:NAME (e.g. "
                "timm:vit_small_patch16_224) or a preset (vit_b16, face_vit_p8s8), imported with the data's "
                "classes as forgetkit import-weights does (data must be named); or the open_clip architecture of a "
                "CLIP state dict (e.g. ViT-B-16); null = an OpenAI-format CLIP, read from the tensor shapes"})
    data: DataConfig | None = field(default=None, metadata={
        "help": "the images; null = the data the model was trained on, as its manifest records"})
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    method: MethodConfig = field(default_factory=default_method_config, metadata={
        "help": "name: a registered method (default gs_lora, the recommended configuration), plus that method's "
                "fields (forgetkit config <method>)"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kind: str = field(default="forget", metadata={
        "help": "what every request of the run does: forget, restore (give back classes forgotten earlier; method "
                "undo) or learn (new classes; method lora_sub_drs)"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice of the run"})
    output_dir: str = field(default="runs/forget", metadata={"help": "where results, report, logs and state go"})
    model_dir: str | None = field(default=None, metadata={
        "help": "where the edited model (weights, manifest with the ledger, per-request edits) goes; "
                "null = <output_dir>/model"})
    save_model: bool = field(default=True, metadata={"help": "save the edited model and its per-request edits"})


@dataclass
class PretrainConfig(RuntimeConfig):
    """Pre-training recipe (defaults: the embedded Fashion-MNIST model)."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = field(default="vit_fmnist", metadata={"help": "model preset (forgetkit models lists them)"})
    epochs: int = field(default=12, metadata={"help": "passes over the training set"})
    batch_size: int = 64
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = 0.05
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps before the cosine decay"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips (off for characters and digits)"})
    val_per_class: int = field(default=0, metadata={
        "help": "training images per class left out, the same ones a forgetting run's protocol.val_per_class holds "
                "out (at most this many), so that its validation images are unseen by the model"})
    seed: int = 0
    out: str = field(default="checkpoints/model", metadata={"help": "output checkpoint folder"})

    _section = ""

    def __post_init__(self):
        super().__post_init__()
        if min(self.epochs, self.batch_size) < 1:
            raise ForgetkitError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1")
        if self.lr <= 0:
            raise ForgetkitError(f"lr must be positive, got {self.lr}")
        if self.batch_size < self.devices * self.num_nodes * self.accumulate:
            raise ForgetkitError(f"batch_size ({self.batch_size}) is smaller than devices × num_nodes × accumulate; "
                                 f"every process needs images in every micro-batch: raise batch_size or lower those")
