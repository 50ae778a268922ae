"""Redeposit: forget the classes of a withdrawn LIRF deposit again, by taking the deposit out of the recover net.

A LIRF withdrawal (``withdraw``) adds a deposit path to the target network; its classes' logits come from it. A
later forget request for exactly those classes removes that path: the model becomes the recover net without it
(the target itself when it was the only one), bit for bit, with no data and no training. The request's edit keeps
the deposit, so the classes can be withdrawn again. The target forgot the classes only as far as LIRF's deposit
training took it, so the verdict measures them as any forget request's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ForgetkitError
from ..io import read_json
from .base import Method, register_method
from .lirf import save_deposit
from .withdraw import RecoveredModel


def without_deposit(model: RecoveredModel, classes: list[int], names: list[str] | None = None):
    """The recover net without the deposit of ``classes`` (the target when no other deposit remains), and the
    index of that deposit. ``names``: the class names, for the error message."""
    owners = [i for i, info in enumerate(model.deposit_info) if set(info["classes"]) & set(classes)]
    if len(owners) != 1 or set(model.deposit_info[owners[0]]["classes"]) != set(classes):
        name = (lambda c: names[c]) if names else str
        held = "; ".join(", ".join(name(c) for c in d["classes"]) for d in model.deposit_info)
        raise ForgetkitError(f"redeposit takes back one withdrawn deposit whole, and this model's deposits hold "
                             f"[{held}]; ask for exactly the classes of one of them")
    kept = [deposit for i, deposit in enumerate(model.deposit_list()) if i != owners[0]]
    return (RecoveredModel(model.target, kept) if kept else model.target).eval(), owners[0]


@register_method("redeposit")
class Redeposit(Method):
    """Forget a withdrawn LIRF deposit's classes again by taking the deposit out (no data, no training).

    The deposit stays in the request's edit, for a later withdrawal."""

    requires = frozenset({"recovered"})
    edit_type = "redeposit"
    fix_hint = ("redeposit forgets the classes only as far as the LIRF request's target had forgotten them "
                "(docs/ledger.md)")

    def fit(self, model, request, data, train_steps):
        self.recovered = model
        self.model, self.removed = without_deposit(model, list(request.classes), self.ctx.classes)

    def save_edit(self, directory: Path) -> bool:
        """The deposit taken out, in the form a LIRF request leaves it, bound to the target it goes back onto."""
        net, info = self.recovered.deposits[self.removed], self.recovered.deposit_info[self.removed]
        save_deposit(directory, net, self.recovered.target, info["split"], info["classes"], self.name)
        return True

    @staticmethod
    def apply_edit(model, directory: Path):
        if not isinstance(model, RecoveredModel):
            raise ForgetkitError(f"the redeposit in {directory} applies to a recovered LIRF model; replay the ledger "
                                 f"from its base")
        return without_deposit(model, read_json(Path(directory) / "deposit.json")["classes"])[0]

    def trainable_count(self):
        return 0

    def finish(self):
        return self.model
