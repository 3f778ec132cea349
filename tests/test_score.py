"""vae score: per-image bounds, the CSV, and telling two sets apart (AUROC / AUPR), through the
real CLI on tiny trained models."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, assert_one_line_error, digit_like, one_json, vae


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_score_gives_each_image_its_bounds_and_agrees_with_eval_iwae(trained_run, env, tmp_path):
    out = tmp_path / "scores.csv"
    result = one_json(vae("score", "--ckpt", str(trained_run), "--k", "5", "--out", str(out), "--json", env=env))
    rows = read_csv(out)
    assert len(rows) == result["sets"][0]["n"] == 64  # the tiny test split
    assert rows[0]["set"] == "test" and rows[0]["image"] == "test:0" and rows[0]["label"] != ""
    scores = [float(r["neg_iwae"]) for r in rows]
    assert np.mean(scores) == pytest.approx(result["sets"][0]["neg_iwae"], abs=1e-3)
    for r in rows:  # grey MNIST under a Bernoulli: the score is not called -log p(x), no bits/dim
        assert r["nll"] == r["bits_per_dim"] == ""
        assert float(r["elbo"]) == pytest.approx(-float(r["recon"]) - float(r["kl"]), abs=1e-3)
    assert result["bound"] is False and result["sets"][0]["nll"] is None and result["sets"][0]["bits_per_dim"] is None
    # the same seed, k and batches as eval-iwae: the same bound, now per image
    iwae = one_json(vae("eval-iwae", "--ckpt", str(trained_run), "--k", "5", "--json", env=env))
    assert -iwae["iwae"] == pytest.approx(result["sets"][0]["neg_iwae"], rel=1e-6)
    assert result["separation"] is None and result["histogram"] is None


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_score_against_a_foreign_folder_reports_auroc_and_draws_histograms(trained_run, env, tmp_path):
    images, _ = digit_like(40, seed=7)
    inverted = write_pngs(tmp_path / "inverted", 255 - images)  # white digits' negatives: clearly foreign
    hist = tmp_path / "hist.png"
    result = one_json(vae("score", "--ckpt", str(trained_run), "--k", "3", "--against", str(inverted), "--hist",
                          str(hist), "--out", str(tmp_path / "s.csv"), "--json", env=env))
    sep = result["separation"]
    assert sep["auroc"] > 0.9 and sep["aupr"] > sep["aupr_chance"] and not sep["foreign_more_likely"]
    assert [s["n"] for s in result["sets"]] == [64, 40]
    assert Image.open(hist).size[0] > 300
    rows = read_csv(tmp_path / "s.csv")
    assert {r["set"] for r in rows} == {"test", str(inverted)} and len(rows) == 104


@pytest.mark.slow
def test_score_against_another_dataset_at_the_models_shape(trained_run, env, tmp_path):
    result = one_json(vae("score", "--ckpt", str(trained_run), "--k", "2", "--n", "30", "--against",
                          "dataset=shapes dataset.image_size=28", "--out", str(tmp_path / "s.csv"), "--json", env=env))
    assert [s["n"] for s in result["sets"]] == [30, 30]
    assert 0 <= result["separation"]["auroc"] <= 1
    assert_one_line_error(vae("score", "--ckpt", str(trained_run), "--against", "dataset=shapes", env=env), 2,
                          "1x32x32 images and the model takes 1x28x28; try dataset.image_size=28")


@pytest.mark.slow
@pytest.mark.parametrize("model", [["model=ladder", "model.groups=2"],
                                   ["model=vqvae", "model.hidden=[4,8]", "model.code_dim=3", "model.codebook_size=8"],
                                   ["model.conditional=true"]])
def test_score_works_for_every_model_kind(env, tmp_path, model):
    run = tmp_path / "run"
    one_json(vae("train", *TINY, *model, "--run-dir", str(run), "--json", env=env))
    result = one_json(vae("score", "--ckpt", str(run), "--k", "2", "--n", "16", "--against", "train",
                          "--out", str(tmp_path / "s.csv"), "--json", env=env))
    assert all(math.isfinite(s["neg_iwae"]) and s["neg_iwae"] > 0 for s in result["sets"])
    assert len(read_csv(tmp_path / "s.csv")) == 32


def test_score_bad_inputs_are_one_line(trained_run, data_root, tmp_path, capsys, monkeypatch):
    from vaecli.cli import run

    monkeypatch.setenv("VAECLI_DATA", str(data_root))
    (tmp_path / "empty").mkdir()
    ckpt = ["score", "--ckpt", str(trained_run)]

    def refused(*args: str, needle: str) -> None:  # in-process: the same main path, without a new interpreter
        assert run([*ckpt, *args]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0], lines

    refused("--against", str(tmp_path / "empty"), needle="holds no PNG/JPEG")
    refused("--against", "dataset=nope", needle="unknown dataset 'nope'")
    refused("--against", "dataset=mnist beta=4", needle="dataset.KEY=VALUE")
    refused("--against", str(tmp_path / "missing.png"), needle="no image or folder")
    refused("a.png", "--data", "dataset=mnist", needle="not both")
    refused("--out", str(tmp_path / "s.txt"), "--k", "1", needle=".csv")
