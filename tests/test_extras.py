"""The package metadata and the optional parts (src/forgetkit/extras.py): torch is not pinned, every optional
package is an extra, and a missing one fails with a hint naming it."""

import re
import sys
import tomllib
from pathlib import Path

import pytest

from forgetkit import extras
from forgetkit.errors import ForgetkitError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_torch_is_not_pinned_in_the_package_metadata():
    """`pip install forgetkit` beside a user's own torch build must not replace it: a lower bound only."""
    deps = {_name(r): r for r in PROJECT["dependencies"]}
    for name in ("torch", "torchvision"):
        assert name in deps
        assert "==" not in deps[name] and "<" not in deps[name], deps[name]


def test_the_constraints_file_pins_this_machines_torch_and_setup_uses_it():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert set(pins) == {"torch", "torchvision"}
    import torch

    assert torch.__version__.split("+")[0] == pins["torch"]
    assert "-c constraints.txt" in (ROOT / "setup.sh").read_text()


def test_every_optional_package_is_an_extra_and_none_is_a_core_dependency():
    core = {_name(r) for r in PROJECT["dependencies"]}
    optional = PROJECT["optional-dependencies"]
    for module, (extra, dist) in extras.EXTRAS.items():
        if module == "fontTools":  # comes with matplotlib
            continue
        assert _name(dist) not in core, f"{dist} is optional but a core dependency"
        assert _name(dist) in {_name(r) for r in optional[extra]}, f"{dist} is not in the {extra} extra"
    assert set(optional["all"][0].split("[")[1].rstrip("]").split(",")) == {e for e, _ in extras.EXTRAS.values()}


def test_a_missing_extra_fails_with_a_hint_naming_it(monkeypatch):
    monkeypatch.setattr(extras, "available", lambda module: False)
    with pytest.raises(ForgetkitError, match=r"pip install 'forgetkit\[verify\]'"):
        extras.require("sklearn", "verification")
    with pytest.raises(KeyError):  # not an extra: a bug in forgetkit, not a user's mistake
        extras.require("numpy", "anything")


def test_clip_without_open_clip_names_the_clip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    monkeypatch.delitem(sys.modules, "forgetkit.clip.model", raising=False)
    monkeypatch.setattr(extras, "available", lambda module: module != "open_clip")
    with pytest.raises(ForgetkitError, match=r"forgetkit\[clip\]"):
        import forgetkit.clip.model  # noqa: F401


def test_a_run_without_matplotlib_writes_its_results_and_says_why_no_plots(tmp_path, monkeypatch, caplog):
    from forgetkit import report
    from forgetkit.requests import REQUEST_KINDS, RequestRecord, RunRecord

    monkeypatch.setattr(report, "available", lambda module: module != "matplotlib")
    record = RequestRecord(0, "forget", {"classes": ["a"], "forget_classes": ["a"], "retain_classes": ["b"],
                                         "old_classes": [], "missing_classes": [],
                                         "before": {"acc_f": 90.0, "acc_r": 90.0, "acc_o": None, "acc_f_all": 90.0},
                                         "after": {"acc_f": 0.0, "acc_r": 90.0, "acc_o": None, "acc_f_all": 0.0},
                                         "pretrained": {"acc_f": 90.0, "acc_r": 90.0, "acc_o": None,
                                                        "acc_f_all": 90.0},
                                         "h_mean": 90.0, "h_cumulative": 90.0},
                           {"before": {"a": 90.0, "b": 90.0}, "after": {"a": 0.0, "b": 90.0}},
                           {"pass": True, "failed": []}, 1.0, 10, 100, 5, 5, 1, "x", "y", None, {})
    run = RunRecord(method="gs_lora", dataset="d", setting="s", seed=0, eval_split="test", accuracy="argmax",
                    pretrained={"acc": 90.0, "per_class": {"a": 90.0, "b": 90.0}}, requests=[record], kind="forget",
                    summary={"h_cumulative_avg": 90.0, "h_mean_avg": 90.0, "acc_f_avg": 0.0, "acc_r_avg": 90.0,
                             "acc_o_avg": None, "seconds_total": 1.0}, loss_log=[], ledger=[])
    with caplog.at_level("WARNING", logger="forgetkit"):
        report.write_outputs(tmp_path, run, {}, REQUEST_KINDS.get("forget")())
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
    assert not list(tmp_path.glob("*.png"))
    assert "forgetkit[plot]" in caplog.text
