"""The Python API as a library: plain Datasets in, the edited model, its results and its ledger out."""

import pytest
import torch
from conftest import SYNTH
from torch.utils.data import TensorDataset

import forgetkit as fk

TINY = dict(train={"steps": 48, "batch_size": 16, "threads": 1},
            method={"name": "gs_lora", "bnd": 5, "alpha": 0.01, "alpha_warmup_steps": 8})


def plain(images, classes):
    """A user's dataset: a TensorDataset of already transformed images (no forgetkit type, no .targets)."""
    idx = images.indices_of(classes)
    return TensorDataset(torch.stack([images[int(i)][0] for i in idx]), images.targets[idx])


def test_unlearn_takes_plain_datasets_and_keeps_a_ledger(tiny_model_dir):
    model, _ = fk.load_model(tiny_model_dir)
    splits = fk.load_data(fk.DataConfig(**SYNTH)).with_preprocess(model.spec.preprocess)
    names, test = splits.classes, plain(splits.test, range(6))
    first = fk.unlearn(model, plain(splits.train, [0]), plain(splits.train, [1, 2, 3, 4, 5]), test, classes=names,
                       **TINY)
    assert first.record.before["acc_f"] >= 50 and first.record.after["acc_f"] <= 5
    assert first.record.passed
    with pytest.warns(DeprecationWarning, match="Unlearned.record"):     # the old name, for one release
        assert first.results == first.record.to_dict()
    assert first.ledger[0]["classes"] == [names[0]] and first.ledger[0]["kind"] == "forget"
    assert first.ledger[0]["fingerprint_after"] == fk.fingerprint(first.model)
    second = fk.unlearn(first.model, plain(splits.train, [1]), plain(splits.train, [2, 3, 4, 5]), test,
                        classes=names, ledger=first.ledger, **TINY)
    assert second.record.index == 1 and second.record.old_classes == [names[0]]
    assert second.record.after["acc_o"] <= 10  # the first request's class stays forgotten
    assert [e["classes"] for e in second.ledger] == [[names[0]], [names[1]]]
    with pytest.raises(fk.ForgetkitError, match="already forgotten by request 1"):
        fk.unlearn(second.model, plain(splits.train, [0]), plain(splits.train, [3]), test, classes=names,
                   ledger=second.ledger, **TINY)


def test_unlearn_refuses_bad_datasets(tiny_model_dir):
    model, _ = fk.load_model(tiny_model_dir)
    x = torch.zeros(4, 1, 16, 16)
    good = TensorDataset(x, torch.tensor([1, 1, 2, 2]))
    with pytest.raises(fk.ForgetkitError, match="labels outside 0..5"):
        fk.unlearn(model, TensorDataset(x, torch.tensor([0, 0, 9, 9])), good, good, classes=list("abcdef"))
    with pytest.raises(fk.ForgetkitError, match="in both the forget and the retain set"):
        fk.unlearn(model, good, good, good, classes=list("abcdef"))
    with pytest.raises(fk.ForgetkitError, match="not data"):
        fk.unlearn(model, good, good, good, classes=list("abcdef"), data={})


def test_old_names_of_forgetkit_0_1_still_work_with_a_warning(monkeypatch):
    """run_forgetting, Request.forget and the method hooks setup_task / finish_task / save_task: deprecated aliases
    for one release."""
    import forgetkit.engine.run as run_module
    from forgetkit.methods.base import Method
    from forgetkit.requests.protocol import Request

    monkeypatch.setattr(run_module, "run_requests", lambda cfg, **kw: {"ran": cfg, **kw})
    with pytest.warns(DeprecationWarning, match="run_forgetting is deprecated.*run_requests"):
        assert fk.run_forgetting("cfg", progress=False) == {"ran": "cfg", "progress": False}
    request = Request(0, "forget", [1, 2], [0], [])
    with pytest.warns(DeprecationWarning, match="Request.classes"):
        assert request.forget == [1, 2]
    with (pytest.warns(DeprecationWarning, match="Old.setup_task is deprecated.*name it setup"),
          pytest.warns(DeprecationWarning, match="Old.finish_task is deprecated.*name it finish")):
        class Old(Method):
            def setup_task(self, model, request, data):
                return "set up"

            def finish_task(self):
                return "finished"
    assert Old.setup is Old.__dict__["setup_task"] and Old.finish is Old.__dict__["finish_task"]


def test_the_task_names_of_0_1_still_work_with_a_warning(monkeypatch):
    """make_tasks, a kind's make_tasks, a method's task_stats and the API's tasks= keyword: deprecated aliases of the
    request names, for one release."""
    import forgetkit.api as api
    from forgetkit.engine.config import ProtocolConfig
    from forgetkit.methods.base import Method
    from forgetkit.requests import RequestKind, make_requests, make_tasks

    names = [str(i) for i in range(10)]
    cfg = ProtocolConfig(classes_per_request=2, num_requests=2)
    with pytest.warns(DeprecationWarning, match="make_tasks is deprecated.*make_requests"):
        assert make_tasks(cfg, names) == make_requests(cfg, names)
    with pytest.warns(DeprecationWarning, match="OldKind.make_tasks is deprecated"):
        class OldKind(RequestKind):
            def make_tasks(self, cfg, classes, forgotten, first_index, known=None):
                return ["made"]
    assert OldKind().make_requests(cfg, names, [], 0) == ["made"]
    with pytest.warns(DeprecationWarning, match="OldStats.task_stats is deprecated.*request_stats"):
        class OldStats(Method):
            def task_stats(self):
                return {"norm": 1.0}
    assert OldStats.request_stats is OldStats.__dict__["task_stats"]

    seen = {}
    monkeypatch.setattr("forgetkit.engine.run.run_requests", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    with pytest.warns(DeprecationWarning, match="tasks= is deprecated.*requests="):
        api.forget("builtin:fmnist_vit", tasks=[["Bag"]], output_dir="unused")
    assert seen["cfg"].protocol.requests == [["Bag"]]
    with pytest.raises(fk.ForgetkitError, match="one argument"), pytest.warns(DeprecationWarning):
        api.forget("builtin:fmnist_vit", [["Bag"]], tasks=[["Coat"]])
    with pytest.raises(fk.ForgetkitError, match="needs the classes of each request"):
        api.forget("builtin:fmnist_vit")
