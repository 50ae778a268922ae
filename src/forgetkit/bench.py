"""Run several methods on one protocol and write one comparison (T-PAMI Table 3 layout, CSV, plot).

A bench spec (YAML)::

    base: demo                 # a run config (packaged name or YAML path) giving data, protocol, train, seed
    output_dir: runs/bench
    overrides: []              # section.key=value applied to every method
    methods:                   # name -> that method's fields; an optional `train:` mapping overrides train.*
      gs_lora: {}              # {} takes the base config's method section when it is the same method
      l2: {train: {lr: 0.001}}
      no_drs: {method: lora_sub_drs, drs: false}   # a variant: its own row, the registered method it runs

Each method's own outputs (results.json, report, plots, model) go to ``output_dir/<method>/``. The comparison is
the one of the base config's request kind: forgetting methods by cumulative H, learning methods by last accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import load_config
from .config import from_dict, read_yaml, to_dict
from .engine.plan import plan_run
from .engine.run import run_requests
from .errors import ForgetkitError
from .methods import METHODS
from .methods.configs import MethodConfig
from .requests import REQUEST_KINDS, RunRecord
from .runstate import crash_point


@dataclass
class BenchSpec:
    """Which methods to compare on which protocol."""

    base: str = field(default="demo", metadata={"help": "run config giving data, protocol, train and seed"})
    output_dir: str = "runs/bench"
    overrides: list[str] = field(default_factory=list)
    methods: dict[str, Any] | None = field(default=None, metadata={
        "help": "method name -> its fields; null = every method that can edit the base config's model"})
    highlight: list[str] | None = field(default=None, metadata={
        "help": "rows drawn bold in the comparison's plot; null = the rows that run the base config's method"})


def load_bench_spec(path: str | None, methods: list[str] | None = None, output_dir: str | None = None,
                    overrides: list[str] | None = None) -> BenchSpec:
    spec = from_dict(BenchSpec, read_yaml(path) if path else {}, "bench")
    spec.overrides = list(spec.overrides) + list(overrides or [])
    if spec.methods is None:
        base = load_config(spec.base, spec.overrides)
        spec.methods = {name: {} for name in methods_for(base.model, base.kind)}
    if methods:
        spec.methods = {m: spec.methods.get(m, {}) for m in methods}
    if output_dir:
        spec.output_dir = output_dir
    if spec.highlight is None:
        base_method = load_config(spec.base, spec.overrides).method.name
        spec.highlight = [name for name, fields in spec.methods.items() if registered(name, fields) == base_method]
    for name, fields in spec.methods.items():
        METHODS.get(registered(name, fields))  # unknown names fail before anything runs
    return spec


def registered(name: str, fields: dict | None) -> str:
    """The registered method a bench row runs: its ``method`` field for a variant, else its name."""
    return (fields or {}).get("method", name)


def methods_for(model_name: str, kind: str = "forget") -> list[str]:
    """The registered methods of a request kind whose required capabilities the model has."""
    from .methods.base import model_capabilities
    from .models.formats import load_checkpoint, resolve_model_path

    model, _ = load_checkpoint(resolve_model_path(model_name))
    found = model_capabilities(model)
    return [name for name in METHODS.names()
            if kind in METHODS.get(name).supports and METHODS.get(name).requires <= found]


def method_overrides(base_method: MethodConfig, name: str, fields: dict | None) -> list[str]:
    """Overrides that run method ``name``: the settings the base config changed from its method's defaults, when this
    method's config extends the base method's config (GS-LoRA++ keeps the base GS-LoRA's LoRA shape, β, BND and α; a
    baseline, whose fields may share a name but not a meaning, inherits nothing), then ``fields``."""
    fields = dict(fields or {})
    train = fields.pop("train", {}) or {}
    name = fields.pop("method", name)
    inherit = issubclass(METHODS.get(name).config_cls, type(base_method))
    # only what the base config set: a subclass keeps its own defaults (seq_lora is LoRA-Sub-DRS without DRS)
    defaults = to_dict(type(base_method)())
    section = {k: v for k, v in to_dict(base_method).items() if k != "name" and v != defaults.get(k)} if inherit \
        else {}
    section.update(fields)
    section["name"] = name
    out = [f"method={_flow(section)}"]
    out += [f"train.{k}={_flow(v)}" for k, v in train.items()]
    return out


def _flow(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def run_bench(spec: BenchSpec, progress: bool = True, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """Run every method of ``spec`` and write ``comparison.md``, ``comparison.csv`` and ``comparison.png``.

    Args:
        spec: the bench spec.
        progress: progress bars and a line per method.
        resume: keep the methods that finished, continue the one that was stopped from its last finished request,
            and run the rest.
        overwrite: run every method again, replacing its earlier results (without it, and without ``resume``, a
            method's earlier results are refused before anything runs).
    """
    out = Path(spec.output_dir)
    configs = {}
    for name, fields in spec.methods.items():
        base = load_config(spec.base, spec.overrides)
        overrides = spec.overrides + method_overrides(base.method, name, fields) + [
            f"output_dir={out / name}"]
        if "lr" not in (fields or {}).get("train", {}):
            overrides.append("train.lr=null")  # each method's own default unless the spec sets one
        configs[name] = load_config(spec.base, overrides)
        plan_run(configs[name], overwrite=overwrite, resume=resume)  # every method checked before any runs
    all_results = {}
    memo: dict = {}  # the verification's pre-trained and reference rows, measured once for every method
    for name, cfg in configs.items():
        start = time.time()
        if progress:
            print(f"[bench] {name} ...", flush=True)
        crash_point(f"bench_{name}")
        all_results[name] = run_requests(cfg, progress=progress, overwrite=overwrite, resume=resume,
                                         verification_memo=memo)
        if progress:
            print(f"[bench] {name} done in {time.time() - start:.0f} s", flush=True)
    return compare(out, all_results, spec)


def report_only(spec: BenchSpec) -> list[dict]:
    """Rebuild the comparison from the methods' finished runs (after re-running some of them alone)."""
    out = Path(spec.output_dir)
    all_results = {}
    for name in spec.methods:
        path = out / name / "results.json"
        if not path.is_file():
            raise ForgetkitError(f"{path} not found; run `forgetkit bench` for {name} first")
        all_results[name] = RunRecord.read(path)
    return compare(out, all_results, spec)


def compare(out: Path, all_results: dict[str, RunRecord], spec: BenchSpec) -> list[dict]:
    """The comparison of the runs' request kind (every run of a bench has the base config's kind), written by the
    kind (requests/)."""
    kind = REQUEST_KINDS.get(next(iter(all_results.values())).kind)()
    return kind.compare(out, all_results, {"base": spec.base, "overrides": spec.overrides, "methods": spec.methods},
                        set(spec.highlight or []))



