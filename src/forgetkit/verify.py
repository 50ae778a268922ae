"""Verification that forgotten classes cannot be cheaply recovered (docs/verify.md).

Top-1 accuracy of the edited model's own head says little about what its features still hold. For the classes a
model forgot (and its retained classes as the control), :func:`verify_forgetting` measures:

* **membership inference**, loss-based (the NeurIPS 2023 unlearning kit's ``simple_mia``: logistic regression on
  per-image losses, cross-validated AUC; 0.5 = the attacker cannot tell), on forgotten training vs held-out images
  and on forgotten training vs held-out retained images;
* **membership inference with SalUn's confidence features** (true-class confidence, entropy, modified entropy): an
  RBF SVC fitted on retained training (members) vs held-out retained (non-members) images, applied to the forgotten
  classes' training images; *efficacy* is the share it calls non-members (higher = more forgotten);
* a **linear probe** and **k-NN** on frozen penultimate features, trained on a few images per class and scored on
  held-out images of the forgotten classes: a model that only moved its head still separates them;
* **relearn steps**: full fine-tuning on k images per forgotten class until held-out accuracy on them reaches a
  share of the pre-trained model's, capped;
* **CKA** (linear) of the forgotten classes' features to the pre-trained model's and to a reference's.

A *reference* is a model trained without the forgotten classes (``forgetkit pretrain`` on the retained classes,
``data.classes``): the target every number is read against. Every draw flows from the seed.
"""

from __future__ import annotations

import copy
import hashlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ForgetkitError
from .models.checkpoint import fingerprint
from .run_config import VerifyConfig
from .runtime import rng


