"""LIRF withdrawal: give deposited classes back from the deposit module, with no data and no training.

A LIRF request (``lirf_eccv``, or the LIRF\\* baseline ``lirf``) leaves a target network T that has forgotten the
deposited classes and a deposit module T_r (a second lower half) in the request's edit. Withdrawal builds the
recover network

    T̃(x) = g(T(x)) ⊕ ḡ(T_r ∘ T_up(x))

the deposited classes' logits from the deposit path, every other class's from the target, the same rule on every
image (:func:`forgetkit.methods.lirf.recover_logits`). T̃ is a :class:`RecoveredModel`; it is saved as its own
checkpoint format and can be withdrawn from again. The deposit must belong to the weights it is applied to (its
target's fingerprint), so a deposit can be withdrawn only while no later request changed the target.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import torch

from ..errors import ForgetkitError
from ..io import load_weights, save_weights, write_json
from ..ledger import forgotten_classes
from ..models.checkpoint import FORMAT_VERSION, fingerprint, load_state_strict, read_manifest
from ..models.presets import ModelSpec
from ..models.vit import ForgetModel
from .base import Method, register_method
from .lirf import load_deposit, recover_logits

RECOVERED_FORMAT = "forgetkit-recovered"


class RecoveredModel(torch.nn.Module):
    """A target network and its withdrawn deposits: each deposit is a copy of the target whose lower half is the
    deposit module's, and gives the logits of its own classes."""

    refusal_hint = ("it is a recovered LIRF model: forget a withdrawn deposit's classes again with --method "
                    "redeposit, or forget other classes on the target before the withdrawal")

    def __init__(self, target: torch.nn.Module, deposits: list[tuple[dict, int, list[int]]]):
        super().__init__()
        self.target = target
        self.deposits = torch.nn.ModuleList()
        self.deposit_info = []
        for state, split, classes in deposits:
            net = copy.deepcopy(target)
            net.load_state_dict({**net.state_dict(), **state})
            self.deposits.append(net)
            self.deposit_info.append({"split": split, "classes": list(classes)})
        # no LoRA targets and no split of its own: methods that need them refuse this model up front
        self.spec = dataclasses.replace(target.spec, lora_targets="")

    def deposit_list(self) -> list[tuple[dict, int, list[int]]]:
        """The deposits as the constructor takes them: (weights, split, classes), in withdrawal order."""
        return [(dict(net.state_dict()), d["split"], d["classes"]) for net, d in zip(self.deposits, self.deposit_info)]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.target(x, labels)
        for net, info in zip(self.deposits, self.deposit_info):
            deposit = net.upper(net.lower(x, info["split"]), info["split"], labels)
            logits = recover_logits(logits, deposit, info["classes"])
        return logits

    def save_checkpoint(self, directory: str | Path, classes: list[str], **extra) -> Path:
        directory = Path(directory)
        save_weights(directory / "model.safetensors", self.state_dict())
        write_json(directory / "manifest.json", {
            "format": RECOVERED_FORMAT, "format_version": FORMAT_VERSION, "spec": self.target.spec.to_dict(),
            "classes": list(classes), "preprocess": self.target.spec.preprocess.to_dict(),
            "deposits": self.deposit_info, "fingerprint": fingerprint(self), **extra})
        return directory


def load_recovered(directory: str | Path) -> tuple[RecoveredModel, dict]:
    directory = Path(directory)
    manifest = read_manifest(directory, RECOVERED_FORMAT, "recovered forgetkit checkpoint",
                             "give a folder written by `forgetkit restore --method withdraw`")
    target = ForgetModel(ModelSpec.from_dict(manifest["spec"]))
    model = RecoveredModel(target, [({}, d["split"], d["classes"]) for d in manifest["deposits"]])
    load_state_strict(model, load_weights(directory / "model.safetensors"), str(directory))
    return model.eval(), manifest



@register_method("withdraw")
class Withdraw(Method):
    """LIRF withdrawal: the recover net from the target and the stored deposit module (no data, no training)."""

    supports = frozenset({"restore"})
    edit_type = "withdrawal"

    def fit(self, model, request, data, train_steps):
        ledger, names = self.ctx.ledger, self.ctx.classes
        done = forgotten_classes(ledger)
        entries = sorted({done[names[c]] for c in request.classes})
        if len(entries) != 1:
            raise ForgetkitError("withdraw the classes of one LIRF request at a time (they were forgotten by "
                                 f"requests {', '.join(str(j + 1) for j in entries)})")
        entry = ledger[entries[0]]
        if set(entry["classes"]) != {names[c] for c in request.classes}:
            raise ForgetkitError(f"request {entry['index'] + 1} deposited {', '.join(entry['classes'])} together; "
                                 f"withdraw them together")
        if self.ctx.source is None or not entry.get("edit"):
            raise ForgetkitError(f"request {entry['index'] + 1} kept no edit, so no deposit (save_model was off)")
        self.deposit_dir = Path(self.ctx.source) / entry["edit"]["path"]
        if not (self.deposit_dir / "deposit.json").is_file():
            raise ForgetkitError(f"request {entry['index'] + 1} ({entry['method']}) left no deposit to withdraw; "
                                 f"only LIRF requests do (lirf_eccv, lirf). Use --method undo")
        self.model = self.apply_edit(model, self.deposit_dir)

    @staticmethod
    def apply_edit(model, directory: Path):
        target = model.target if isinstance(model, RecoveredModel) else model
        info, state = load_deposit(directory, target)
        deposits = model.deposit_list() if isinstance(model, RecoveredModel) else []
        device = next(target.parameters()).device
        state = {k: v.to(device) for k, v in state.items()}
        recovered = RecoveredModel(target, deposits + [(state, info["split"], info["classes"])])
        return recovered.eval()

    def save_edit(self, directory: Path) -> bool:
        for name in ("deposit.json", "deposit.safetensors"):
            shutil.copy2(self.deposit_dir / name, directory / name)
        return True

    def trainable_count(self):
        return 0

    def finish(self):
        return self.model
