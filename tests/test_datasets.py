"""The torchvision datasets beyond MNIST and CIFAR-10, each from tiny files in its real on-disk
format, read by torchvision's own classes: what vaecli makes of them, and the errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import TINY, assert_one_line_error, one_json, vae, write_fake_celeba, write_fake_omniglot, write_fake_svhn
from vaecli import data
from vaecli.config import load_config


def dataset(name: str, root, *overrides: str):
    return load_config([f"dataset={name}", f"dataset.root={root}", *overrides]).cfg.dataset


def test_svhn_images_are_rgb_and_the_digit_0_is_label_0(tmp_path, fake_archives_pass_md5):
    from scipy.io import loadmat

    write_fake_svhn(tmp_path)
    train = data.build(dataset("svhn", tmp_path), "train")
    assert train.image_shape == (3, 32, 32) and train.images.dtype == torch.uint8
    raw = loadmat(tmp_path / "train_32x32.mat")
    assert train.labels.tolist() == [int(v) % 10 for v in raw["y"][:, 0]]  # SVHN stores 0 as 10
    assert torch.equal(train.images[0, 0], torch.as_tensor(raw["X"][:, :, 0, 0]))  # pixel (row, col) kept


def test_omniglot_is_inverted_resized_binarized_and_cached(tmp_path, fake_archives_pass_md5):
    write_fake_omniglot(tmp_path)
    cfg = dataset("omniglot", tmp_path)
    train, test = data.build(cfg, "train"), data.build(cfg, "test")
    assert (len(train), len(test)) == (12, 6)  # background: 2 alphabets x 2 characters x 3; evaluation: 1 x 2 x 3
    assert train.image_shape == (1, 28, 28) and train.labels is None
    assert train.binarize == "dynamic" and set(test.images.unique().tolist()) <= {0, 255}  # test: binarized once
    grey = train.images.float()
    assert grey[:, :, 0, :].mean() < 20 < grey.max()  # white paper became 0, strokes are ink
    cache = tmp_path / "omniglot-py" / "vaecli-omniglot-train-28.npz"
    assert cache.is_file()
    shutil.rmtree(tmp_path / "omniglot-py" / "images_background")  # the cache alone is enough now
    assert torch.equal(data.build(cfg, "train").images, train.images)


def test_celeba_is_a_64px_centre_crop_of_its_partitions(tmp_path, fake_archives_pass_md5):
    write_fake_celeba(tmp_path)
    cfg = dataset("celeba", tmp_path)
    train, test = data.build(cfg, "train"), data.build(cfg, "test")
    assert (len(train), len(test)) == (5, 3)  # list_eval_partition.txt: 0 train, 2 test
    assert train.image_shape == (3, 64, 64) and train.labels is None
    pixel = train.images[1, :, 32, 32].tolist()  # image 2's colour, kept through crop and resize (JPEG: +-3)
    assert all(abs(a - b) <= 3 for a, b in zip(pixel, [20, 100, 200]))
    assert (tmp_path / "celeba" / "vaecli-celeba-test-64.npz").is_file()


def test_kmnist_trains_end_to_end(env, tmp_path):
    summary = one_json(vae("train", "dataset=kmnist", *TINY, "--run-dir", str(tmp_path / "k"), "--json", env=env))
    assert summary["dataset"] == "kmnist" and summary["step"] == 8  # 256 tiny images / 32


def test_a_missing_celeba_names_the_files_and_the_folder(env, tmp_path):
    result = vae("train", "dataset=celeba", f"dataset.root={tmp_path}", *TINY, env=env, timeout=120)
    assert_one_line_error(result, 1, "CelebA not found under", "img_align_celeba/", "list_eval_partition.txt",
                          str(tmp_path / "celeba"))


@pytest.mark.parametrize("name", ["omniglot", "celeba"])
def test_converted_datasets_need_an_image_size(name):
    from vaecli.errors import UsageError

    with pytest.raises(UsageError, match="needs dataset.image_size"):
        load_config([f"dataset={name}", "dataset.image_size=null"])
