"""Every method's typed config, torch-free, so that a whole run config is checked before torch is imported.

A method's config is registered under the method's name with ``@method_config("name")``; the method's module
(``methods/<name>.py``) registers the :class:`~forgetkit.methods.base.Method` under the same name and takes this
config as its ``config_cls``. ``forgetkit config <method>`` prints every field with its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..clip.config import TextForgetConfig
from ..config import check_choices, from_dict, to_dict
from ..errors import ForgetkitError
from ..models.lora_config import LoRASettings
from ..registry import Registry

METHOD_CONFIGS: Registry = Registry("method")
DEFAULT_METHOD = "gs_lora"


def method_config(name: str):
    """Class decorator: the config of method ``name``."""
    return METHOD_CONFIGS.register(name)


@dataclass
class MethodConfig:
    """The method section of a run config: a union of the registered methods' configs, chosen by ``name`` and parsed
    once into that method's own typed config (every method config derives from this class)."""

    name: str = field(default=DEFAULT_METHOD, metadata={"help": "a registered method (forgetkit methods)"})

    def __post_init__(self):
        check_choices(self, f"method({self.name})")

    @classmethod
    def parse(cls, value: dict, where: str = "method") -> MethodConfig:
        value = dict(value)
        value["name"] = value.get("name") or DEFAULT_METHOD
        config_cls = METHOD_CONFIGS.get(value["name"])
        return from_dict(config_cls, value, f"{where}({value['name']})")


@dataclass
class FinetuneConfig(MethodConfig):
    """Options shared by the full fine-tuning baselines."""

    train_head: bool = field(default=False, metadata={"help": "also train the classifier head (papers: frozen)"})
    faithful_relabel: bool = field(default=False, metadata={
        "help": "draw wrong labels from the first K label indices as the original code did (a bug)"})


@method_config("gs_lora")
@dataclass
class GSLoRAConfig(MethodConfig):
    """GS-LoRA hyper-parameters. The defaults are forgetkit's recommended configuration, chosen on the validation
    splits of three datasets (docs/benchmarks.md); the papers' values are in the face and ImageNet100 presets."""

    lora: LoRASettings = field(default_factory=lambda: LoRASettings(rank=4, lora_alpha=0.5), metadata={
        "help": "LoRA on every FFN (scaling lora_alpha / rank = 1/8 as in the paper; the paper's rank is 8)"})
    beta: list[float] = field(default_factory=lambda: [0.2], metadata={
        "help": "β per task (forget-loss weight); the last value repeats for later tasks"})
    bnd: float = field(default=5.0, metadata={
        "help": "BND: bound of the forget CE (paper 105-110 with CosFace s=64; 5 with a linear head: p(true class) "
                "below e^-5 ≈ 0.7 %, and no further push that would cost the retained classes)"})
    bound_per_sample: bool = field(default=True, metadata={
        "help": "bound each forget sample's CE (mean of ReLU(BND − CE_i)) instead of the batch-mean CE (the paper)"})
    replay_logit_weight: float | None = field(default=None, metadata={
        "help": "weight of the MSE between the replay images' logits and the model's before the request (its LoRA "
                "off), DER-style logit matching: it holds the logits of retained classes that have no replay data. "
                "null (auto): 1.0 when some retained class has no replay data, else 0 (validation splits, "
                "docs/benchmarks.md: it keeps missing classes and costs forgetting in few-shot requests)"})
    forget_feature_weight: float = field(default=0.0, metadata={
        "help": "weight of the forget batch's class-mean gap: the squared distance of each forgotten class's mean "
                "embedding to the replay images' mean, in units of the replay features' variance. It moves the "
                "forgotten classes' features, not only the head's output, so a probe on the features finds less "
                "(verify's k-NN and CKA rows; 1.0 measured, docs/verify.md; 0 = off)"})
    forget_relabel_weight: float = field(default=0.0, metadata={
        "help": "weight of the feature relabelling term: each forget image's embedding is pulled to the embedding "
                "the nearest replay image had before the request (LoRA off), so the forgotten classes' features land "
                "on the retained classes they resemble, as in a model that never learnt them (docs/verify.md; 0 = "
                "off)"})
    forgotten_mass_weight: float = field(default=3.0, metadata={
        "help": "γ: weight of mean −log(1 − p(forgotten)) on the forget images, forgotten = this task's classes and "
                "every earlier task's. Forgotten images then land on retained classes, so classes forgotten earlier "
                "do not become where later ones go, nor come back (0 = off, the paper)"})
    alpha: float = field(default=0.07, metadata={
        "help": "α: group-lasso strength, 0 = plain LoRA. gradient: the loss weight (paper 1e-4 with CosFace); "
                "proximal: each block's update shrinks by lr·α·√(its parameter count) per step, i.e. by the fraction "
                "α of the largest step Adam can take, whatever the model's width or the LoRA rank"})
    alpha_warmup_steps: int = field(default=100, metadata={"help": "steps with α = 0 at the start of each request"})
    lasso_update: Literal["gradient", "proximal"] = field(default="proximal", metadata={
        "help": "how the lasso acts: gradient (α·Σ||g|| in the loss, the paper) or proximal (after each optimiser "
                "step, every group shrinks by lr·α in norm and small ones become exactly zero)"})
    grouping: Literal["block", "module", "matrix"] = field(default="block", metadata={
        "help": "lasso groups: block (paper), module or matrix"})
    zero_threshold: float = field(default=1e-2, metadata={
        "help": "a group whose norm ends below this counts as driven to zero"})


