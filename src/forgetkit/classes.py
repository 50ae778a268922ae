"""A user's class names resolved against a class list, torch-free (so a misspelt class answers at once)."""

from __future__ import annotations

import difflib

from .errors import ForgetkitError


def resolve_class_names(names: list[str], classes: list[str], what: str) -> list[int]:
    """The indices of ``names`` in ``classes``; an unknown name fails with the closest match and the class list."""
    if not names:
        raise ForgetkitError(f"{what} is empty; name at least one class to forget")
    out = []
    for name in names:
        if name not in classes:
            close = difflib.get_close_matches(str(name), classes, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ForgetkitError(f"unknown class '{name}' in {what}.{hint} Classes are: {', '.join(classes[:12])}"
                                 f"{' ...' if len(classes) > 12 else ''}")
        out.append(classes.index(name))
    if len(set(out)) != len(out):
        raise ForgetkitError(f"{what} names a class twice; list each class once")
    return out
