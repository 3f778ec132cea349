"""dSprites and 3D Shapes read from tiny files in their published formats: the factor grid, the
images as stored, the levels a Bernoulli's bound needs, eval-disentanglement on them, and the
one-line errors for a missing file, a corrupt one and a missing h5py."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, one_json, vae, write_fake_dsprites, write_fake_shapes3d

from vaecli import data
from vaecli.config import load_config
from vaecli.errors import VaeError


def _both(overrides):
    cfg = load_config(overrides).cfg
    return cfg, data.build(cfg.dataset, "train", cfg.seed), data.build(cfg.dataset, "test", cfg.seed)


def test_dsprites_reads_the_published_layout_as_binary_images_with_their_factors(tmp_path):
    write_fake_dsprites(tmp_path)
    cfg, train, test = _both(["dataset=dsprites", f"dataset.root={tmp_path}"])
    assert (len(train), len(test)) == (44, 4) and train.image_shape == (1, 16, 16)
    assert set(train.images.unique().tolist()) <= {0, 255} and train.levels == 2
    assert train.factor_names == ["shape", "scale", "orientation", "x", "y"]
    whole = torch.cat([train.factors, test.factors])
    assert len({tuple(f) for f in whole.tolist()}) == 48  # every combination once, colour dropped
    assert torch.equal(train.labels, train.factors[:, 0]) and train.num_classes == 3
    with np.load(tmp_path / "dsprites" / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz", allow_pickle=True) as f:
        stored = {tuple(c[1:]): img for c, img in zip(f["latents_classes"], f["imgs"])}
    for factors, image in zip(train.factors.tolist(), train.images):
        assert np.array_equal(stored[tuple(factors)] * 255, image[0].numpy())
    assert cfg.likelihood.name == "bernoulli" and cfg.dataset.binarize == "stored"


def test_shapes3d_turns_factor_values_into_indices_and_images_into_nchw(tmp_path):
    write_fake_shapes3d(tmp_path)
    cfg, train, test = _both(["dataset=shapes3d", f"dataset.root={tmp_path}"])
    assert (len(train), len(test)) == (58, 6) and train.image_shape == (3, 16, 16) and train.levels == 256
    whole = torch.cat([train.factors, test.factors])
    assert whole.min() == 0 and whole.max() == 1 and len({tuple(f) for f in whole.tolist()}) == 64
    assert train.factor_names[4] == "shape" and torch.equal(train.labels, train.factors[:, 4])
    floor = train.factors[:, 0]  # the fake paints the floor's red by its hue index
    assert torch.equal(train.images[:, 0, -1, 0].long(), 100 + 100 * floor)
    assert cfg.likelihood.name == "logistic"


def test_a_missing_file_names_the_url_and_the_folder(tmp_path, env):
    for dataset, url in (("dsprites", "dsprites-dataset"), ("shapes3d", "storage.googleapis.com/3d-shapes")):
        result = vae("train", f"dataset={dataset}", f"dataset.root={tmp_path}", "--run-dir", str(tmp_path / "run"), env=env)
        assert_one_line_error(result, 1, url, str(tmp_path / dataset))
    assert not (tmp_path / "run").exists()


def test_a_corrupt_file_and_a_missing_h5py_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "dsprites").mkdir()
    (tmp_path / "dsprites" / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz").write_bytes(b"not a zip")
    cfg = load_config(["dataset=dsprites", f"dataset.root={tmp_path}"]).cfg
    with pytest.raises(VaeError, match="not the published file"):
        data.build(cfg.dataset, "train")
    write_fake_shapes3d(tmp_path)
    cfg = load_config(["dataset=shapes3d", f"dataset.root={tmp_path}"]).cfg
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(VaeError, match=r"vaecli\[shapes3d\]"):
        data.build(cfg.dataset, "train")


@pytest.mark.slow  # ~6 s: train and eval in subprocesses
def test_dsprites_trains_with_a_bound_and_eval_disentanglement_reads_its_factors(tmp_path, env):
    write_fake_dsprites(tmp_path)
    run = tmp_path / "run"
    summary = one_json(vae("train", "dataset=dsprites", f"dataset.root={tmp_path}", "model.hidden=[16]",
                           "model.latent_dim=3", "trainer.epochs=1", "trainer.batch_size=16", "trainer.sample_every=0",
                           "--run-dir", str(run), "--json", env=env))
    assert summary["bound"] is True and summary["test_bits_per_dim"] is not None
    result = one_json(vae("eval-disentanglement", "--ckpt", str(run), "--metrics", "mig,factor_vae", "--points", "200",
                          "--json", env=env))
    assert [f["name"] for f in result["factors"]] == ["shape", "scale", "orientation", "x", "y"]
    assert 0 <= result["mig"] <= 1 and 0 <= result["factor_vae"]["eval_accuracy"] <= 1
    assert json.dumps(result)  # strict JSON
