import math

import pytest
import torch

from forgetkit.losses import (
    bounded_forget_loss,
    class_mass_loss,
    class_mean_gap,
    feature_relabel_loss,
    group_lasso,
    group_norms,
    group_soft_threshold,
)
from forgetkit.metrics import PerClass, evaluate_classes, h_mean


def test_bounded_forget_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))) / 2  # batch mean
    loss = bounded_forget_loss(logits, labels, bound=5.0)
    assert loss.item() == pytest.approx(5.0 - ce, abs=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0  # below the bound: pushes CE up
    logits.grad = None
    done = bounded_forget_loss(logits, labels, bound=0.5)  # CE ≈ 0.72 > 0.5: nothing left to do
    assert done.item() == 0.0
    done.backward()
    assert logits.grad.abs().sum() == 0


def test_group_lasso_hand_computed():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    c = torch.tensor([0.0, 0.0])
    assert group_lasso([[a], [b, c]]).item() == pytest.approx(5.0 + 5.0)
    assert group_lasso([[a, b]]).item() == pytest.approx(math.sqrt(25 + 25))
    assert group_norms({"0": [a], "1": [c]}) == {"0": pytest.approx(5.0), "1": 0.0}


def test_per_sample_bound_keeps_pushing_the_sample_below_it():
    logits = torch.tensor([[9.0, 0.0], [0.0, 9.0]], requires_grad=True)   # CE ≈ 1.2e-4 (not pushed), ≈ 9 (pushed)
    labels = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none").detach()
    assert bounded_forget_loss(logits, labels, bound=3.0).item() == 0.0      # the batch mean (≈ 4.5) is past it
    per_sample = bounded_forget_loss(logits, labels, bound=3.0, per_sample=True)
    assert per_sample.item() == pytest.approx((3.0 - ce[0].item()) / 2, rel=1e-5)
    per_sample.backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1].abs().sum() == 0


def test_class_mass_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0]], requires_grad=True)
    # softmax rows: [1/4, 1/4, 1/2] and [3/5, 1/5, 1/5]; mass on classes {1, 2}: 3/4 and 2/5
    loss = class_mass_loss(logits, [1, 2])
    assert loss.item() == pytest.approx((-math.log(1 / 4) - math.log(3 / 5)) / 2, abs=1e-6)
    loss.backward()
    assert logits.grad[:, 1:].sum() > 0          # descending lowers the logits of the guarded classes
    assert class_mass_loss(logits, []).item() == 0.0
    gone = torch.tensor([[30.0, -30.0, -30.0]], requires_grad=True)   # no mass left on them: nothing to push
    class_mass_loss(gone, [1, 2]).backward()
    assert gone.grad.abs().max() < 1e-12
    collapsed = torch.tensor([[-80.0, 80.0, 0.0]])                     # all mass on a guarded class: still finite
    assert torch.isfinite(class_mass_loss(collapsed, [1]))


def test_group_soft_threshold_by_hand():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])   # group norms 5 and 0.5, sizes 2 and 3
    c = torch.tensor([[0.0]])
    group_soft_threshold([[a], [b, c]], threshold=1.0)
    # shrunk by threshold·√p_g = √2 in norm, same direction (the standard group lasso's size weight)
    assert torch.allclose(a, torch.tensor([3.0, 4.0]) * (1 - 2 ** 0.5 / 5))
    assert torch.equal(b, torch.zeros(2)) and torch.equal(c, torch.zeros(1, 1))  # 0.5 < √3: exactly zero
    group_soft_threshold([[b, c]], threshold=1.0)                 # an all-zero group stays zero (no 0/0)
    assert torch.equal(b, torch.zeros(2))
    big = torch.full((400,), 0.5)                                  # norm 10, size 400: shrinks by 20, so zero
    small = torch.tensor([6.0, 8.0])                               # norm 10, size 2: shrinks by √2 only
    group_soft_threshold([[big], [small]], threshold=1.0)
    assert torch.equal(big, torch.zeros(400)) and small.norm() > 8


