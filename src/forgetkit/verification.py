"""Verification that forgotten classes cannot be cheaply recovered (docs/verify.md).

Top-1 accuracy of the edited model's own head says little about what its features still hold. For the classes a
model forgot (and its retained classes as the control), :class:`Verifier` measures:

* the **loss attack** (the NeurIPS 2023 unlearning kit's ``simple_mia``: logistic regression on per-image losses),
  reported in the kit's own form (accuracy over 10 stratified shuffle splits) and as cross-validated ROC AUC; 0.5 =
  the attacker cannot tell members from non-members;
* **SalUn's confidence attack** (true-class confidence, entropy, modified entropy): an RBF SVC fitted on retained
  members vs non-members, applied to the forgotten classes' members; *efficacy* is the share called non-members;
* a **linear probe** and **k-NN** on frozen penultimate features, fitted on a few images per class and scored on
  non-member images of the forgotten classes;
* the **prototype attack**: a few images per class give class prototypes on the frozen features; nearest-prototype
  accuracy on non-member images of the forgotten classes;
* **relearning**: full fine-tuning on a few images of every class (forgotten and retained, balanced), read per class
  (macro-F1 over the forgotten classes, so a head biased to one of them does not count), as a curve; the steps to
  reach a target set by the reference's own curve;
* the **retain-only rebound**: fine-tuning on retained images only, and how far the forgotten classes' accuracy
  comes back (it needs no reference: a model that never learnt them has nothing to come back);
* **CKA** (linear) of the forgotten classes' features to the pre-trained model's and the reference's, beside its
  null: the CKA of independent random features at the same sample size.
* with images of classes none of the models trained on (``eval.verify.novel``), the probe, k-NN and prototype
  attack with those classes in the forgotten ones' place: a never-learnt level that needs no reference
  (:func:`novel_checks`; docs/verify.md measures how far it can be trusted).

Members and non-members follow one rule (:func:`membership_images`): members are the training images the
pre-trained model trained on; non-members are images it never saw (the test split, or the validation hold-out when
the pre-training left it out). A *reference* is a model trained without the forgotten classes (``forgetkit
pretrain`` on the retained classes, ``data.classes``): the target every number is read against. Every draw flows
from the seed.
"""

from __future__ import annotations

import copy
import hashlib
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .engine.config import RuntimeConfig, VerifyConfig
from .errors import ForgetkitError
from .extras import require
from .models.checkpoint import fingerprint
from .models.formats import load_checkpoint, resolve_model_path
from .runtime import inference_loader, rng

if TYPE_CHECKING:
    from .engine.plan import VerifyPlan
    from .requests.protocol import Protocol


# ------------------------------------------------------------------------------------------------------ features
@torch.no_grad()
def outputs(model, images, device, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Penultimate features, logits and labels of ``images`` (eval mode)."""
    model.eval()
    feats, logits, labels = [], [], []
    for x, y in inference_loader(images, batch_size, device):
        emb = model.embed(x)
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
def _balanced(members: np.ndarray, nonmembers: np.ndarray, seed: int, at_least: int):
    n = min(len(members), len(nonmembers))
    if n < at_least:
        raise ForgetkitError(f"the attack needs at least {at_least} images on each side, got {n}; lower "
                             f"eval.verify.folds or raise eval.verify.images_per_class")
    pick = np.random.default_rng(seed)
    members, nonmembers = pick.permutation(members)[:n], pick.permutation(nonmembers)[:n]
    return np.concatenate([members, nonmembers]).reshape(-1, 1), np.concatenate([np.ones(n), np.zeros(n)])


def loss_attack_auc(members: np.ndarray, nonmembers: np.ndarray, folds: int, seed: int) -> float:
    """Cross-validated ROC AUC of logistic regression telling members from non-members by their loss, on equal
    numbers of each (the larger set subsampled). The attack is the kit's ``simple_mia``; the AUC is forgetkit's
    reading of it (threshold-free)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x, y = _balanced(members, nonmembers, seed, folds)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="roc_auc").mean())