@method_config("gs_lora_pp")
@dataclass
class GSLoRAPPConfig(GSLoRAConfig):
    """GS-LoRA++ hyper-parameters: GS-LoRA's plus the prototype terms and the EMA."""

    proto_forget_weight: list[float] = field(default_factory=lambda: [0.01], metadata={
        "help": "w_f per task: weight of the bounded push of forget embeddings away from their prototypes"})
    proto_retain_weight: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "w_r per task: weight of the pull of replay embeddings towards their prototypes"})
    proto_bound: float = field(default=18.0, metadata={"help": "BND_pro: bound of the push term"})
    proto_distance: Literal["kl", "l2"] = field(default="kl", metadata={"help": "kl (original) or l2"})
    ema_decay: float | None = field(default=None, metadata={
        "help": "decay of the EMA of the merged update (null = no EMA; original 0.9)"})
    prototype_images: int = field(default=256, metadata={
        "help": "images per class the prototypes are averaged over (a seeded sample of the request's forget and "
                "replay images; 0 = all)"})
    ema_every: int = field(default=25, metadata={"help": "steps between two EMA updates (the original: one epoch)"})
    ema_start_step: int = field(default=0, metadata={"help": "no EMA update before this step"})


@method_config("fg_oriu")
@dataclass
class FGOrIUConfig(GSLoRAConfig):
    """FG-OrIU (Feng et al., ICCV 2025): LoRA on every FFN trained with retain CE, a nuclear-norm push of the forget
    features out of their own subspace and a pull of the retain features into theirs, and LoRA updates projected off
    the retained inputs' subspace. GS-LoRA's terms are inherited and off (β 0, α 0, γ 0: the paper's code runs
    without them); turning them on gives "FG-OrIU's terms on GS-LoRA". The released code differs from the paper in
    four places; ``faithful: true`` reproduces it (docs/fg-oriu.md lists every difference)."""

    beta: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "β per task: GS-LoRA's bounded forget CE on the forget labels (0: FG-OrIU's, which has none)"})
    forgotten_mass_weight: float = field(default=0.0, metadata={
        "help": "γ: forgetkit's forgotten-mass term of GS-LoRA (0 = off, FG-OrIU's)"})
    alpha: float = field(default=0.0, metadata={"help": "α: GS-LoRA's group lasso (0 = off, FG-OrIU's)"})
    retain_ce_weight: float = field(default=1.0, metadata={
        "help": "λ_ce: weight of the CE on the replay images (paper: 1 face, 0.1 ImageNet100)"})
    forget_subspace_weight: float = field(default=0.1, metadata={
        "help": "λ_f: weight of Σ_l ||F_f^l P_f^l||_*, the nuclear norm of the normalised forget features' part in "
                "the forget subspace (paper: 0.1 face, 0.05 ImageNet100)"})
    retain_subspace_weight: float = field(default=0.01, metadata={
        "help": "λ_r: weight of Σ_l ||F_r^l − F_r^l P_r^l P_r^lᵀ||_F, the normalised retain features' part outside "
                "the retain subspace (paper: 0.01 face, 0.1 ImageNet100)"})
    feature_blocks: Literal["all", "last"] = field(default="all", metadata={
        "help": "blocks whose output features the two subspace terms use: all (paper, face) or last (ImageNet100)"})
    energy: float = field(default=0.99, metadata={
        "help": "τ: a subspace keeps the fewest directions holding this share of its features' energy"})
    subspace_images: int = field(default=512, metadata={
        "help": "images per stream (forget, replay) the subspaces are computed from, a seeded sample (0 = all)"})
    subspace_tokens: Literal["cls", "all"] = field(default="cls", metadata={
        "help": "tokens whose inputs span the protected subspace of each adapted layer: cls (the paper's) or all "
                "(every token the layer sees)"})
    project_forget: bool = field(default=False, metadata={
        "help": "add the gradient's part in the forget subspace to its projection off the retain subspace (the "
                "paper's 'backward disturbing', on for ImageNet100)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip before the projection (0 = off)"})
    faithful: bool = field(default=False, metadata={
        "help": "the released code: subspaces of block outputs (not of each layer's inputs) rebuilt every request, "
                "σ⁴ energy, fc2.A and fc2.B projected through a reshape, fc1.B not at all, no weight re-projection"})
    faithful_block_mixup: bool = field(default=False, metadata={
        "help": "with faithful: the ImageNet100 script's block index, which gives every fc1 block 0's subspaces and "
                "every fc2 block 3's"})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.energy <= 1.0:
            raise ForgetkitError(f"method.energy must be in (0, 1], got {self.energy}")
        if self.faithful_block_mixup and not self.faithful:
            raise ForgetkitError("method.faithful_block_mixup reproduces a bug of the released code; it needs "
                                 "method.faithful=true")


