"""The Python API: everything the CLI does, in a few calls.

Example:
    >>> import forgetkit as fk
    >>> cfg = fk.load_config("demo", ["train.steps=100"])          # a packaged config or a YAML path
    >>> results = fk.run_forgetting(cfg)                            # writes results.json, report.md, plots
    >>> results = fk.forget("builtin:fmnist_vit", [["Sandal", "Bag"]], output_dir="runs/no-bags")
"""

from __future__ import annotations

from pathlib import Path

from .config import apply_overrides, from_dict, read_yaml
from .engine import RunConfig, run_forgetting
from .errors import ForgetkitError

CONFIG_DIR = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None, cls: type = RunConfig):
    """A typed config (default :class:`RunConfig`) from a YAML file or packaged config name, with
    ``section.key=value`` overrides."""
    data: dict = {}
    if path_or_name is not None:
        path = Path(path_or_name)
        if not path.is_file() and (CONFIG_DIR / f"{path_or_name}.yaml").is_file():
            path = CONFIG_DIR / f"{path_or_name}.yaml"
        elif not path.is_file():
            raise ForgetkitError(f"config {path_or_name} not found; give a YAML file or one of: "
                                 f"{', '.join(packaged_configs())}")
        data = read_yaml(path)
    return from_dict(cls, apply_overrides(data, overrides or []))


def forget(model: str, tasks: list[list[str]], *, method: str | dict = "gs_lora", output_dir: str = "runs/forget",
           overrides: list[str] | None = None, progress: bool = True, overwrite: bool = False, **sections) -> dict:
    """Forget the named classes (one list per request) from ``model`` and return the results dict.

    ``sections`` are config sections as dicts (``data={...}``, ``train={...}``); ``overrides`` are dotted strings.
    """
    method_section = {"name": method} if isinstance(method, str) else dict(method)
    data = {"model": model, "method": method_section, "output_dir": output_dir, **sections}
    data["protocol"] = {**(data.get("protocol") or {}), "tasks": tasks}
    cfg = from_dict(RunConfig, apply_overrides(data, overrides or []))
    return run_forgetting(cfg, progress=progress, overwrite=overwrite)
