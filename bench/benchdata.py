"""The datasets of the benchmarks (datasets.yaml), as config overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

DATASETS = Path(__file__).parent / "datasets.yaml"


def dataset_overrides(name: str | None, split: str) -> list[str]:
    """The overrides that run a config on dataset ``name`` of datasets.yaml, evaluated on ``split`` (val or test)."""
    if name is None:
        return ["protocol.val_per_class=500", "protocol.eval_split=val"] if split == "val" else []
    entries = yaml.safe_load(DATASETS.read_text())
    if name not in entries:
        raise SystemExit(f"error: unknown dataset {name!r}; datasets.yaml has {', '.join(entries)}")
    entry = entries[name]
    held = [f"protocol.val_per_class={entry['val_per_class']}"]
    return entry["overrides"] + held + (["protocol.eval_split=val"] if split == "val" else [])