@method_config("l2")
@dataclass
class L2Config(FinetuneConfig):
    """L2* hyper-parameters (paper: face continual λ 0.1; single-step and ImageNet 0.05)."""

    reg_lambda: float = field(default=0.1, metadata={"help": "λ: weight of the penalty"})
    online: bool = field(default=False, metadata={"help": "keep one running anchor instead of one per task"})
    data_term: Literal["sum", "pooled"] = field(default="sum", metadata={
        "help": "sum: CE_f + CE_r; pooled: each CE weighted by its set's share of forget ∪ replay, the expected value "
                "of the original's CE over one mixed batch"})
    importance_images: int = field(default=2048, metadata={
        "help": "replay images the importance (EWC, MAS) is estimated on, drawn class-balanced; 0 = all"})


@method_config("ewc")
@dataclass
class EWCConfig(L2Config):
    """EWC* hyper-parameters (paper: face λ 10, ImageNet 3)."""

    reg_lambda: float = field(default=10.0, metadata={"help": "λ: weight of the Fisher-weighted penalty"})


@method_config("mas")
@dataclass
class MASConfig(L2Config):
    """MAS* hyper-parameters (paper: face continual λ 0.005, single-step 5, ImageNet 0.002)."""

    reg_lambda: float = field(default=0.005, metadata={"help": "λ: weight of the MAS-weighted penalty"})


