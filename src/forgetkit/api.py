"""The Python API: everything the CLI does, in a few calls.

Example:
    >>> import forgetkit as fk
    >>> cfg = fk.load_config("demo", ["train.steps=100"])          # a packaged config or a YAML path
    >>> run = fk.run_requests(cfg)                                # writes results.json, report.md, plots
    >>> run = fk.forget("builtin:fmnist_vit", [["Sandal", "Bag"]], output_dir="runs/no-bags")
    >>> run.requests[0].after["acc_f"], run.summary["h_cumulative_avg"], run.passed   # a RunRecord
    >>> edited = fk.unlearn(model, forget_set, retain_set, test_set, classes=names)   # in memory, no files
    >>> fk.restore("runs/no-bags", [["Bag"]])                     # give Bag back (undo: exact for the latest)
    >>> fk.verify("runs/no-bags", reference="checkpoints/no_bags_ref")["verdict"]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from .config import apply_overrides, from_dict, read_yaml
from .engine.config import RunConfig
from .errors import ForgetkitError
from .requests.base import RequestRecord, RunRecord

CONFIG_DIR = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_data(path_or_name: str | Path | None) -> dict:
    """The mapping a YAML file or packaged config name holds ({} for None)."""
    if path_or_name is None:
        return {}
    path = Path(path_or_name)
    if not path.is_file() and (CONFIG_DIR / f"{path_or_name}.yaml").is_file():
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    elif not path.is_file():
        raise ForgetkitError(f"config {path_or_name} not found; give a YAML file or one of: "
                             f"{', '.join(packaged_configs())}")
    return read_yaml(path)


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None, cls: type = RunConfig,
                sections: dict | None = None):
    """A typed config, checked whole (torch-free: a mistake answers before anything loads).

    Args:
        path_or_name: a YAML file or a packaged config name (``forgetkit forget -c NAME``); None for the defaults.
        overrides: ``section.key=value`` strings, applied last (values are read as YAML).
        cls: the config class (default :class:`RunConfig`; :class:`PretrainConfig` for ``pretrain``).
        sections: mappings merged over the file's sections before the overrides (what the CLI's flags set); a method
            section naming another method replaces the file's, whose fields belong to its own method.
    """
    data = config_data(path_or_name)
    for key, value in (sections or {}).items():
        old = data.get(key)
        other_method = key == "method" and isinstance(old, dict) and old.get("name") != value.get("name")
        merge = isinstance(value, dict) and isinstance(old, dict) and not other_method
        data[key] = {**old, **value} if merge else value
    return from_dict(cls, apply_overrides(data, overrides or []))


def forget(model: str, requests: list[list[str]] | None = None, *, method: str | dict = "gs_lora",
           output_dir: str = "runs/forget", overrides: list[str] | None = None, progress: bool = True,
           overwrite: bool = False, **sections) -> RunRecord:
    """Forget the named classes (one list per request) from ``model``; returns the run's record.

    Args:
        model: a checkpoint (folder, run folder, ``model.safetensors`` or ``builtin:NAME``).
        requests: the classes of each request, by name (``tasks=``, its name in forgetkit 0.1, still works, with a
            warning).
        method: a registered method's name (``forgetkit methods``) or a method section as a dict.
        output_dir: where results, report, plots and the edited model (``output_dir/model``) go.
        overrides: ``section.key=value`` strings, applied last.
        progress: show progress bars.
        overwrite: replace an earlier run in ``output_dir``.
        sections: config sections as dicts (``data={...}``, ``train={...}``).
    """
    return _run_requests("forget", model, requests, method, output_dir, overrides, progress, overwrite, sections)


def learn(model: str, requests: list[list[str]] | None = None, *, method: str | dict = "lora_sub_drs",
          output_dir: str = "runs/learn", overrides: list[str] | None = None, progress: bool = True,
          overwrite: bool = False, **sections) -> RunRecord:
    """Teach ``model`` the named classes (one list per request, without images of the classes it knows); returns
    the run's record; the grown checkpoint is written to ``output_dir/model`` (docs/learning.md).

    Args:
        model: a checkpoint, or a backbone whose classes are all new.
        requests: the classes of each request, by name (``tasks=``, its name in forgetkit 0.1, still works, with a
            warning).
        method: ``lora_sub_drs`` (default), ``seq_lora``, ``ncm``, ``joint``, or a method section as a dict.
        output_dir: where results, report and the grown model go.
        overrides: ``section.key=value`` strings, applied last.
        progress: show progress bars.
        overwrite: replace an earlier run in ``output_dir``.
        sections: config sections as dicts; ``data`` names the data holding the new classes
            (``data={"source": "image_folder", "root": ...}``).
    """
    return _run_requests("learn", model, requests, method, output_dir, overrides, progress, overwrite, sections)


def restore(model: str, requests: list[list[str]] | None = None, *, method: str | dict = "undo",
            output_dir: str = "runs/restore", overrides: list[str] | None = None, progress: bool = True,
            overwrite: bool = False, **sections) -> RunRecord:
    """Give back classes ``model`` forgot (one list per request); returns the run's record.

    Args:
        model: a forgetkit checkpoint whose ledger forgot the classes.
        requests: the classes of each request, by name (``tasks=``, its name in forgetkit 0.1, still works, with a
            warning).
        method: ``undo`` (replays the ledger without the withdrawn request: exact for the latest one), ``withdraw``
            (a LIRF deposit), or a method section as a dict.
        output_dir: where results, report and the restored model go.
        overrides: ``section.key=value`` strings.
        progress: show progress bars.
        overwrite: replace an earlier run in ``output_dir``.
        sections: config sections as dicts (``data={...}``).
    """
    return _run_requests("restore", model, requests, method, output_dir, overrides, progress, overwrite, sections)


def verify(model: str, *, out: str = "runs/verify", classes: list[str] | None = None, reference: str | None = None,
           base: str | None = None, data: dict | None = None, seed: int = 0, overrides: list[str] | None = None,
           overwrite: bool = False) -> dict:
    """Check that ``model``'s forgotten classes are gone from its features (docs/verify.md); writes verify.json,
    verify.md and verify.png into ``out`` and returns the results, with the verdict in ``results["verdict"]``.

    Args:
        model: the checkpoint to verify.
        out: the folder for the verification's files.
        classes: the classes to check; None: those its ledger forgot.
        reference: a checkpoint trained without those classes: the deep checks' bar.
        base: the model before forgetting; None: the ledger's base.
        data: the data section the model was trained on (``{"source": ..., "root": ...}``); None: the checkpoint's.
        seed: the seed every draw flows from.
        overrides: ``key=value`` strings of the checks' settings (``relearn_max_steps=200``).
        overwrite: replace an earlier verification in ``out``.
    """
    from .data.config import DataConfig
    from .engine.config import VerifyConfig
    from .engine.plan import plan_verify

    cfg = from_dict(VerifyConfig, apply_overrides({}, overrides or []), "verify")
    data_cfg = from_dict(DataConfig, data, "data") if data is not None else None
    plan = plan_verify(model, out, cfg, classes, reference, base, data_cfg, seed, 0, overwrite)
    from .verification import verify_checkpoint

    return verify_checkpoint(plan)


def _run_requests(kind, model, requests, method, output_dir, overrides, progress, overwrite, sections) -> RunRecord:
    if "tasks" in sections:  # the keyword of forgetkit 0.1, for one release
        warnings.warn("tasks= is deprecated and will be removed in forgetkit 0.3; pass requests=", DeprecationWarning,
                      stacklevel=3)
        if requests is not None:
            raise ForgetkitError("tasks= and requests= are one argument; keep requests=")
        requests = sections.pop("tasks")
    if requests is None:
        raise ForgetkitError(f"fk.{kind} needs the classes of each request: requests=[[name, ...], ...]")
    method_section = {"name": method} if isinstance(method, str) else dict(method)
    data = {"model": model, "kind": kind, "method": method_section, "output_dir": output_dir, **sections}
    data["protocol"] = {**(data.get("protocol") or {}), "requests": requests}
    cfg = from_dict(RunConfig, apply_overrides(data, overrides or []))
    from .engine.run import run_requests

    return run_requests(cfg, progress=progress, overwrite=overwrite)


@dataclass
class Unlearned:
    """What :func:`unlearn` returns: the edited model, the request's record (one task of results.json) and the
    model's ledger with this request appended."""

    model: object
    record: RequestRecord
    ledger: list[dict]

    @property
    def results(self) -> dict:
        # the record was a dict named results before; one release of the old name, with a warning
        warnings.warn("Unlearned.results is deprecated: read Unlearned.record (a RequestRecord)", DeprecationWarning,
                      stacklevel=2)
        return self.record.to_dict()


