"""Run folders written by the release before the one-home-per-family redesign (tests/legacy/,
made by commit 42120f6: flat VAESpec JSON in model.safetensors, config.yaml of the flat schema)
load, evaluate, sample, reconstruct and resume as they did then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaecli.cli import run

LEGACY = Path(__file__).parent / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


def cli_json(capsys, *args) -> dict:
    assert run([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def legacy(tmp_path):
    """A writable copy of the legacy runs (commands append evals.jsonl, resume writes checkpoints)."""
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_old_run_evaluates_and_reconstructs_as_it_did(legacy, capsys, tmp_path, name):
    expected = EXPECTED[name]
    got = cli_json(capsys, "eval-iwae", "--ckpt", str(legacy / name), "--k", "5", "--n", "8", "--precision", "fp32")
    assert got["bound"] is expected["bound"]
    for key in ("iwae", "elbo", "kl"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key
    out = tmp_path / f"{name}.png"
    cli_json(capsys, "reconstruct", "--ckpt", str(legacy / name), "--n", "4", "--out", str(out))
    now = np.asarray(Image.open(out), dtype=np.int16)
    then = np.asarray(Image.open(legacy / name / "reconstruct_expected.png"), dtype=np.int16)
    assert now.shape == then.shape and np.abs(now - then).max() <= 1  # a rounding step at most


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if n != "vqvae"])  # a VQ-VAE samples once its prior is trained
def test_an_old_run_samples(legacy, capsys, tmp_path, name):
    out = cli_json(capsys, "sample", "--ckpt", str(legacy / name), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert Image.open(out["out"]).size[0] > 0


def test_an_old_fitted_sampler_still_draws(legacy, capsys, tmp_path):
    out = cli_json(capsys, "sample", "--ckpt", str(legacy / "mlp"), "--sampler", "gmm", "--n", "4",
                   "--out", str(tmp_path / "g.png"))
    assert Image.open(out["out"]).size[0] > 0


@pytest.mark.parametrize("name", ["mlp", "vqvae", "factorvae"])
def test_an_old_run_resumes_for_another_epoch(legacy, capsys, name):
    before = json.loads((legacy / name / "summary.json").read_text())
    summary = cli_json(capsys, "train", "--resume", str(legacy / name), "trainer.epochs=2")
    assert summary["step"] == 2 * before["step"]  # one more epoch of as many steps
