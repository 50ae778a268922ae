"""Undo: restore classes by removing the request that forgot them, from the edits the model's ledger keeps.

No data and no training. Two cases (docs/ledger.md):

* **the latest request** (no request after it changed the weights): the model before it, rebuilt from the base
  checkpoint and the ledger's earlier edits and checked against the fingerprint the ledger recorded before that
  request: exact, bit for bit, for every method.
* **an earlier request** with a LoRA edit: its update ΔW = s·B·A is subtracted from the current weights. The later
  requests were trained on weights that contained ΔW, so this is not the model that never made that request; it is
  what can be done without data, and the restore's verdict measures how close it comes. A request whose edit is
  the whole weights (a full-fine-tuning method) cannot be undone under later requests, and is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ForgetkitError
from ..io import load_weights
from ..ledger import forgotten_classes
from ..models import fingerprint
from .base import Method, register_method


def lora_deltas(directory: Path) -> dict[str, torch.Tensor]:
    """ΔW = scaling · B · A of every adapted layer of a saved peft adapter, keyed by the layer's module name."""
    from ..io import read_json

    config = read_json(directory / "adapter_config.json")
    scaling = config["lora_alpha"] / config["r"]
    state = load_weights(directory / "adapter_model.safetensors")
    deltas = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        layer = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = state[key.replace(".lora_A.", ".lora_B.")]
        deltas[layer] = scaling * (b.float() @ a.float())
    return deltas


@register_method("undo")
class Undo(Method):
    """Undo: give back forgotten classes by removing the request that forgot them (exact for the latest request)."""

    supports = frozenset({"restore"})

    def fit(self, model, request, data, train_steps):
        from ..ledger import replay_ledger

        ledger, names = self.ctx.ledger, self.ctx.classes
        forgotten = forgotten_classes(ledger)
        entries = sorted({forgotten[names[c]] for c in request.classes}, reverse=True)  # latest first
        for j in entries:
            together = [c for c in ledger[j]["classes"] if c in forgotten and names.index(c) not in request.classes]
            if together:
                raise ForgetkitError(f"request {j + 1} forgot {', '.join(ledger[j]['classes'])} together; undoing "
                                     f"it gives all of them back: add {', '.join(together)} to the restore request")
        self.model, self.exact = model, []
        kept = list(range(len(ledger)))  # the requests whose edits the weights still hold
        for j in entries:
            entry = ledger[j]
            if self.ctx.source is None or not entry.get("edit"):
                raise ForgetkitError(f"request {j + 1} kept no edit in the ledger (save_model was off); it cannot "
                                     f"be undone")
            later = [k for k in kept if k > j]
            if not later:  # the latest request: the weights before it, rebuilt and checked
                before = replay_ledger(self.ctx.source, upto=j)
                if fingerprint(before) != entry["fingerprint_before"]:
                    raise ForgetkitError(f"the ledger's edits do not rebuild the weights before request {j + 1}")
                model.load_state_dict(before.state_dict())
                self.exact.append(j + 1)
            elif entry["edit"]["type"] == "lora":
                with torch.no_grad():
                    for layer, delta in lora_deltas(Path(self.ctx.source) / entry["edit"]["path"]).items():
                        weight = model.get_submodule(layer).weight
                        weight.sub_(delta.to(weight.device, weight.dtype))
            else:
                raise ForgetkitError(f"request {j + 1} ({entry['method']}) edited the whole weights and "
                                     f"{len(later)} later request(s) were trained on top of it: it cannot be undone "
                                     f"without data; restore from a checkpoint made before it, or forget again")
            kept.remove(j)

    def trainable_count(self):
        return 0

    def request_stats(self):
        return {"exact_undo_of_requests": self.exact}

    def finish(self):
        return self.model

