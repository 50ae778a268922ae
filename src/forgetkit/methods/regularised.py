"""L2*, EWC* and MAS*: rehearsal plus an importance-weighted pull towards earlier weights (docs/baselines.md).

``L = w_f·CE(f(x_f), ỹ_f) + w_r·CE(f(x_r), y_r) + λ · Σ_tasks Σ_θ Ω_θ (θ − θ*_task)²``, with θ* the weights at
the start of each task so far and Ω: 1 (L2), the diagonal empirical Fisher of CE on the replay data (EWC), or the
mean absolute gradient of the squared logit norm (MAS). The star means "with a rehearsal buffer", as in the papers.

Data term: forgetkit sums the two CEs (w_f = w_r = 1, ``data_term: sum``). The original trained on one shuffled
concatenation of the relabelled forget set and the replay set, one batch-mean CE per batch, whose expected value is
the pooled weighting w = n / (n_f + n_r) of each set's size (about 0.2·CE_f + 0.8·CE_r on the face split);
``data_term: pooled`` gives that. Importance (EWC, MAS) is estimated on up to ``importance_images`` replay images
drawn class-balanced (every retained class in turn), in batches of the run's batch size; the original used every
batch of its shuffled replay loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ForgetkitError
from ..runtime import BalancedBatchSampler, inference_loader, rng
from .base import register_method
from .finetune import FullFinetune


class ImportanceRegularised(FullFinetune):
    """Shared loop; subclasses define :meth:`importance`."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg.importance_images < 0:
            raise ForgetkitError("method.importance_images must be 0 (all) or a positive count")
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def importance(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self):
        """The anchors (θ*, Ω) of every earlier request: the penalty of later requests depends on them."""
        return {f"anchor{i}.{part}.{name}": tensor for i, pair in enumerate(self.anchors)
                for part, values in zip(("theta", "omega"), pair) for name, tensor in values.items()}

    def load_state_dict(self, state):
        count = len({key.split(".", 1)[0] for key in state})
        self.anchors = []
        for i in range(count):
            pair = ({}, {})
            for key, tensor in state.items():
                anchor, part, name = key.split(".", 2)
                if anchor == f"anchor{i}":
                    pair[0 if part == "theta" else 1][name] = tensor.to(self.ctx.device)
            self.anchors.append(pair)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def before_training(self):
        omega = self.importance()
        theta = {n: p.detach().clone() for n, p in self.trainable().items()}
        if self.cfg.online and self.anchors:
            old_theta, old_omega = self.anchors[0]
            omega = {n: old_omega[n] + omega[n] for n in omega}
            self.anchors = [(theta, omega)]
        else:
            self.anchors.append((theta, omega))

    def penalty(self) -> torch.Tensor:
        params = self.trainable()
        total = next(iter(params.values())).new_zeros(())
        for theta, omega in self.anchors:
            for name, param in params.items():
                total = total + (omega[name] * (param - theta[name]) ** 2).sum()
        return total

    def replay_batches(self):
        """The importance pass's batches: up to ``importance_images`` replay images, the classes taking turns."""
        retain = self.data.retain
        if len(retain) == 0:
            return
        cap = self.cfg.importance_images
        if cap == 0 or cap >= len(retain):  # every replay image once
            images = retain
        else:  # a class-balanced draw of `cap` images
            order = next(iter(BalancedBatchSampler(retain.targets, cap, rng(
                self.ctx.seed, "importance_images", self.request.index))))
            images = retain.subset(torch.tensor(order))
        for x, y in inference_loader(images, self.ctx.batch_size, self.ctx.device):
            yield x, y.to(self.ctx.device)

    def data_weights(self) -> tuple[float, float]:
        if self.cfg.data_term == "sum":
            return 1.0, 1.0
        n_f, n_r = len(self.data.forget), len(self.data.retain)
        return n_f / (n_f + n_r), n_r / (n_f + n_r)

    def training_step(self, batch, step):
        forget, retain = batch["forget"], batch["retain"]
        xf = forget[0]
        w_f, w_r = self.data_weights()
        losses = {"forget": self.wrong_label_ce(forget)}
        losses["retain"] = F.cross_entropy(self.logits(*retain), retain[1]) if retain else xf.new_zeros(())
        losses["penalty"] = self.penalty()
        losses["loss"] = w_f * losses["forget"] + w_r * losses["retain"] + self.cfg.reg_lambda * losses["penalty"]
        return losses


@register_method("l2")
class L2(ImportanceRegularised):
    """L2*: every weight equally important."""


    def importance(self):
        return {n: torch.ones_like(p) for n, p in self.trainable().items()}


def _gradient_importance(method: ImportanceRegularised, objective) -> dict[str, torch.Tensor]:
    """Mean over replay batches of ``objective(grad)`` per parameter, in eval mode."""
    params = method.trainable()
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = method.module.training
    method.module.eval()
    batches = 0
    for x, y in method.replay_batches():
        grads = torch.autograd.grad(objective(x, y), list(params.values()), allow_unused=True)
        for (name, _), grad in zip(params.items(), grads):
            if grad is not None:
                total[name] += method.transform(grad, len(x))
        batches += 1
    method.module.train(was_training)
    return {n: v / max(1, batches) for n, v in total.items()}


@register_method("ewc")
class EWC(ImportanceRegularised):
    """EWC*: Ω = diagonal empirical Fisher of the replay CE (true labels), as the original: grad² · batch size."""


    @staticmethod
    def transform(grad, batch_size):
        return grad.pow(2) * batch_size

    def importance(self):
        return _gradient_importance(self, lambda x, y: F.cross_entropy(self.module(x, y), y))


@register_method("mas")
class MAS(ImportanceRegularised):
    """MAS*: Ω = |∇ mean(logits²)| on replay images (no labels needed)."""


    @staticmethod
    def transform(grad, batch_size):
        return grad.abs()

    def importance(self):
        return _gradient_importance(self, lambda x, y: self.module(x, y).pow(2).mean())