@method_config("lwf")
@dataclass
class LwFConfig(FinetuneConfig):
    """LwF hyper-parameters (paper: T 2, λ_kd 0.5, λ_remain 10)."""

    temperature: float = 2.0
    kd_weight: float = field(default=0.5, metadata={"help": "λ_kd: weight of the distillation on replay data"})
    retain_weight: float = field(default=10.0, metadata={"help": "λ_remain: weight of the replay CE"})
    faithful_zero_kd: bool = field(default=False, metadata={"help": "drop the KD term, as the original's bug did"})


@method_config("der")
@dataclass
class DERConfig(FinetuneConfig):
    """DER hyper-parameters (paper: face continual λ_der 0.01; face lr 1e-3)."""

    der_weight: float = field(default=0.01, metadata={"help": "λ_der: weight of the embedding match on replay"})


@method_config("der_pp")
@dataclass
class DERPPConfig(DERConfig):
    """DER++ hyper-parameters (paper: face continual 0.005 + 0.005)."""

    der_weight: float = field(default=0.005, metadata={"help": "λ_der: weight of the embedding match on replay"})
    plus_weight: float = field(default=0.005, metadata={"help": "λ_plus: weight of the CE on a second replay batch"})


@method_config("fdr")
@dataclass
class FDRConfig(FinetuneConfig):
    """FDR hyper-parameters (paper: face λ 50, ImageNet 40; lr 1e-3)."""

    fdr_weight: float = field(default=50.0, metadata={"help": "λ: weight of the logit distance on replay"})


