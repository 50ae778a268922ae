import random

import pytest
import torch

from forgetkit.data import DataConfig, load_data
from forgetkit.errors import ForgetkitError
from forgetkit.requests.protocol import Protocol, ProtocolConfig, class_order, make_requests

PAPER_ORDER = [83, 17, 10, 9, 89, 52, 7, 32, 37, 77, 61, 34, 78, 55, 56, 63, 69, 22, 75, 66, 35, 72, 71, 23, 86, 38,
               24, 5, 29, 30, 16, 11, 82, 19, 57, 14, 91, 27, 98, 53, 0, 20, 59, 28, 47, 18, 6, 48, 12, 62, 1, 43, 3,
               60, 41, 85, 4, 95, 97, 36, 94, 65, 67, 99, 25, 33, 70, 40, 92, 31, 58, 15, 45, 2, 87, 76, 80, 44, 64,
               8, 51, 54, 13, 88, 84, 26, 50, 39, 96, 81, 49, 42, 21, 93, 74, 73, 46, 90, 68, 79]
CLASSES_100 = [f"id{i:03d}" for i in range(100)]


def test_seed_1337_reproduces_the_papers_class_order():
    assert class_order(100, 1337) == PAPER_ORDER
    assert class_order(5, None) == [0, 1, 2, 3, 4]


def test_continual_protocol_of_the_papers():
    requests = make_requests(ProtocolConfig(first_retained=80, classes_per_request=20, num_requests=4), CLASSES_100)
    for t, request in enumerate(requests):
        assert request.classes == PAPER_ORDER[80 - 20 * t: 100 - 20 * t]
        assert request.retain == PAPER_ORDER[: 80 - 20 * t]
        assert sorted(request.old) == sorted(PAPER_ORDER[100 - 20 * t:])
    assert requests[3].retain == PAPER_ORDER[:20]


def test_demo_protocol_tasks():
    requests = make_requests(ProtocolConfig(classes_per_request=2, num_requests=4), [str(i) for i in range(10)])
    # Python random, seed 1337 over 10 classes: order [0, 3, 7, 2, 1, 6, 4, 5, 8, 9]
    assert [t.classes for t in requests] == [[8, 9], [4, 5], [1, 6], [7, 2]]
    assert [len(t.retain) for t in requests] == [8, 6, 4, 2]


def test_too_many_tasks_is_refused():
    with pytest.raises(ForgetkitError, match="classes_per_request × num_requests"):
        make_requests(ProtocolConfig(classes_per_request=3, num_requests=4), [str(i) for i in range(10)])
    with pytest.raises(ForgetkitError, match="must equal the number of classes"):
        make_requests(ProtocolConfig(classes_per_request=3, num_requests=1, first_retained=9),
                      [str(i) for i in range(10)])


NAMES = ["cat", "dog", "fox", "owl"]


def test_explicit_requests_by_name():
    requests = make_requests(ProtocolConfig(requests=[["dog"], ["owl", "cat"]]), NAMES)
    assert requests[0].classes == [1] and sorted(requests[0].retain) == [0, 2, 3] and requests[0].old == []
    assert requests[1].classes == [3, 0] and requests[1].retain == [2] and requests[1].old == [1]


@pytest.mark.parametrize("cfg,match", [
    (ProtocolConfig(requests=[["dgo"]]), "unknown class 'dgo'.*Did you mean 'dog'"),
    (ProtocolConfig(requests=[[]]), "empty"),
    (ProtocolConfig(requests=[]), "empty"),
    (ProtocolConfig(requests=[["dog"], ["dog"]]), "again"),
    (ProtocolConfig(requests=[["dog"]], retain_classes=["cat", "dog"]), "both forgotten and retained"),
    (ProtocolConfig(requests=[["cat", "dog", "fox", "owl"]]), "no class would be retained"),
])
def test_bad_forget_requests(cfg, match):
    with pytest.raises(ForgetkitError, match=match):
        make_requests(cfg, NAMES)


