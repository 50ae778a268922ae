"""The method interface: what the engine calls, and nothing else.

A method sees one request at a time. ``setup`` receives the current (merged) model and returns the module to
train; ``training_step`` receives one batch per data stream of the request kind (a dict: ``forget`` and ``retain``
for forgetting) and returns named losses (the key ``loss`` is optimised); ``save_edit`` keeps the request's edit;
``finish`` returns the plain model that the next request starts from. Teachers, importance
passes, prototypes and merges are the method's business: the engine has no method branches.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ForgetkitError
from ..ledger import register_edit_type
from ..registry import Registry
from ..requests import Request, RequestData
from ..runtime import NonFiniteLoss, Runtime, adamw
from .configs import METHOD_CONFIGS, MethodConfig

Batch = tuple[torch.Tensor, torch.Tensor]
"""one stream's images and labels in a training step"""

METHODS: Registry = Registry("method", loader=lambda: importlib.import_module("forgetkit.methods").load_methods())
"""every registered method; the first look-up imports the method modules (methods/__init__.py)"""


def register_method(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def decorator(cls):
        cls.name = name
        cls.config_cls = METHOD_CONFIGS.get(name)  # methods/configs.py: the config registered under the same name
        register_edit_type(cls.edit_type, cls.apply_edit)  # what the ledger replays edits of this type with
        return METHODS.register(name)(cls)

    return decorator



@dataclass
class MethodContext:
    """What a method may know about the run."""

    device: torch.device
    seed: int
    num_classes: int
    steps: int = field(default=300, metadata={"help": "optimisation steps of each request"})
    batch_size: int = field(default=32, metadata={"help": "images per stream per step"})
    classes: list = field(default_factory=list, metadata={"help": "the class names of the model's outputs"})
    ledger: list = field(default_factory=list, metadata={"help": "the model's ledger before this run"})
    source: Any = field(default=None, metadata={"help": "the checkpoint folder the model was loaded from"})
    runtime: Any = field(default=None, metadata={
        "help": "the run's forgetkit.runtime.Runtime (processes, precision, accumulation); None = one process on "
                "device, float32"})


_RENAMED_HOOKS = {"setup_task": "setup", "finish_task": "finish", "save_task": "save_edit",
                  "task_stats": "request_stats"}


class Method:
    """Base class of forgetting methods."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type]
    default_lr: ClassVar[float] = 1e-2
    supports: ClassVar[frozenset[str]] = frozenset({"forget"})
    """request kinds (forgetkit.requests) this method can carry out"""
    requires: ClassVar[frozenset[str]] = frozenset()
    """model capabilities it needs (see :func:`model_capabilities`), checked before any work"""
    edit_type: ClassVar[str] = "lora"
    """what :meth:`save_edit` saves and :meth:`apply_edit` applies (the ledger's edit type)"""
    fix_hint: ClassVar[str] = ""
    """what to try when a request of this method misses its goal (empty: the request kind's advice)"""

    def __init__(self, cfg, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.runtime = ctx.runtime if ctx.runtime is not None else Runtime(ctx.device)

    def __init_subclass__(cls, **kwargs):
        """A method written for forgetkit 0.1 (``setup_task``, ``finish_task``, ``save_task``, ``task_stats``) keeps
        working for one release, with a warning."""
        super().__init_subclass__(**kwargs)
        for old, new in _RENAMED_HOOKS.items():
            if old in cls.__dict__ and new not in cls.__dict__:
                warnings.warn(f"{cls.__name__}.{old} is deprecated and will be removed in forgetkit 0.3; name it "
                              f"{new}", DeprecationWarning, stacklevel=2)
                setattr(cls, new, cls.__dict__[old])

    def check_model(self, model: torch.nn.Module, kind: str) -> None:
        """Refuse, before any work, a request kind this method cannot carry out or a model it cannot edit."""
        if kind not in self.supports:
            raise ForgetkitError(f"method {self.name} cannot carry out {kind} requests (it supports "
                                 f"{', '.join(sorted(self.supports))}); choose another method (forgetkit methods)")
        lacking = self.requires - model_capabilities(model)
        if lacking:
            hint = getattr(model, "refusal_hint", "")
            raise ForgetkitError(f"method {self.name} needs a model with {', '.join(sorted(lacking))} "
                                 f"({', '.join(CAPABILITIES[c] for c in sorted(lacking))}); this one has none"
                                 + (f" ({hint})" if hint else ""))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the method keeps from one request to the next (saved with the run's state after each request,
        so a resumed run continues exactly)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ForgetkitError(f"method {self.name} keeps no state across requests, but the saved state has "
                                 f"{len(state)} tensors; resume with the method that made the run")

    def fit(self, model: torch.nn.Module, request: Request, data: RequestData, train_steps: Callable[[], None]) -> None:
        """Carry out one request up to :meth:`finish`. The default sets the task up and runs the runner's step
        loop (``train_steps``: optimiser, schedule, balanced batches, logging, calling :meth:`step`); a method that
        fits without a minibatch loop (CLIP's text projection) overrides this hook, not the runner."""
        self.setup(model, request, data)
        train_steps()

    def setup(self, model: torch.nn.Module, request: Request, data: RequestData) -> torch.nn.Module:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Batch | None], step: int) -> dict[str, torch.Tensor]:
        """The named losses of one step (the key ``loss`` is optimised) on ``batch``: one class-balanced batch
        ``(images, labels)`` per data stream of the request kind (forget: ``batch["forget"]``, ``batch["retain"]``,
        None for a stream without images)."""
        raise NotImplementedError

    def step(self, batch: dict[str, Batch | None], step: int,
             optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One optimisation step: :meth:`training_step`'s losses, a finite check before any update, backward,
        optimiser step (:meth:`update`).

        Methods with several passes per step (SCRUB's max and min passes) override this and call :meth:`update`
        for each pass.
        """
        return self.update(lambda part: self.training_step(part, step), batch, optimizer)

    def update(self, losses_of: Callable[[dict], dict[str, torch.Tensor]], batch: dict[str, Batch | None],
               optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One update from the named losses ``losses_of`` gives on ``batch`` (the key ``loss`` is optimised),
        through the run's runtime: this process's share of the batch in ``train.accumulate`` micro-batches, each
        forward in the run's precision and checked finite before any update, the gradients averaged over the
        processes, then the hooks and the optimiser step. Returns the losses (averaged over the micro-batches)."""
        return self.runtime.update(losses_of, batch, optimizer, self.parameters(), self.before_update,
                                   self.after_update)

    def apply(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and update of one loss computed on the whole batch (no micro-batches; :meth:`update` is the
        form that honours ``train.accumulate``), with the method's hooks."""
        if not torch.isfinite(loss):
            raise NonFiniteLoss(loss.item())
        optimizer.zero_grad(set_to_none=True)
        self.runtime.backward(loss)
        self.runtime.finish_update(optimizer, self.parameters(), self.before_update, self.after_update)

    def before_update(self) -> None:
        """Called between backward and the optimiser step (gradient clipping or projection)."""

    def after_update(self) -> None:
        """Called after the optimiser step (constraints on the weights)."""

    def make_optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW over :meth:`parameters`, decay on ≥2-d tensors only (as timm's optimiser factory)."""
        return adamw(self.parameters(), lr, weight_decay)

    def end_step(self, step: int) -> None:
        """Called after every optimisation step (weight averages and other periodic updates)."""

    def every(self, step: int, period: int) -> bool:
        """True after every ``period``-th step of the budget (``period`` ≥ 1)."""
        return (step + 1) % max(1, period) == 0

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser updates (default: everything trainable in the module being trained)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_count(self) -> int:
        """Parameters of the deployed model this method changes (reported as trainable_params)."""
        return sum(p.numel() for p in self.parameters())

    def request_stats(self) -> dict[str, Any]:
        """Extra per-task numbers for results.json, taken before ``finish``."""
        return {}

    def save_edit(self, directory: Path) -> bool:
        """Save this request's artefacts into ``directory`` (called before ``finish``); True when they include
        a LoRA adapter that turns the model before the request into the model after it (the runner checks this, and
        keeps the full weights in the ledger otherwise)."""
        return False

    def finish(self) -> torch.nn.Module:
        raise NotImplementedError

    @staticmethod
    def apply_edit(model: torch.nn.Module, directory: Path) -> torch.nn.Module:
        """Apply an edit :meth:`save_edit` saved to the model it was made from (ledger replay): a LoRA adapter."""
        from ..models.lora import apply_adapter

        return apply_adapter(model, directory)


# What a model can offer a method, and how the runner recognises it.
CAPABILITIES = {
    "lora_targets": "layers LoRA can adapt: model.spec.lora_targets",
    "split_backbone": "a backbone split into lower and upper halves: model.lower / model.upper_embed",
    "rebuildable": "an architecture rebuilt from its spec (forgetkit ViTs): model.spec.arch",
    "zero_shot": "classification over any class names (a CLIP): model.predict(images, classes)",
    "text_projection": "a text projection to adapt (a CLIP): model.set_text_projection",
    "recovered": "withdrawn LIRF deposits (`forgetkit restore --method withdraw`): model.deposit_info",
}


def model_capabilities(model: torch.nn.Module) -> set[str]:
    found = set()
    if getattr(getattr(model, "spec", None), "lora_targets", None):
        found.add("lora_targets")
    if callable(getattr(model, "lower", None)) and callable(getattr(model, "upper_embed", None)):
        found.add("split_backbone")
    if getattr(getattr(model, "spec", None), "arch", None):
        found.add("rebuildable")
    if callable(getattr(model, "predict", None)) and callable(getattr(model, "use_classes", None)):
        found.add("zero_shot")
    if callable(getattr(model, "set_text_projection", None)):
        found.add("text_projection")
    if getattr(model, "deposit_info", None):
        found.add("recovered")
    return found


def build_method(config: MethodConfig | dict, ctx: MethodContext) -> Method:
    """Build a method from its typed config (or a ``{"name": ..., **fields}`` mapping)."""
    config = config if isinstance(config, MethodConfig) else MethodConfig.parse(config or {})
    return METHODS.get(config.name)(config, ctx)