def unlearn(model, forget_set, retain_set, eval_set, *, classes: list[str], method: str | dict = "gs_lora",
            ledger: list[dict] | None = None, seed: int = 0, progress: bool = False, **sections) -> Unlearned:
    """Forget the classes of ``forget_set`` from ``model`` in memory, keeping those of ``retain_set``: one request.

    The datasets are any ``torch.utils.data.Dataset`` of ``(image tensor, label)`` pairs, already transformed for the
    model, with labels indexing ``classes``; ``eval_set`` holds held-out images of every class and is only used to
    measure and judge the request (the verdict), never to train. ``model`` is a forgetkit classifier (``embed``,
    ``head``, ``spec``; e.g. from :func:`load_model` or :func:`create_model`) and is edited in place. ``ledger`` is
    the model's ledger so far (classes forgotten earlier count as old classes and cannot be forgotten again).
    ``sections`` are config sections as dicts: ``train={"steps": 300}``, ``eval={...}``. This is what
    :func:`run_requests` does for each request, without files.
    """
    from .data import as_labeled
    from .engine.config import EvalConfig, TrainConfig
    from .engine.editor import Editor
    from .engine.run import ledger_entry
    from .ledger import forgotten_classes
    from .methods.configs import MethodConfig, resolved_method_config
    from .requests import REQUEST_KINDS, Request, RequestData
    from .runtime import Runtime, process_state

    unknown = set(sections) - {"train", "eval"}
    if unknown:
        raise ForgetkitError(f"unlearn() takes the train and eval sections, not {', '.join(sorted(unknown))}")
    train = from_dict(TrainConfig, sections.get("train"), "train")
    thresholds = from_dict(EvalConfig, sections.get("eval"), "eval")
    method_spec = resolved_method_config({"name": method} if isinstance(method, str) else dict(method))
    classes, ledger = list(classes), list(ledger or [])
    forget_images, retain_images, eval_images = (as_labeled(d, classes, what) for d, what in (
        (forget_set, "forget set"), (retain_set, "retain set"), (eval_set, "evaluation set")))
    forget_ids = sorted(set(forget_images.targets.tolist()))
    retain_ids = sorted(set(retain_images.targets.tolist()))
    if not forget_ids:
        raise ForgetkitError("the forget set is empty; give images of the classes to forget")
    if set(forget_ids) & set(retain_ids):
        raise ForgetkitError(f"class {classes[min(set(forget_ids) & set(retain_ids))]!r} is in both the forget and "
                             f"the retain set; a class is either forgotten or kept")
    expected = getattr(getattr(model, "spec", None), "preprocess", None)
    for images, what in ((forget_images, "forget set"), (retain_images, "retain set"), (eval_images, "evaluation set")):
        check_input_shape(images, expected, what)
    old = [classes.index(name) for name in forgotten_classes(ledger) if name in classes]
    request = Request(len(ledger), "forget", forget_ids, retain_ids, old)
    kind = REQUEST_KINDS.get("forget")()
    kind.check(request, ledger, classes)
    with process_state():
        runtime = Runtime.create(train)
        device = runtime.device
        model = model.to(device)
        editor = Editor.create(MethodConfig.parse(method_spec), kind, model, classes, eval_images, train, thresholds,
                               seed, device, progress, ledger=ledger, runtime=runtime)
        before = editor.evaluate(model)
        data = RequestData({"forget": forget_images, "retain": retain_images})
        model, record, _, _ = editor.run(model, request, data, before, before)
    entry = ledger_entry(record, method_spec, train)
    entry["config"]["seed"] = seed
    return Unlearned(model, record, ledger + [entry])


def check_input_shape(images, preprocess, what: str) -> None:
    """Refuse a dataset whose first item is not an image tensor of the shape the model takes."""
    import torch

    if len(images) == 0 or preprocess is None:
        return
    item = images[0]
    image = item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else None
    want = (preprocess.in_chans, preprocess.image_size, preprocess.image_size)
    if not isinstance(image, torch.Tensor):
        raise ForgetkitError(f"the {what} must yield (image tensor, label) pairs; its first item is "
                             f"{type(item).__name__}; transform the images with the model's preprocessing "
                             f"(model.spec.preprocess) to tensors of shape {want}")
    if tuple(image.shape) != want:
        raise ForgetkitError(f"the {what}'s images have shape {tuple(image.shape)}, the model takes {want} (channels, "
                             f"height, width); transform them with the model's preprocessing (model.spec.preprocess)")