@pytest.fixture(scope="module")
def splits():
    return load_data(DataConfig(source="synthetic", num_classes=6, train_per_class=50, test_per_class=5))


def test_ratio_subsampling_is_per_class_and_seeded(splits):
    proto = Protocol(ProtocolConfig(forget_ratio=0.2, retain_ratio=0.1, num_requests=2), splits, seed=0)
    data = proto.request_data(proto.requests[0])
    counts = torch.bincount(data.forget.targets, minlength=6)
    assert all(counts[c] == 10 for c in proto.requests[0].classes) and counts.sum() == 20
    assert torch.bincount(data.retain.targets, minlength=6)[proto.requests[0].retain].tolist() == [5] * 4
    torch.manual_seed(123)  # the global RNG must not matter
    random.seed(5)
    again = Protocol(ProtocolConfig(forget_ratio=0.2, retain_ratio=0.1, num_requests=2), splits, seed=0)
    assert torch.equal(again.request_data(again.requests[0]).forget.indices, data.forget.indices)
    other = Protocol(ProtocolConfig(forget_ratio=0.2, retain_ratio=0.1, num_requests=2), splits, seed=1)
    assert not torch.equal(other.request_data(other.requests[0]).forget.indices, data.forget.indices)

    with pytest.warns(DeprecationWarning, match="Protocol.tasks is deprecated"):   # the 0.1 names, for one release
        assert proto.tasks == proto.requests
    with pytest.warns(DeprecationWarning, match="Protocol.task_data is deprecated"):
        assert torch.equal(proto.task_data(proto.requests[0]).forget.indices, data.forget.indices)


def test_few_shot_draws_exactly_n_per_class(splits):
    proto = Protocol(ProtocolConfig(shots=4, num_requests=2), splits, seed=0)
    for request in proto.requests:
        data = proto.request_data(request)
        assert torch.bincount(data.forget.targets, minlength=6)[request.classes].tolist() == [4] * len(request.classes)
        assert torch.bincount(data.retain.targets, minlength=6)[request.retain].tolist() == [4] * len(request.retain)
    assert proto.setting == "continual_4shot"
    with pytest.raises(ForgetkitError, match="fewer than"):
        p = Protocol(ProtocolConfig(shots=51, num_requests=1), splits, seed=0)
        p.request_data(p.requests[0])


def test_validation_split_is_held_out(splits):
    proto = Protocol(ProtocolConfig(val_per_class=5, eval_split="val", forget_ratio=1.0, retain_ratio=1.0,
                                    num_requests=1), splits, seed=0)
    val = set(proto.eval_images.indices.tolist())
    assert len(val) == 30
    data = proto.request_data(proto.requests[0])
    trained = set(data.forget.indices.tolist()) | set(data.retain.indices.tolist())
    assert not val & trained and len(trained) == 6 * 45
    with pytest.raises(ForgetkitError, match="val_per_class is 0"):
        Protocol(ProtocolConfig(eval_split="val"), splits, seed=0)


def test_missing_classes_have_no_replay_but_are_retained(splits):
    proto = Protocol(ProtocolConfig(missing=2, classes_per_request=1, num_requests=2, retain_ratio=0.2), splits, seed=0)
    order = class_order(6, 1337)
    for request in proto.requests:
        assert request.missing == order[:2] and set(request.missing) <= set(request.retain)
        assert request.replay == [c for c in request.retain if c not in order[:2]]
        labels = set(proto.request_data(request).retain.targets.tolist())
        assert labels == set(request.replay)
    assert proto.setting == "continual_2missing"
    with pytest.raises(ForgetkitError, match="at least one retained class with data"):
        make_requests(ProtocolConfig(missing=2, num_requests=2), [str(i) for i in range(6)])  # last task retains 2
    named = make_requests(ProtocolConfig(requests=[["dog"]], missing_classes=["cat"]), NAMES)
    assert named[0].missing == [0] and named[0].replay == [2, 3]
    with pytest.raises(ForgetkitError, match="not retained"):
        make_requests(ProtocolConfig(requests=[["dog"]], missing_classes=["dog"]), NAMES)
