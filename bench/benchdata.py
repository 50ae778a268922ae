"""The datasets of the benchmarks (datasets.yaml), as config overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from forgetkit.requests import RequestRecord

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
    if split != "val":
        return entry["overrides"] + held
    # a shipped checkpoint that saw the validation images is replaced, on that split, by one pre-trained without them
    val_model = [f"model={entry['val_model']}"] if "val_model" in entry else []
    return entry["overrides"] + val_model + held + ["protocol.eval_split=val"]


def reference_paths(name: str, requests: int = 4) -> list[str]:
    """The references bench/references.py made for dataset ``name`` (one per request), those that exist."""
    return [str(p) for p in (Path("checkpoints") / f"ref_{name}_r{t}" for t in range(1, requests + 1))
            if (p / "model.safetensors").exists()]


def deep_overrides(name: str | None) -> list[str]:
    """Overrides that verify every request against the dataset's references (``eval.verify``)."""
    refs = reference_paths(name) if name else []
    if not refs:
        raise SystemExit(f"error: no references for {name}; make them with bench/references.py --dataset {name}")
    return ["eval.verify.enabled=true", f"eval.verify.reference=[{', '.join(refs)}]"]


def deep_row(request: RequestRecord) -> dict | None:
    """A request's deep checks as gaps to its reference (points; relearn steps side by side), or None."""
    v = request.verify
    if not v or "reference" not in v:
        return None
    m, r = v["model"], v["reference"]
    k = next(iter(m["relearn_steps"]))
    return {"probe": m["probe_forgotten"] - r["probe_forgotten"], "knn": m["knn_forgotten"] - r["knn_forgotten"],
            "proto": m["prototype_forgotten"] - r["prototype_forgotten"],
            "relearn": (m["relearn_steps"][k], r["relearn_steps"][k]),
            "rebound": m["retain_rebound"]["rebound"] - r["retain_rebound"]["rebound"]}


def novel_gap(request: RequestRecord) -> float | None:
    """The reference-free check of a request (``eval.verify.novel``): the largest of probe, k-NN and prototype attack
    on the forgotten classes minus the same check on never-seen classes (points), or None when it was not run."""
    m = (request.verify or {}).get("model", {})
    if "probe_novel" not in m:
        return None
    return max(m[f"{k}_forgotten"] - m[f"{k}_novel"] for k in ("probe", "knn", "prototype"))