@method_config("scrub")
@dataclass
class SCRUBConfig(FinetuneConfig):
    """SCRUB hyper-parameters (paper: T 2, γ 0.99, α 1e-3, Adam lr 1e-4, wd 5e-4)."""

    temperature: float = 2.0
    gamma: float = field(default=0.99, metadata={"help": "γ: weight of the replay CE in the min pass"})
    kd_alpha: float = field(default=1e-3, metadata={"help": "α: weight of the replay KD in the min pass"})
    smoothing: float = field(default=0.0, metadata={"help": "p: pull towards the weight average (SCRUB-S > 0)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "steps with a max pass (null = the first half of the budget, as 5 of the original's 10 inner epochs)"})
    adam_weight_decay: float = field(default=5e-4, metadata={"help": "Adam's L2 weight decay"})


@method_config("scrub_s")
@dataclass
class SCRUBSConfig(SCRUBConfig):
    """SCRUB-S: SCRUB with smoothing (paper: face continual p 0.1; single-step and ImageNet 0.05)."""

    smoothing: float = field(default=0.1, metadata={"help": "p: pull towards the weight average"})


@method_config("lirf")
@dataclass
class LIRFConfig(FinetuneConfig):
    """LIRF* hyper-parameters (paper: a 0.1, T 10, weights 300 / 10 / 0.05 / 5)."""

    alpha: float = field(default=0.1, metadata={"help": "a: balance of CE and distillation terms"})
    temperature: float = 10.0
    at_weight: float = field(default=300.0, metadata={"help": "w_at: weight of the attention-transfer push"})
    kd_weight: float = field(default=10.0, metadata={"help": "w_kd: distillation on the retained classes"})
    deposit_weight: float = field(default=0.05, metadata={"help": "w_dep: weight of the deposit terms"})
    retain_weight: float = field(default=5.0, metadata={"help": "w_r: replay CE"})
    split: int | None = field(default=None, metadata={"help": "blocks in the lower half (null = depth // 2)"})


@method_config("lirf_eccv")
@dataclass
class LIRFECCVConfig(FinetuneConfig):
    """LIRF as its ECCV 2022 paper and released code train it. α and T are not given anywhere (the code reads them
    from a params.json it does not ship), nor is the split point. T 4 is the KD value of the code base it builds on
    (Nasty-Teacher); α 0.95 (with the learning rate 1e-4) and the split were chosen on the validation splits of three
    datasets: the strongest forgetting among the settings whose withdrawal keeps the other classes within 1 point of
    T0 on every dataset (docs/ledger.md)."""

    alpha: float = field(default=0.95, metadata={"help": "α: weight of the distillation terms (1 − α: the CEs)"})
    temperature: float = field(default=4.0, metadata={"help": "T: distillation temperature"})
    at_weight: float = field(default=0.0, metadata={
        "help": "λ_at: weight of the attention-map push −L_at (in the paper; 0 in the released code)"})
    split: int | None = field(default=None, metadata={
        "help": "blocks in the lower half, which the target and the deposit train (null = every block: the upper "
                "half is the final norm and the head)"})


@method_config("retrain")
@dataclass
class RetrainConfig(MethodConfig):
    """Retrain has no hyper-parameters of its own (paper: lr 3e-4)."""


@method_config("clip_text")
@dataclass
class ClipTextConfig(TextForgetConfig, MethodConfig):
    """Text-space forgetting (defaults: the paper's ViT-B/16 one-class row), plus the retain names."""

    names: str | None = field(default=None, metadata={
        "help": "related-name list kept as the retain set (text file); null = the list shipped for the dataset"})


@method_config("undo")
@dataclass
class UndoConfig(MethodConfig):
    """Undo has no hyper-parameters."""


@method_config("withdraw")
@dataclass
class WithdrawConfig(MethodConfig):
    """Withdrawal has no hyper-parameters."""


@method_config("redeposit")
@dataclass
class RedepositConfig(MethodConfig):
    """Redeposit has no hyper-parameters."""


@method_config("lora_sub_drs")
@dataclass
class LoRASubDRSConfig(MethodConfig):
    """LoRA-Sub-DRS (defaults: the official CIFAR-100 configuration)."""

    rank: int = field(default=10, metadata={"help": "rank of each request's K and V LoRA"})
    layout: Literal["official", "libcontinual"] = field(default="official", metadata={
        "help": "official: each request's LoRA its own slot, B drawn sparse N(0, 0.01) so B·A ≠ 0 from the start; "
                "libcontinual: one folded LoRA, a fresh B = 0 each request"})
    drs: bool = field(default=True, metadata={
        "help": "project the updates onto the drift-resistant space (false: the paper's 'w/o DRS' ablation)"})
    subtract: bool = field(default=True, metadata={
        "help": "build the space on the model with the earlier requests' LoRA subtracted (false: on the current "
                "model)"})
    energy: float = field(default=0.99, metadata={"help": "ε: share of the covariance's energy the space keeps"})
    scale_projection: bool = field(default=True, metadata={
        "help": "P = UUᵀ/√k as the official code (its Frobenius norm); false: UUᵀ as the paper writes it"})
    atl_weight: float = field(default=0.05, metadata={
        "help": "λ: weight of the augmented triplet loss (0: the paper's 'w/o ATL' ablation)"})
    margin: float = field(default=1.0, metadata={"help": "m: the triplet margin"})
    head_lr: float = field(default=2e-3, metadata={"help": "learning rate of the per-request CE head (fc_lrate)"})


@method_config("seq_lora")
@dataclass
class SequentialLoRAConfig(LoRASubDRSConfig):
    """Sequential LoRA fine-tuning: a new K/V LoRA per request, CE only, no projection."""

    drs: bool = False
    atl_weight: float = 0.0


@method_config("ncm")
@dataclass
class NCMConfig(MethodConfig):
    """Prototype NCM on the frozen pre-trained features has no hyper-parameters."""


@method_config("joint")
@dataclass
class JointConfig(MethodConfig):
    """Joint training (upper bound): K/V LoRA and a CE head over every class seen so far."""

    rank: int = field(default=10, metadata={"help": "rank of the K and V LoRA"})
    head_lr: float = field(default=2e-3, metadata={"help": "learning rate of the CE head"})


def default_method_config() -> MethodConfig:
    return MethodConfig.parse({})


def resolved_method_config(spec: MethodConfig | dict) -> dict:
    """The method section with every default filled in, as a plain mapping (for saved configs and the ledger)."""
    return to_dict(spec if isinstance(spec, MethodConfig) else MethodConfig.parse(spec or {}))
