"""Shared machinery of the papers' full fine-tuning baselines.

* All parameters train except the classifier head (as in the papers' baselines; ``train_head`` opens it).
* "Forgetting" by cross-entropy towards a random *wrong* label, drawn uniformly from every class but the true one.
  The original drew ``(y + randint(1, 100)) mod K`` (both ends included) with K = the number of forget classes, i.e.
  only from the first K label indices, whatever those classes are (docs/baselines.md), and replaced a draw equal to y by
  (y + 1) mod K; ``faithful_relabel: true`` reproduces both.
* A frozen teacher is a copy of the model at the start of each task (the original copied the pre-trained model
  once; both are the same on the first task).
"""

from __future__ import annotations

import copy

import torch

from ..runtime import rng
from .base import Method


class FullFinetune(Method):
    """Base of the baselines that update the whole backbone."""

    default_lr = 1e-4
    uses_teacher = False

    def setup(self, model, request, data):
        self.request, self.data = request, data
        self.generator = rng(self.ctx.seed, "wrong_labels", request.index)
        for name, param in model.named_parameters():
            param.requires_grad = self.cfg.train_head or not name.startswith("head.")
        self.teacher = None
        if self.uses_teacher:
            self.teacher = copy.deepcopy(model).eval()
            for param in self.teacher.parameters():
                param.requires_grad = False
        self.module = model
        model.train()
        self.before_training()
        return model

    def before_training(self) -> None:
        """Hook for importance passes and buffers, run once the task's model and data are set."""

    def wrong_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """A random label different from each true label (see the module docstring)."""
        if self.cfg.faithful_relabel:  # (y + randint[1, 100]) mod K, and y + 1 where that lands on y itself
            k = len(self.request.classes)
            offset = torch.randint(1, 101, labels.shape, generator=self.generator).to(labels.device)
            wrong = (labels + offset) % k
            return torch.where(wrong == labels, (labels + 1) % k, wrong)
        c = self.ctx.num_classes
        offset = torch.randint(1, c, labels.shape, generator=self.generator).to(labels.device)
        return (labels + offset) % c

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(x, labels)

    def wrong_label_ce(self, forget) -> torch.Tensor:
        """The baselines' forgetting term: cross-entropy of the forget batch towards random wrong labels."""
        x, wrong = forget[0], self.wrong_labels(forget[1])
        return torch.nn.functional.cross_entropy(self.logits(x, wrong), wrong)

    def finish(self):
        self.teacher = None
        for param in self.module.parameters():
            param.requires_grad = False
        return self.module.eval()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch.

    The original LwF took the log of a log-softmax, replaced the NaNs by 0, and so optimised a KD term that was
    identically zero (docs/baselines.md); this is the intended term.
    """
    log_p_student = torch.log_softmax(student_logits / temperature, dim=1)
    p_teacher = torch.softmax(teacher_logits / temperature, dim=1)
    return torch.nn.functional.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature ** 2