def loss_attack_accuracy(members: np.ndarray, nonmembers: np.ndarray, seed: int, splits: int = 10) -> float:
    """The NeurIPS 2023 unlearning kit's ``simple_mia`` as the kit reports it: mean accuracy of logistic regression
    on the loss over ``splits`` stratified shuffle splits (10 % held out each), on balanced members and
    non-members."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    x, y = _balanced(members, nonmembers, seed, 10)
    cv = StratifiedShuffleSplit(n_splits=splits, test_size=0.1, random_state=seed)
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy").mean())


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


def prototype_attack(pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     shots: int, draws: int, seed: int) -> float:
    """The prototype relearning attack: ``shots`` images per class (drawn from ``pool``) give each class a prototype
    (the mean of their L2-normalised features); the accuracy (percent) of the nearest prototype (cosine) on
    ``test``, averaged over ``draws`` seeded draws. Nothing is trained: it reads what the frozen features hold."""
    gen = torch.Generator().manual_seed(seed)
    pool_x, test_x = F.normalize(pool_x.double(), dim=1), F.normalize(test_x.double(), dim=1)
    classes = torch.unique(pool_y)
    scores = []
    for _ in range(draws):
        protos = []
        for c in classes:
            idx = torch.nonzero(pool_y == c).flatten()
            protos.append(pool_x[idx[torch.randperm(len(idx), generator=gen)[:shots]]].mean(0))
        predicted = classes[(test_x @ F.normalize(torch.stack(protos), dim=1).T).argmax(1)]
        scores.append(float((predicted == test_y).double().mean()))
    return 100.0 * sum(scores) / len(scores)


def novel_checks(net, probe_out: dict, forgotten: list[int], novel_probe, novel_test, cfg: VerifyConfig, device,
                 seed: int) -> dict[str, float]:
    """The probe, k-NN and prototype attack of the forgotten classes with never-seen classes in their place: fitted
    on the other classes' probe images (from ``probe_out``, :func:`outputs` of the probe draw) and on
    ``novel_probe``, scored on ``novel_test``. What the features give on as many classes as were forgotten that
    they never learnt: the level a model that never learnt the forgotten classes reads, without training one."""
    keep = ~torch.isin(probe_out["labels"], torch.tensor(forgotten))
    offset = probe_out["logits"].shape[1]  # novel labels after the model's own, so no label means two classes
    nv_train, nv_test = outputs(net, novel_probe, device), outputs(net, novel_test, device)
    train_x = torch.cat([probe_out["features"][keep], nv_train["features"]])
    train_y = torch.cat([probe_out["labels"][keep], nv_train["labels"] + offset])
    test_y = nv_test["labels"] + offset
    probes = probe_accuracy(train_x.numpy(), train_y.numpy(), nv_test["features"].numpy(), test_y.numpy(), cfg.knn_k)
    return {"probe_novel": probes["probe"], "knn_novel": probes["knn"],
            "prototype_novel": prototype_attack(train_x, train_y, nv_test["features"], test_y, cfg.prototype_shots,
                                                cfg.prototype_draws, seed)}


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices of the same images (n × d1, n × d2): 1 = the same up to rotation and
    scale, 0 = unrelated."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def cka_null(n: int, dim_x: int, dim_y: int, seed: int, draws: int = 5) -> float:
    """Linear CKA of independent Gaussian features of the same shapes, averaged over ``draws``: what CKA reads for
    unrelated features at this sample size (far from 0 when ``n`` is not much larger than the widths)."""
    gen = torch.Generator().manual_seed(seed)
    return sum(linear_cka(torch.randn(n, dim_x, generator=gen, dtype=torch.float64),
                          torch.randn(n, dim_y, generator=gen, dtype=torch.float64)) for _ in range(draws)) / draws


@torch.no_grad()
def macro_f1(model, x: torch.Tensor, y: torch.Tensor, classes: list[int], batch_size: int = 256) -> float:
    """Mean per-class F1 (percent) over ``classes``, predictions over every image of ``x`` (forgotten and retained
    classes): a head that calls every image one forgotten class scores a low F1 on it (low precision) and 0 on the
    others, so biasing the head is not relearning."""
    model.eval()
    pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    scores = []
    for c in classes:
        tp = int(((pred == c) & (y == c)).sum())
        fp, fn = int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100.0 * sum(scores) / len(scores)


def _fine_tune(model, x: torch.Tensor, y: torch.Tensor, cfg: VerifyConfig, steps: int, seed: int, device,
               check=None) -> list:
    """Full fine-tuning (Adam, ``relearn_lr``) on minibatches of ``relearn_batch`` images drawn from (x, y) with a
    seeded generator; ``check(model, step)`` runs at step 0 and every ``relearn_eval_every`` steps and returns a
    value, or ``(value, stop)``. Returns the checks' values."""
    with torch.random.fork_rng(devices=[]):  # dropout draws from a fixed seed, leaving the caller's generators be
        torch.manual_seed(seed)
        model = copy.deepcopy(model).to(device)
        params = [p for n, p in model.named_parameters() if not n.startswith("head.prototypes")]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=cfg.relearn_lr)
        gen = torch.Generator().manual_seed(seed)
        x, y = x.to(device), y.to(device)
        values = []
        for step in range(steps + 1):
            if check is not None and (step % cfg.relearn_eval_every == 0 or step == steps):
                value = check(model, step)
                value, stop = value if isinstance(value, tuple) else (value, False)
                values.append(value)
                if stop:
                    break
            if step == steps:
                break
            pick = (torch.randperm(len(y), generator=gen)[:cfg.relearn_batch] if len(y) > cfg.relearn_batch
                    else torch.arange(len(y)))
            model.train()
            loss = F.cross_entropy(model(x[pick.to(device)]), y[pick.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return values


def relearn_curve(model, shots, held_out, forgotten: list[int], cfg: VerifyConfig, device, seed: int,
                  stop_at: float | None = None) -> list[list[float]]:
    """Relearning on ``shots`` (images of the forgotten and the retained classes, balanced): ``[step, macro-F1 over
    the forgotten classes on held_out]`` every ``relearn_eval_every`` steps up to ``relearn_max_steps``; stops once
    ``stop_at`` is reached (None: the whole curve)."""
    x, y = _stack(shots)
    held_x, held_y = (t.to(device) for t in _stack(held_out))

    def check(net, step):
        value = macro_f1(net, held_x, held_y, forgotten)
        return [step, round(value, 2)], stop_at is not None and value >= stop_at

    return _fine_tune(model, x, y, cfg, cfg.relearn_max_steps, seed, device, check)


# The least macro-F1 (points) that counts as relearnt. A reference that reaches 0 within the cap (glyphs60's
# 12-class requests at 5 shots, docs/verify.md) would otherwise set a target of 0, which every curve meets at step 0.
RELEARN_FLOOR = 1.0


def steps_to(curve: list[list[float]], target: float) -> int | None:
    """The first step of ``curve`` at or above ``target``; None when it never gets there."""
    return next((int(step) for step, value in curve if value >= target), None)


def retain_rebound(model, retained_shots, forget_held, cfg: VerifyConfig, device, seed: int) -> dict[str, float]:
    """Fine-tune on retained images only (``rebound_steps``) and measure the forgotten classes' top-1 accuracy
    (percent) on held-out images before and after: knowledge that is hidden, not removed, comes back from data that
    never shows the forgotten classes."""
    x, y = _stack(retained_shots)
    held_x, held_y = (t.to(device) for t in _stack(forget_held))

    @torch.no_grad()
    def accuracy(net, step):
        net.eval()
        return 100.0 * float((net(held_x).argmax(1) == held_y).float().mean())

    values = _fine_tune(model, x, y, cfg, cfg.rebound_steps, seed, device, accuracy)
    return {"before": values[0], "after": values[-1], "rebound": values[-1] - values[0]}


def _stack(images) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(inference_loader(images, max(1, len(images)))))


# ------------------------------------------------------------------------------------------------------ the suite
def membership_images(train, test, split: str, base_held_per_class: int, val_per_class: int,
                      reference_held_per_class: int | None = None):
    """The one member/non-member rule of every verification, returned as ``(members, non-members)``.

    Members are the training images the pre-trained model trained on: the training split less the validation
    hold-out its pre-training left out (``base_held_per_class``; 0 for a model whose pre-training is not recorded:
    then every training image may have been seen). Non-members are images it never saw: the test split
    (``split="test"``), or the validation images of a run evaluated on its validation split (``val``), which its
    pre-training, and the reference's, must have left out."""
    from .data.datasets import held_out_mask

    members = train.subset(torch.nonzero(~held_out_mask(train, base_held_per_class)).flatten())
    if split == "test":
        return members, test
    for name, held in (("pre-trained model", base_held_per_class), ("reference", reference_held_per_class)):
        if held is not None and held < val_per_class:
            raise ForgetkitError(
                f"the {name} was pre-trained on this run's validation images (it held out {held} per class, the "
                f"run {val_per_class}), so they are not non-members; verify on the test split, or pre-train with "
                f"-o val_per_class={val_per_class}")
    return members, train.subset(torch.nonzero(held_out_mask(train, val_per_class)).flatten())


def novel_images(cfg: VerifyConfig, classes: list[str], preprocess) -> tuple | None:
    """``eval.verify.novel``'s images, ``(train, test)`` at the model's preprocessing; None when none are given.
    Refuses a class the model knows: it would not stand for a never-learnt one."""
    if cfg.novel is None:
        return None
    from .data import load_data
    from .data.datasets import FlippedImages

    splits = load_data(cfg.novel)
    train, test = splits.train, splits.test
    if cfg.novel_flip != "none":
        train, test = FlippedImages(train, cfg.novel_flip), FlippedImages(test, cfg.novel_flip)
    known = sorted(set(train.classes) & set(classes))
    if known:
        raise ForgetkitError(f"eval.verify.novel holds the model's class {known[0]!r}; give images of classes the "
                             f"model never trained on, or flip them into new ones (eval.verify.novel_flip)")
    return train.with_preprocess(preprocess), test.with_preprocess(preprocess)


def held_per_class(manifest: dict) -> int | None:
    """Validation images per class a checkpoint's pre-training left out (0 when it records none; None when it
    records no pre-training, as for imported weights)."""
    pretrain = manifest.get("pretrain")
    return None if pretrain is None else int((pretrain.get("config") or {}).get("val_per_class", 0))


class Verifier:
    """The checks of one model's forgotten classes, with the draws and the reference rows fixed once.

    ``train`` are the images the models were trained on (members), ``test`` images none of them saw (non-members);
    see :func:`membership_images`. ``pretrained`` is the model before any forgetting; ``reference`` (optional) a
    model trained without the forgotten classes, with its head aligned to the run's classes (:func:`align_head`).
    ``memo`` keeps the pre-trained and reference rows by what they depend on (models, draws, classes): a bench hands
    one to every run, so that its methods share those rows instead of measuring them again. ``novel`` (optional):
    ``(train, test)`` images of classes none of the models trained on (:func:`novel_images`), for the never-learnt
    level that needs no reference."""

    def __init__(self, cfg: VerifyConfig, train, test, seed: int, device, pretrained, reference=None,
                 references: list | None = None, exact: bool = False, memo: dict | None = None, novel=None):
        require("sklearn", "verification (eval.verify, forgetkit verify)")  # its attacks and probes, before any work
        self.cfg, self.train, self.test, self.seed, self.device = cfg, train, test, seed, device
        self.pretrained, self.exact, self.novel = pretrained, exact, novel
        self.memo = memo if memo is not None else {}
        self.references = list(references or []) + ([reference] if reference is not None else [])

    def reference_for(self, forgotten: list[int], retained: list[int]):
        """The reference of a request: among those that know none of the forgotten classes, the one trained on
        exactly the retained classes; else, unless ``exact`` (a list was given), the only one given; else None.
        (:func:`align_head` records the classes a reference knows; a model without that record fits every
        request.)"""
        fit = [r for r in self.references if not set(forgotten) & getattr(r, "reference_classes", set())]
        exact = [r for r in fit if getattr(r, "reference_classes", None) == set(retained)]
        return exact[0] if exact else fit[0] if len(self.references) == 1 and fit and not self.exact else None

    def _pick(self, images, classes: list[int], per_class: int, purpose: str, part: int | None = None):
        gen = rng(self.seed, purpose, part)
        chosen = []
        for c in sorted(classes):
            idx = images.indices_of([c])
            chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        return torch.sort(torch.cat(chosen)).values

    def _draw(self, images, classes: list[int], per_class: int, purpose: str, part: int | None = None):
        return images.subset(self._pick(images, classes, per_class, purpose, part))

    def draws(self, forgotten: list[int], retained: list[int]) -> dict:
        """The images every check of one request reads, by name, drawn from the seed."""
        cfg = self.cfg
        per = cfg.images_per_class
        forget_test = self._pick(self.test, forgotten, per, "verify_images")
        retain_test = self._pick(self.test, retained, max(1, per // 2), "verify_images")
        draws = {
            "forget_train": self._draw(self.train, forgotten, per, "verify_images"),
            "forget_test": self.test.subset(forget_test),
            "retain_train": self._draw(self.train, retained, max(1, per // 2), "verify_images"),
            "retain_test": self.test.subset(retain_test),
            "probe_train": self._draw(self.train, forgotten + retained, cfg.probe_per_class, "verify_probe"),
            "rebound": self._draw(self.train, retained, cfg.rebound_per_class, "verify_rebound"),
        }
        # relearning reads its curve on forgotten and retained held-out images: a class's F1 needs both
        draws["relearn_held"] = self.test.subset(torch.sort(torch.cat([forget_test, retain_test])).values)
        for k in cfg.relearn_shots:
            draws[f"shots_{k}"] = self._draw(self.train, forgotten + retained, k, "verify_shots", part=k)
        if self.novel is not None:
            draws.update(self._novel_draws(len(forgotten)))
        return draws

    def __call__(self, model, forgotten: list[int], retained: list[int]) -> dict:
        cfg = self.cfg
        if not forgotten:
            raise ForgetkitError("nothing to verify: the model has forgotten no class")
        reference = self.reference_for(forgotten, retained)
        draws = self.draws(forgotten, retained)
        pre_ft = outputs(self.pretrained, draws["forget_test"], self.device)
        results = {"forgotten_classes": len(forgotten),
                   "cka_null": cka_null(len(draws["forget_test"]), pre_ft["features"].shape[1],
                                        pre_ft["features"].shape[1], self.seed)}
        # The pre-trained and reference rows depend on their weights and the draws only: a bench verifies every
        # method on the same requests, and computes them once per request (in one process).
        context = (self.seed, repr(cfg), tuple(forgotten), tuple(retained), _digest(list(draws.values())),
                   _fingerprint(self.pretrained), _fingerprint(reference))
        # the reference first: the end of its curve sets the relearning target, which the other rows stop at
        rows = ([("reference", reference)] if reference is not None else []) + [
            ("pretrained", self.pretrained), ("model", model)]
        for name, net in rows:
            start = time.perf_counter()
            key = (name, *context) if name != "model" else None
            if key in self.memo:
                results[name] = {**self.memo[key], "seconds": round(time.perf_counter() - start, 2)}
            else:
                results[name] = self._row(name, net, draws, forgotten, reference, pre_ft, results)
                results[name]["seconds"] = round(time.perf_counter() - start, 2)  # docs/verify.md's cost claim
                if key is not None:
                    self.memo[key] = copy.deepcopy(results[name])
            if name == "reference" or (name == "pretrained" and reference is None):
                results["relearn_target"] = self._relearn_target(results)
        for name, _ in rows:  # steps to the target, read off each curve
            results[name]["relearn_steps"] = {k: steps_to(curve, results["relearn_target"][k])
                                              for k, curve in results[name]["relearn_curve"].items()}
        return results

    def _novel_draws(self, count: int) -> dict:
        """``novel_draws`` draws of as many never-seen classes as the request forgot (all of them if there are
        fewer), from the seed: ``probe_per_class`` training images each for the probes, ``images_per_class`` test
        images to score."""
        train, test = self.novel
        pool = sorted(set(train.targets.tolist()) & set(test.targets.tolist()))
        gen = rng(self.seed, "verify_novel_classes")
        draws = {}
        for i in range(self.cfg.novel_draws):
            chosen = sorted(pool[j] for j in torch.randperm(len(pool), generator=gen)[:count])
            draws[f"novel_probe_{i}"] = self._draw(train, chosen, self.cfg.probe_per_class, "verify_novel", part=i)
            draws[f"novel_test_{i}"] = self._draw(test, chosen, self.cfg.images_per_class, "verify_novel", part=i)
        return draws

    def _relearn_target(self, results: dict) -> dict[str, float]:
        """Macro-F1 that counts as relearnt, per shot count: ``relearn_threshold`` of what the reference reaches at
        the end of its own curve (it learns the classes from scratch), or, without a reference, of the pre-trained
        model's; at least RELEARN_FLOOR, so that a reference that relearns nothing within the cap does not make
        every model count as relearnt at step 0."""
        row = results.get("reference") or results["pretrained"]
        end = "reference" in results
        return {k: max(round(self.cfg.relearn_threshold * (curve[-1][1] if end else curve[0][1]), 2), RELEARN_FLOOR)
                for k, curve in row["relearn_curve"].items()}

    def feature_checks(self, net, draws: dict, forgotten: list[int]) -> dict[str, float]:
        """What the frozen features hold (percent): the probe, k-NN and prototype attack on the forgotten classes,
        the probe and k-NN on retained ones (the control) and, with never-seen classes, :func:`novel_checks`
        (the mean over the draws)."""
        device = self.device
        return self._feature_checks(net, draws, forgotten, outputs(net, draws["probe_train"], device),
                                    outputs(net, draws["forget_test"], device),
                                    outputs(net, draws["retain_test"], device))

    def _feature_checks(self, net, draws: dict, forgotten: list[int], pt: dict, fte: dict, rte: dict) -> dict:
        """:meth:`feature_checks` on the probe, forgotten and retained images' :func:`outputs`."""
        cfg, device = self.cfg, self.device
        forgotten_probes = probe_accuracy(pt["features"].numpy(), pt["labels"].numpy(),
                                          fte["features"].numpy(), fte["labels"].numpy(), cfg.knn_k)
        retained_probes = probe_accuracy(pt["features"].numpy(), pt["labels"].numpy(),
                                         rte["features"].numpy(), rte["labels"].numpy(), cfg.knn_k)
        checks = {"probe_forgotten": forgotten_probes["probe"], "knn_forgotten": forgotten_probes["knn"],
                  "probe_retained": retained_probes["probe"], "knn_retained": retained_probes["knn"],
                  "prototype_forgotten": prototype_attack(pt["features"], pt["labels"], fte["features"],
                                                          fte["labels"], cfg.prototype_shots, cfg.prototype_draws,
                                                          self.seed)}
        novel = [novel_checks(net, pt, forgotten, draws[f"novel_probe_{i}"], draws[f"novel_test_{i}"], cfg, device,
                              self.seed) for i in range(cfg.novel_draws) if f"novel_test_{i}" in draws]
        if novel:
            checks.update({key: sum(n[key] for n in novel) / len(novel) for key in novel[0]})
        return checks

    def _row(self, name: str, net, draws: dict, forgotten: list[int], reference, pre_ft: dict,
             results: dict) -> dict:
        cfg, device = self.cfg, self.device
        ft, fte = outputs(net, draws["forget_train"], device), outputs(net, draws["forget_test"], device)
        rt, rte = outputs(net, draws["retain_train"], device), outputs(net, draws["retain_test"], device)
        pt = outputs(net, draws["probe_train"], device)
        row = {
            "acc_forgotten": 100.0 * float((fte["logits"].argmax(1) == fte["labels"]).float().mean()),
            "loss_attack_accuracy": loss_attack_accuracy(losses_of(ft), losses_of(fte), self.seed),
            "loss_attack_auc": loss_attack_auc(losses_of(ft), losses_of(fte), cfg.folds, self.seed),
            "loss_attack_auc_vs_retained": loss_attack_auc(losses_of(ft), losses_of(rte), cfg.folds, self.seed),
            "loss_attack_auc_retained": loss_attack_auc(losses_of(rt), losses_of(rte), cfg.folds, self.seed),
            "mia_confidence_efficacy": confidence_attack_efficacy(confidence_features(rt), confidence_features(rte),
                                                                  confidence_features(ft)),
            **self._feature_checks(net, draws, forgotten, pt, fte, rte),
            "cka_to_pretrained": linear_cka(fte["features"], pre_ft["features"]),
            "retain_rebound": retain_rebound(net, draws["rebound"], draws["forget_test"], cfg, device, self.seed),
        }
        if reference is not None:
            row["cka_to_reference"] = linear_cka(fte["features"],
                                                 outputs(reference, draws["forget_test"], device)["features"])
        # The reference's curve runs to the cap (its end sets the target); the others stop once they reach the
        # target (the pre-trained model without a reference: at step 0, which sets it), unless the whole curve is
        # asked for.
        target = results.get("relearn_target")
        if name == "reference" or (cfg.relearn_full_curve and name == "model"):
            stops = {str(k): None for k in cfg.relearn_shots}
        else:
            stops = {str(k): target[str(k)] if target else float("-inf") for k in cfg.relearn_shots}
        row["relearn_curve"] = {str(k): relearn_curve(net, draws[f"shots_{k}"], draws["relearn_held"], forgotten,
                                                      cfg, device, self.seed, stop_at=stops[str(k)])
                                for k in cfg.relearn_shots}
        return row


def _fingerprint(model) -> str | None:
    return fingerprint(model) if model is not None else None


def _digest(subsets) -> str:
    """SHA-256 of the drawn images and labels: the same draws of the same data, whatever objects hold them."""
    digest = hashlib.sha256()
    for subset in subsets:
        for x, y in inference_loader(subset, 512):
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
    aligned.reference_classes = {classes.index(name) for name in reference_classes}
    return aligned.eval()


def build_verifier(cfg: VerifyConfig, model, manifest: dict, protocol: Protocol, classes: list[str], seed: int,
                   device, memo: dict | None = None):
    """The run's :class:`Verifier`, on the members and non-members of :func:`membership_images` (non-members from
    the run's evaluation split); the pre-trained row is the ledger's base model (or the model at the start), the
    references those of ``eval.verify.reference``."""
    pretrained, base_manifest, references = verification_models(manifest, classes, device, reference=cfg.reference)
    base_manifest = base_manifest if pretrained is not None else manifest
    pretrained = pretrained if pretrained is not None else copy.deepcopy(model)
    reference_held = [held_per_class(r.manifest) for r in references]
    members, nonmembers = membership_images(
        protocol.splits.train, protocol.splits.test, protocol.cfg.eval_split, held_per_class(base_manifest) or 0,
        protocol.cfg.val_per_class, min((h for h in reference_held if h is not None), default=None))
    return Verifier(cfg, members, nonmembers, seed, device, pretrained.eval(), references=references,
                    exact=isinstance(cfg.reference, list), memo=memo,
                    novel=novel_images(cfg, classes, model.spec.preprocess))


def verification_models(manifest: dict, classes: list[str], device, base: str | None = None,
                        reference: str | list[str] | None = None) -> tuple:
    """The rows a verification reads a model against: the pre-trained model (``base``, else the ledger's base; None
    when there is neither) with its manifest, and the references (one checkpoint or a list), each with its head
    aligned to ``classes`` and its manifest as ``.manifest``."""
    base = base or (manifest.get("base") or {}).get("path")
    pretrained, base_manifest = load_checkpoint(resolve_model_path(base)) if base else (None, {})
    references = []
    for path in ([reference] if isinstance(reference, str) else reference or []):
        aligned, ref_manifest = load_checkpoint(resolve_model_path(path))
        aligned = align_head(aligned, list(ref_manifest["classes"]), classes).to(device)
        aligned.manifest = ref_manifest
        references.append(aligned)
    return (pretrained.to(device) if pretrained is not None else None), base_manifest, references


def verify_checkpoint(plan: VerifyPlan) -> dict:
    """``forgetkit verify``: the checks of :class:`Verifier` on a checkpoint's forgotten classes, against the
    pre-trained model and the reference, with the deep verdict; writes verify.json, verify.md and verify.png into
    ``plan.out`` and returns the results (``results["verdict"]``: pass, failed lines, whether a reference judged).

    Members are the training images the base model trained on, non-members the test split
    (:func:`membership_images`)."""
    from .data import load_data
    from .io import write_json, write_text
    from .outputs import OutputLock
    from .report import plot_verify, verify_table
    from .requests import deep_failures
    from .runtime import Runtime, process_state

    cfg, classes = plan.cfg, plan.classes
    forgotten = [classes.index(name) for name in plan.forgotten]
    with OutputLock(plan.out, later=True) as lock, process_state():
        # under torchrun every process computes the checks whole (the same draws from the seed), rank 0 writes
        runtime = Runtime.create(RuntimeConfig(threads=plan.threads))
        runtime.acquire_output(lock)
        device = runtime.device
        model, manifest = load_checkpoint(plan.source)
        splits = load_data(plan.data)
        missing = [name for name in classes if name not in splits.classes]
        if missing:
            raise ForgetkitError(f"the data lacks the model's class {missing[0]!r}; give the data it was trained on "
                                 f"(--data, --root)")
        splits = splits.select(classes).with_preprocess(model.spec.preprocess)
        retained = [c for c in range(len(classes)) if c not in forgotten]
        pretrained, base_manifest, references = verification_models(manifest, classes, device, plan.base,
                                                                    plan.reference)
        members, nonmembers = membership_images(splits.train, splits.test, "test", held_per_class(base_manifest) or 0,
                                                0)
        verifier = Verifier(cfg, members, nonmembers, plan.seed, device, pretrained, references=references,
                            novel=novel_images(cfg, classes, model.spec.preprocess))
        results = verifier(model.to(device), forgotten, retained)
        results["classes"] = plan.forgotten
        failed = deep_failures(results, cfg)
        results["verdict"] = {"pass": not failed, "failed": failed, "reference": "reference" in results}
        if runtime.is_writer:
            write_text(plan.out / "verify.md", "\n".join([f"# Verification of {plan.model}: "
                                                          f"{', '.join(plan.forgotten)}", ""] + verify_table(results)
                                                         + verdict_lines(results)) + "\n")
            plot_verify(results, plan.out / "verify.png")
            write_json(plan.out / "verify.json", results)
        runtime.barrier()
    return results


def verdict_lines(results: dict) -> list[str]:
    """The verdict of :func:`verify_checkpoint` as markdown lines."""
    verdict = results["verdict"]
    novel = "probe_novel" in results["model"]
    judged = "" if verdict["reference"] else (
        " (judged without a reference: the retain-only rebound"
        + (", and the probes against classes the model never saw)" if novel else " only)"))
    return ["", f"**{'PASS' if verdict['pass'] else 'FAIL'}**{judged}"] + [f"- {line}" for line in verdict["failed"]]