def test_group_lasso_gradient_points_along_the_group():
    p = torch.tensor([3.0, 4.0], requires_grad=True)
    group_lasso([[p]]).backward()
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("pre_f,acc_f,acc_r,published", [
    (74.65, 0.00, 74.16, 74.40),   # T-PAMI Table 3, GS-LoRA 100-20
    (73.80, 0.00, 73.37, 73.59),   # Table 3, GS-LoRA 80-20
    (73.91, 0.06, 74.88, 74.36),   # Table 3, GS-LoRA 60-20
    (87.40, 0.10, 85.00, 86.13),   # Table 4, GS-LoRA 100-20
    (74.65, 14.29, 72.85, 66.02),  # Table 3 few-shot, GS-LoRA 100-20
    (70.88, 3.58, 66.96, 67.13),   # Table 2, L2* 100-5
])
def test_h_mean_recomputes_published_rows(pre_f, acc_f, acc_r, published):
    assert h_mean(pre_f, acc_f, acc_r) == pytest.approx(published, abs=0.01)


def test_h_mean_exposes_the_papers_typo():
    # Table 2 LwF 100-5 prints 67.95, but its own Acc_r 68.55 / Acc_f 0.00 give 69.70 (gs-lora.md §6.1)
    assert h_mean(70.88, 0.00, 68.55) == pytest.approx(69.70, abs=0.01)
    assert h_mean(50.0, 60.0, 0.0) == 0.0
    assert h_mean(89.7, 91.4, 85.15) == 0.0  # Acc_f rose: nothing was forgotten, H is 0, not negative


def test_per_class_accuracy_and_evaluation():
    pc = PerClass(correct=torch.tensor([5, 0, 3]), total=torch.tensor([10, 4, 3]))
    assert pc.accuracy([0, 2]) == pytest.approx(100 * 8 / 13)
    assert pc.accuracy([]) is None

    class Fixed(torch.nn.Module):
        def forward(self, x, labels=None):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).float()

    class DS(torch.utils.data.Dataset):
        classes = ["a", "b", "c"]
        x = torch.tensor([[0.0], [1.0], [1.0], [2.0]])
        y = torch.tensor([0, 1, 2, 2])

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    pc = evaluate_classes(Fixed(), DS(), batch_size=3)
    assert pc.correct.tolist() == [1, 1, 1] and pc.total.tolist() == [1, 1, 2]
    # LIRF's per-batch mean: the images of the classes asked about, in order, in batches of 3 -> mean of batch means
    pc = evaluate_classes(Fixed(), DS(), batch_size=3, batch_mean=3)
    assert pc.accuracy([0, 1, 2]) == pytest.approx(100 * (2 / 3 + 1) / 2)  # hits [1, 1, 0 | 1]; by image: 75
    assert pc.accuracy([1, 2]) == pytest.approx(100 * 2 / 3)               # hits [1, 0, 1]: one batch
    assert pc.correct.tolist() == [1, 1, 1]                                # counts as before


def test_feature_relabel_loss_by_hand():
    targets = torch.tensor([[3.0, 4.0], [0.0, 5.0]])            # mean squared norm 25
    features = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    loss = feature_relabel_loss(features, targets)
    assert loss.item() == pytest.approx((0 + 25) / 2 / 25)
    loss.backward()
    assert features.grad[0].abs().sum() == 0 and features.grad[1].abs().sum() > 0   # only the one off its target
    assert feature_relabel_loss(targets, targets).item() == 0.0


def test_class_mean_gap_by_hand():
    # the reference's centre is 0, its variances 0.5 and 2 (mean 1.25)
    reference = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    features = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([7, 7, 3])
    # class 7's mean (3, 0): 9; class 3's (0, 1): 1; their mean 5, over 1.25 and 2 dimensions
    assert class_mean_gap(features, labels, reference).item() == pytest.approx(5 / 1.25 / 2)
    assert class_mean_gap(reference, torch.tensor([0, 0, 0, 0]), reference).item() == pytest.approx(0.0)