# ------------------------------------------------------------------------------------------------------ features
@torch.no_grad()
def outputs(model, images, device, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Penultimate features, logits and labels of ``images`` (eval mode)."""
    model.eval()
    feats, logits, labels = [], [], []
    for x, y in torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False):
        emb = model.embed(x.to(device))
        feats.append(emb.cpu())
        logits.append(model.head(emb).cpu())
        labels.append(y)
    return {"features": torch.cat(feats), "logits": torch.cat(logits), "labels": torch.cat(labels)}


def losses_of(out: dict) -> np.ndarray:
    return F.cross_entropy(out["logits"], out["labels"], reduction="none").numpy()


def confidence_features(out: dict) -> np.ndarray:
    """SalUn's attack features per image: true-class confidence, entropy, modified entropy (Song & Mittal)."""
    p = out["logits"].double().softmax(1).clamp(1e-12, 1 - 1e-12)  # float64: 1 − 1e-12 must stay below 1
    y = out["labels"]
    p_true = p.gather(1, y[:, None]).squeeze(1)
    entropy = -(p * p.log()).sum(1)
    others = -(p * (1 - p).log())
    others.scatter_(1, y[:, None], 0.0)
    m_entropy = -(1 - p_true) * p_true.log() + others.sum(1)
    return torch.stack([p_true, entropy, m_entropy], 1).numpy()


# ------------------------------------------------------------------------------------------------------ checks
def loss_attack_auc(members: np.ndarray, nonmembers: np.ndarray, folds: int, seed: int) -> float:
    """Cross-validated ROC AUC of logistic regression telling members from non-members by their loss (the NeurIPS
    2023 unlearning kit's ``simple_mia``), on equal numbers of each (the larger set subsampled)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    n = min(len(members), len(nonmembers))
    if n < folds:
        raise ForgetkitError(f"the attack needs at least {folds} images on each side, got {n}; lower eval.verify.folds")
    pick = np.random.default_rng(seed)
    members, nonmembers = pick.permutation(members)[:n], pick.permutation(nonmembers)[:n]
    x = np.concatenate([members, nonmembers]).reshape(-1, 1)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="roc_auc").mean())


def confidence_attack_efficacy(shadow_members: np.ndarray, shadow_nonmembers: np.ndarray,
                               targets: np.ndarray) -> float:
    """SalUn's MIA-efficacy: an RBF SVC (C 3, gamma 'auto', as SalUn) fitted on retained training vs held-out images'
    confidence features; the share of ``targets`` (the forgotten classes' training images) it calls non-members."""
    from sklearn.svm import SVC

    n = min(len(shadow_members), len(shadow_nonmembers))
    x = np.concatenate([shadow_members[:n], shadow_nonmembers[:n]])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float((attack.predict(targets) == 0).mean())


def probe_accuracy(train_x, train_y, test_x, test_y, knn_k: int) -> dict[str, float]:
    """Accuracy of a linear probe (logistic regression on standardised features) and of cosine k-NN, fitted on
    ``train`` and scored on ``test``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    knn = KNeighborsClassifier(n_neighbors=knn_k, metric="cosine").fit(train_x, train_y)
    return {"probe": 100.0 * float((probe.predict(test_x) == test_y).mean()),
            "knn": 100.0 * float((knn.predict(test_x) == test_y).mean())}


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices of the same images (n × d1, n × d2): 1 = the same up to rotation and
    scale, 0 = unrelated."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def relearn_steps(model, shots, held_out, target: float, cfg: VerifyConfig, device, seed: int) -> int | None:
    """Optimisation steps of full fine-tuning (Adam, one batch of all ``shots``) until accuracy on ``held_out``
    reaches ``target`` percent, checked every ``relearn_eval_every`` steps; None when the cap comes first."""
    with torch.random.fork_rng(devices=[]):  # dropout draws from a fixed seed, leaving the caller's generators be
        torch.manual_seed(seed)
        return _relearn(model, shots, held_out, target, cfg, device)


def _relearn(model, shots, held_out, target: float, cfg: VerifyConfig, device) -> int | None:
    model = copy.deepcopy(model).to(device)
    params = [p for n, p in model.named_parameters() if not n.startswith("head.prototypes")]
    for p in params:
        p.requires_grad_(True)
    x, y = (torch.stack([shots[i][0] for i in range(len(shots))]).to(device),
            torch.tensor([shots[i][1] for i in range(len(shots))], device=device))
    optimizer = torch.optim.Adam(params, lr=cfg.relearn_lr)
    held_x, held_y = (t.to(device) for t in next(iter(torch.utils.data.DataLoader(held_out,
                                                                                  batch_size=len(held_out)))))
    if reaches(model, held_x, held_y, target):
        return 0
    for step in range(1, cfg.relearn_max_steps + 1):
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.relearn_eval_every == 0 and reaches(model, held_x, held_y, target):
            return step
    return None


@torch.no_grad()
def reaches(model, x: torch.Tensor, y: torch.Tensor, target: float, batch_size: int = 128) -> bool:
    """Whether accuracy on (x, y) is at least ``target`` percent. Stops as soon as the answer is certain (enough
    right, or too many wrong), so relearning's frequent checks cost a fraction of a full pass; the answer is the
    full pass's."""
    model.eval()
    needed, right = target / 100.0 * len(y), 0
    for start in range(0, len(y), batch_size):
        right += int((model(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum())
        unseen = max(len(y) - start - batch_size, 0)
        if right >= needed or right + unseen < needed:
            break
    return right >= needed


# ------------------------------------------------------------------------------------------------------ the suite
class Verifier:
    """The checks of one model's forgotten classes, with the draws and the reference rows fixed once.

    ``train`` are the images the models were trained on (members), ``test`` held-out images of every class;
    ``pretrained`` the model before any forgetting; ``reference`` (optional) a model trained without the forgotten
    classes, with its head aligned to the run's classes (:func:`align_head`)."""

    def __init__(self, cfg: VerifyConfig, train, test, seed: int, device, pretrained, reference=None):
        self.cfg, self.train, self.test, self.seed, self.device = cfg, train, test, seed, device
        self.pretrained, self.reference = pretrained, reference

    def _draw(self, images, classes: list[int], per_class: int, purpose: str, part: int | None = None):
        gen = rng(self.seed, purpose, part)
        chosen = []
        for c in sorted(classes):
            idx = images.indices_of([c])
            chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        return images.subset(torch.sort(torch.cat(chosen)).values)

    def __call__(self, model, forgotten: list[int], retained: list[int]) -> dict:
        cfg = self.cfg
        if not forgotten:
            raise ForgetkitError("nothing to verify: the model has forgotten no class")
        per = cfg.images_per_class
        forget_train = self._draw(self.train, forgotten, per, "verify_images")
        forget_test = self._draw(self.test, forgotten, per, "verify_images")
        retain_train = self._draw(self.train, retained, max(1, per // 2), "verify_images")
        retain_test = self._draw(self.test, retained, max(1, per // 2), "verify_images")
        probe_train = self._draw(self.train, forgotten + retained, cfg.probe_per_class, "verify_probe")
        rows = {"model": model, "pretrained": self.pretrained}
        if self.reference is not None:
            rows["reference"] = self.reference
        pre_ft = outputs(self.pretrained, forget_test, self.device)
        target = cfg.relearn_threshold * 100.0 * float((pre_ft["logits"].argmax(1) == pre_ft["labels"]).float().mean())
        results = {"forgotten_classes": len(forgotten), "relearn_target": target}
        # The pre-trained and reference rows depend on their weights and the draws only: a bench verifies every
        # method on the same requests, and computes them once per request (in one process).
        draws = [forget_train, forget_test, retain_train, retain_test, probe_train]
        context = (self.seed, repr(cfg), tuple(forgotten), tuple(retained), _digest(draws),
                   _fingerprint(self.pretrained), _fingerprint(self.reference))
        for name, net in rows.items():
            start = time.perf_counter()
            key = (name, *context) if name != "model" else None
            if key in _CONTEXT_ROWS:
                results[name] = {**_CONTEXT_ROWS[key], "seconds": round(time.perf_counter() - start, 2)}
                continue
            ft, fte = outputs(net, forget_train, self.device), outputs(net, forget_test, self.device)
            rt, rte = outputs(net, retain_train, self.device), outputs(net, retain_test, self.device)
            pt = outputs(net, probe_train, self.device)
            probes_forgotten = probe_accuracy(pt["features"].numpy(), pt["labels"].numpy(),
                                              fte["features"].numpy(), fte["labels"].numpy(), cfg.knn_k)
            probes_retained = probe_accuracy(pt["features"].numpy(), pt["labels"].numpy(),
                                             rte["features"].numpy(), rte["labels"].numpy(), cfg.knn_k)
            row = {
                "acc_forgotten": 100.0 * float((fte["logits"].argmax(1) == fte["labels"]).float().mean()),
                "mia_loss_auc": loss_attack_auc(losses_of(ft), losses_of(fte), cfg.folds, self.seed),
                "mia_loss_auc_vs_retained": loss_attack_auc(losses_of(ft), losses_of(rte), cfg.folds, self.seed),
                "mia_loss_auc_retained": loss_attack_auc(losses_of(rt), losses_of(rte), cfg.folds, self.seed),
                "mia_confidence_efficacy": confidence_attack_efficacy(confidence_features(rt),
                                                                      confidence_features(rte),
                                                                      confidence_features(ft)),
                "probe_forgotten": probes_forgotten["probe"], "knn_forgotten": probes_forgotten["knn"],
                "probe_retained": probes_retained["probe"], "knn_retained": probes_retained["knn"],
                "cka_to_pretrained": linear_cka(fte["features"], pre_ft["features"]),
                "relearn_steps": {},
            }
            if "reference" in rows:
                row["cka_to_reference"] = linear_cka(fte["features"],
                                                     outputs(self.reference, forget_test, self.device)["features"])
            for k in cfg.relearn_shots:
                shots = self._draw(self.train, forgotten, k, "verify_shots", part=k)
                row["relearn_steps"][str(k)] = relearn_steps(net, shots, forget_test, target, cfg, self.device,
                                                             self.seed)
            row["seconds"] = round(time.perf_counter() - start, 2)  # the cost claim of docs/verify.md
            results[name] = row
            if key is not None:
                _CONTEXT_ROWS[key] = copy.deepcopy(row)
        return results


_CONTEXT_ROWS: dict[tuple, dict] = {}


def _fingerprint(model) -> str | None:
    return fingerprint(model) if model is not None else None


def _digest(subsets) -> str:
    """SHA-256 of the drawn images and labels: the same draws of the same data, whatever objects hold them."""
    digest = hashlib.sha256()
    for subset in subsets:
        for x, y in torch.utils.data.DataLoader(subset, batch_size=512, shuffle=False):
            digest.update(x.contiguous().numpy().tobytes())
            digest.update(y.numpy().tobytes())
    return digest.hexdigest()


def align_head(reference, reference_classes: list[str], classes: list[str]):
    """A reference classifier whose head covers ``classes``: its own rows where it knows the class, zero rows (logit
    0) for the classes it was trained without. Its features are untouched."""
    from .models.vit import LinearHead

    missing = [name for name in reference_classes if name not in classes]
    if missing:
        raise ForgetkitError(f"the reference knows {missing[0]!r}, which this model does not; train the reference "
                             f"on the model's retained classes")
    if not isinstance(reference.head, LinearHead):
        raise ForgetkitError("the reference must have a linear head (a model made by forgetkit pretrain)")
    aligned = copy.deepcopy(reference)
    old = reference.head.fc
    head = LinearHead(old.in_features, len(classes)).to(old.weight.device)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
        for i, name in enumerate(reference_classes):
            head.fc.weight[classes.index(name)] = old.weight[i]
            head.fc.bias[classes.index(name)] = old.bias[i]
    aligned.head = head
    return aligned.eval()
