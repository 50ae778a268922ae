from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, write_idx

from forgetkit.data import DataConfig, Preprocess, load_data
from forgetkit.data.sources import FASHION_MNIST_ROOT, read_idx
from forgetkit.errors import ForgetkitError


def test_idx_reader_roundtrip_gz_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr, gz=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(arr.astype(np.uint8)))
    assert torch.equal(read_idx(tmp_path / "b"), read_idx(tmp_path / "a.gz"))


def test_idx_reader_rejects_truncated_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 5)), gz=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-3])
    with pytest.raises(ForgetkitError, match="truncated"):
        read_idx(tmp_path / "x")


def test_fashion_mnist_source_on_idx_folder(fake_fmnist):
    splits = load_data(DataConfig(source="fashion_mnist", root=str(fake_fmnist)))
    assert len(splits.train) == 20 and len(splits.test) == 10
    assert splits.classes[5] == "Sandal" and len(splits.classes) == 10
    img, label = splits.train[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8 and label == 3


def test_unknown_dataset_path_names_the_fix(tmp_path):
    with pytest.raises(ForgetkitError, match="does not exist.*data.root"):
        load_data(DataConfig(source="fashion_mnist", root=str(tmp_path / "nope")))
    with pytest.raises(ForgetkitError, match="does not exist"):
        load_data(DataConfig(source="image_folder", root=str(tmp_path / "nope")))


def test_unknown_source_suggests():
    with pytest.raises(ForgetkitError, match="Did you mean 'image_folder'"):
        load_data(DataConfig(source="image_foldr"))


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    splits = load_data(DataConfig())
    assert (len(splits.train), len(splits.test)) == (60000, 10000)
    assert torch.bincount(splits.test.targets).tolist() == [1000] * 10


@pytest.mark.parametrize("mode,in_chans", [("RGB", 3), ("L", 1), ("RGB", 1), ("L", 3)])
def test_image_folder_any_size_grey_or_rgb(tmp_path, mode, in_chans):
    root = make_image_folder(tmp_path / "d", mode=mode, size=(23, 17))
    splits = load_data(DataConfig(source="image_folder", root=str(root)))
    assert splits.classes == ["cat", "dog", "fox"]
    splits.with_preprocess(Preprocess(image_size=12, in_chans=in_chans, mean=(0.5,) * in_chans,
                                      std=(0.5,) * in_chans))
    img, label = splits.test[5]
    assert img.shape == (in_chans, 12, 12) and label == 1
    assert torch.isfinite(img).all() and img.min() >= -1 and img.max() <= 1


def test_train_test_class_mismatch(image_folder):
    (image_folder / "test" / "fox").rename(image_folder / "test" / "wolf")
    with pytest.raises(ForgetkitError, match="class mismatch.*fox.*wolf"):
        load_data(DataConfig(source="image_folder", root=str(image_folder)))


def test_empty_class_folder(image_folder):
    (image_folder / "train" / "empty").mkdir()
    (image_folder / "test" / "empty").mkdir()
    with pytest.raises(ForgetkitError, match="class folder .*empty.* has no readable image"):
        load_data(DataConfig(source="image_folder", root=str(image_folder)))


def test_corrupt_image_names_the_file(image_folder):
    """A file that is no image is left out when the folder is scanned (tests/test_first_hour.py); a JPEG cut short
    inside its data passes that check, and fails when decoded, naming the file."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    bad = image_folder / "train" / "dog" / "broken.jpg"
    bad.write_bytes(buffer.getvalue()[: int(len(buffer.getvalue()) * 0.7)])
    splits = load_data(DataConfig(source="image_folder", root=str(image_folder)))
    index = splits.train.paths.index(str(bad))
    with pytest.raises(ForgetkitError, match="cannot read image .*broken.jpg"):
        splits.train[index]


def test_synthetic_is_deterministic():
    a = load_data(DataConfig(source="synthetic", seed=3))
    b = load_data(DataConfig(source="synthetic", seed=3))
    c = load_data(DataConfig(source="synthetic", seed=4))
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)


def test_balanced_batches_let_every_class_come_round_before_any_repeats():
    from forgetkit.runtime import BalancedBatchSampler

    targets = torch.tensor([0] * 50 + [1] * 3 + [2] * 7 + [3] * 1 + [4] * 20)   # very unequal classes, sorted
    batches = BalancedBatchSampler(targets, 4, torch.Generator().manual_seed(0)).__iter__()
    drawn = [next(batches) for _ in range(10)]
    flat = [i for b in drawn for i in b]
    labels = targets[flat].tolist()
    for start in range(0, 40, 5):  # every window of 5 consecutive draws holds each of the 5 classes once
        assert sorted(labels[start:start + 5]) == [0, 1, 2, 3, 4]
    per_class_0 = [i for i in flat if targets[i] == 0]
    assert len(set(per_class_0)) == len(per_class_0)  # no image of a class repeats before the class is used up
    again = BalancedBatchSampler(targets, 4, torch.Generator().manual_seed(0)).__iter__()
    assert [next(again) for _ in range(10)] == drawn  # same generator seed, same batches


def test_validation_holdout_is_fixed_nested_and_left_out_by_pretrain(tmp_path):
    from forgetkit.data.datasets import validation_holdout
    from forgetkit.pretraining import PretrainConfig, pretrain
    from forgetkit.requests.protocol import Protocol, ProtocolConfig

    splits = load_data(DataConfig(source="synthetic", num_classes=3, train_per_class=12))
    held5 = validation_holdout(splits.train.targets, 3, 5)
    assert len(held5) == 15 and torch.bincount(splits.train.targets[held5]).tolist() == [5, 5, 5]
    assert set(held5.tolist()) <= set(validation_holdout(splits.train.targets, 3, 8).tolist())  # nested
    for seed in (0, 1):  # a run's seed does not move the hold-out, and the run never trains on it
        proto = Protocol(ProtocolConfig(num_requests=1, classes_per_request=1, val_per_class=5, eval_split="val",
                                        forget_ratio=1.0, retain_ratio=1.0), splits, seed=seed)
        assert torch.equal(torch.sort(proto.eval_images.indices).values, held5)
        data = proto.request_data(proto.requests[0])
        assert not set(data.forget.indices.tolist() + data.retain.indices.tolist()) & set(held5.tolist())
    _, info = pretrain(PretrainConfig(data=DataConfig(source="synthetic", num_classes=3, train_per_class=12),
                                      arch="vit_test", epochs=1, batch_size=4, val_per_class=5, threads=1,
                                      out=str(tmp_path / "m")), progress=False)
    assert info["train_images"] == 36 - 15
    with pytest.raises(ForgetkitError, match="too few to hold out"):
        validation_holdout(splits.train.targets, 3, 12)


def test_glyphs60_renders_60_distinct_classes_deterministically():
    from forgetkit.data.glyphs import GLYPH_CLASSES, render_glyphs

    names = [name for name, _ in GLYPH_CLASSES]
    assert len(names) == len(set(names)) == 60 and len({c for _, c in GLYPH_CLASSES}) == 60
    images, labels = render_glyphs(2, seed=0, split=0)
    assert images.shape == (120, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(60) for _ in range(2)]
    assert torch.equal(render_glyphs(2, seed=0, split=0)[0], images)        # the generator defines the data
    assert not torch.equal(render_glyphs(2, seed=0, split=1)[0], images)    # test images are other draws
    ink = images.float().flatten(1)
    assert (ink.max(1).values > 150).all()                                  # every image has a drawn glyph
    centred = (ink > 100).float().mean(1)
    assert (centred > 0.02).all() and (centred < 0.6).all()                 # neither empty nor a filled box


def test_glyphs_novel_renders_20_characters_no_glyphs60_class_has():
    from forgetkit.data.glyphs import GLYPH_CLASSES, NOVEL_CLASSES, render_glyphs

    assert len({c for _, c in NOVEL_CLASSES}) == len({n for n, _ in NOVEL_CLASSES}) == 20
    assert not {c for _, c in NOVEL_CLASSES} & {c for _, c in GLYPH_CLASSES}
    assert not {n for n, _ in NOVEL_CLASSES} & {n for n, _ in GLYPH_CLASSES}
    images, labels = render_glyphs(2, seed=0, split=0, glyph_classes=NOVEL_CLASSES, stream=1000)
    assert images.shape == (40, 1, 28, 28) and labels.tolist() == [c for c in range(20) for _ in range(2)]
    assert torch.equal(render_glyphs(2, 0, 0, NOVEL_CLASSES, stream=1000)[0], images)
    assert (images.float().flatten(1).max(1).values > 150).all()


def test_a_class_subset_relabels_in_its_own_order(image_folder):
    full = load_data(DataConfig(source="image_folder", root=str(image_folder)))
    for choice, expected in (("1:", ["dog", "fox"]), (["fox", "cat"], ["fox", "cat"]), (":1", ["cat"])):
        part = load_data(DataConfig(source="image_folder", root=str(image_folder), classes=choice))
        assert part.classes == expected and len(part.train) == 4 * len(expected)
        for i in range(len(part.train)):  # each image keeps its class, under its new index
            image, label = part.train[i]
            assert expected[label] == full.classes[int(full.train.targets[part.train.indices[i]])]
    for choice, message in (("30", "neither a list"), (["owl"], "'owl', which the data does not have"),
                            ("5:", "selects no class")):
        with pytest.raises(ForgetkitError, match=message):
            load_data(DataConfig(source="image_folder", root=str(image_folder), classes=choice))
