import numpy as np
import pytest
import torch

from forgetkit.data import DataConfig, Preprocess, load_data
from forgetkit.data.sources import FASHION_MNIST_ROOT, read_idx
from forgetkit.errors import ForgetkitError
from pathlib import Path

from conftest import make_image_folder, write_idx


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
    with pytest.raises(ForgetkitError, match="class folder .*empty.* is empty"):
        load_data(DataConfig(source="image_folder", root=str(image_folder)))


def test_corrupt_image_names_the_file(image_folder):
    bad = image_folder / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    splits = load_data(DataConfig(source="image_folder", root=str(image_folder)))
    index = splits.train.paths.index(str(bad))
    with pytest.raises(ForgetkitError, match="cannot read image .*broken.png"):
        splits.train[index]


def test_synthetic_is_deterministic():
    a = load_data(DataConfig(source="synthetic", seed=3))
    b = load_data(DataConfig(source="synthetic", seed=3))
    c = load_data(DataConfig(source="synthetic", seed=4))
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
