"""Your own networks (model.encoder_net / model.decoder_net `_target_` nodes, models/networks.py):
the documentation's example (docs/examples/mynets.py) trains, samples, evaluates and resumes; the run
records the targets; a network that breaks the contract is refused in one line before any run
folder exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import assert_one_line_error, one_json, vae

from vaecli.cli import run

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
SHAPES = ["dataset=shapes", "dataset.image_size=16", "dataset.scales=1", "dataset.rotations=2", "dataset.positions=4",
          "trainer.epochs=1", "trainer.batch_size=32", "trainer.sample_every=0", "model.latent_dim=3"]
MINE = ["model.encoder_net._target_=mynets.Encoder", "model.encoder_net.width=8",
        "model.decoder_net._target_=mynets.Decoder", "model.decoder_net.width=8"]


@pytest.mark.slow  # ~16 s of subprocesses; the contract's checks below are the fast suite's
def test_the_readme_example_trains_samples_evaluates_and_resumes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES), PYTHONUNBUFFERED="1")
    out = tmp_path / "run"
    summary = one_json(vae("train", *SHAPES, *MINE, "--run-dir", str(out), "--json", env=env, cwd=tmp_path))
    assert summary["step"] >= 1
    spec = json.loads(__import__("safetensors").safe_open(str(out / "model.safetensors"), "pt").metadata()["vaecli.model"])
    assert spec["body"]["networks"] == {"encoder": {"_target_": "mynets.Encoder", "width": 8},
                                "decoder": {"_target_": "mynets.Decoder", "width": 8}}
    assert "mynets.Encoder" in (out / "config.yaml").read_text()
    one_json(vae("sample", "--ckpt", str(out), "--n", "4", "--out", str(tmp_path / "s.png"), "--json", env=env))
    bound = one_json(vae("eval-iwae", "--ckpt", str(out), "--k", "3", "--n", "8", "--json", env=env))
    assert bound["iwae"] == bound["iwae"]
    resumed = one_json(vae("train", "--resume", str(out), "trainer.epochs=2", "--json", env=env, cwd=tmp_path))
    assert resumed["step"] == 2 * summary["step"]
    without = dict(os.environ)
    without.pop("PYTHONPATH", None)
    assert_one_line_error(vae("sample", "--ckpt", str(out), "--out", str(tmp_path / "t.png"), env=without), 2,
                          "model.encoder_net._target_=mynets.Encoder cannot be imported", "PYTHONPATH")


def test_the_user_networks_replace_the_bodies_and_keep_vaecli_heads(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from vaecli.config import load_config
    from vaecli.models import from_config

    cfg = load_config(SHAPES + MINE + ["likelihood=logistic", "likelihood.mixtures=2"]).cfg
    model = from_config(cfg, (1, 16, 16), None)
    assert type(model.encoder).__name__ == "Encoder" and type(model.decoder).__name__ == "Decoder"
    assert model.head.in_features == 2 * 8 * 4 * 4 and model.head.out_features == 2 * 3  # F from the dry run
    assert model.decoder.net[-1].out_channels == model.likelihood.params_per_pixel  # out_channels of the contract
    assert not model.convolutional  # channels_last is vaecli's choice for its own networks only


@pytest.mark.parametrize("overrides, needle", [
    (["model.encoder_net._target_=nope_such_module.Encoder"], "cannot be imported (ModuleNotFoundError"),
    (["model.encoder_net._target_=mynets.Missing"], "module mynets has no 'Missing'"),
    (["model.encoder_net._target_=collections.OrderedDict"], "not a torch.nn.Module"),
    (["model.encoder_net._target_=torch.nn.Identity"], "must map (B, C, H, W) images to (B, F) features"),
    (["model.decoder_net._target_=mynets.Encoder"], "could not be constructed"),
    (["model.encoder_net._target_=mynets.Encoder", "model.encoder_net.image_shape=3"], "is set by vaecli"),
    (["model.encoder_net.width=3"], "needs model.encoder_net._target_="),
    (["model=vqvae", "model.encoder_net._target_=mynets.Encoder"], "unknown key 'model.encoder_net._target_'"),
])
def test_a_network_that_breaks_the_contract_is_refused_in_one_line(tmp_path, capsys, monkeypatch, overrides, needle):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    assert run(["train", *SHAPES, *overrides, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_decoder_of_the_wrong_shape_names_the_shape_it_must_give(tmp_path, capsys, monkeypatch):
    module = tmp_path / "badnets.py"
    module.write_text("import torch\nclass Flat(torch.nn.Module):\n"
                      "    def __init__(self, image_shape, latent_dim, out_channels):\n"
                      "        super().__init__(); self.f = torch.nn.Linear(latent_dim, 10)\n"
                      "    def forward(self, z):\n        return self.f(z)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run(["train", *SHAPES, "model.decoder_net._target_=badnets.Flat", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "must map (B, 3) latents to (B, 3, 16, 16)" in err and "it gave (2, 10)" in err
