"""Related-name lists: the retain set of text-space forgetting, and the vocabulary of the demo CLIP's captions.

A list is a text file. ``Class: name, name`` lines give other names of a dataset class; any other line is one
related name; ``#`` starts a comment. forgetkit ships lists for its embedded datasets; users pass their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ForgetkitError


@dataclass
class NameList:
    aliases: dict[str, list[str]]   # dataset class -> its other names
    related: list[str]              # further related names

    def names_of(self, cls: str) -> list[str]:
        """The class name and its aliases (the class name first)."""
        return [cls] + [a for a in self.aliases.get(cls, []) if a.lower() != cls.lower()]

    def retain_names(self, dataset_classes: list[str], forget: list[str]) -> list[str]:
        """Names to keep when ``forget`` is forgotten: the aliases of the other classes and the related names,
        without any name of a forgotten class (case-insensitive, first spelling kept, order stable)."""
        dropped = {n.lower() for c in forget for n in self.names_of(c)}
        keep: list[str] = []
        for cls in dataset_classes:
            if cls not in forget:
                keep += self.aliases.get(cls, [])
        keep += self.related
        seen, out = set(dropped), []
        for name in keep:
            if name.lower() not in seen:
                seen.add(name.lower())
                out.append(name)
        return out


def read_names(path: str | Path, dataset_classes: list[str] | None = None) -> NameList:
    """Parse a name list; ``Class:`` lines must name classes of the dataset when its classes are given."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ForgetkitError(f"cannot read the name list {path} ({err}); give a UTF-8 text file, one name per "
                             f"line") from None
    aliases: dict[str, list[str]] = {}
    related: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" in line:
            cls, _, rest = line.partition(":")
            cls = cls.strip()
            if dataset_classes is not None and cls not in dataset_classes:
                raise ForgetkitError(f"{path}:{number}: {cls!r} is not a class of the dataset "
                                     f"({', '.join(dataset_classes)}); fix the name or drop the colon to make it a "
                                     f"plain related name")
            aliases[cls] = [n.strip() for n in rest.split(",") if n.strip()]
        else:
            related.append(line)
    if not aliases and not related:
        raise ForgetkitError(f"the name list {path} is empty; give at least one related name (one per line)")
    return NameList(aliases, related)


def _shipped_path(dataset: str) -> Path:
    return Path(str(resources.files("forgetkit.clip") / "names" / f"{dataset}.txt"))


def builtin_names(dataset: str) -> Path:
    """The shipped list of an embedded dataset."""
    path = _shipped_path(dataset)
    if not path.is_file():
        raise ForgetkitError(f"forgetkit ships no related-name list for {dataset!r}; pass one with "
                             f"names: <file> (one name per line)")
    return path


def shipped_names(dataset: str, dataset_classes: list[str]) -> NameList:
    """The shipped list of a dataset, or an empty one (each class has only its own name) if none ships."""
    path = _shipped_path(dataset)
    return read_names(path, dataset_classes) if path.is_file() else NameList({}, [])
