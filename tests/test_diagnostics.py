"""Evaluation diagnostics and pictures on cases with known answers."""

import json
import math

import pytest
import torch
from PIL import Image

from vaecli.runtime import checkpoint
from vaecli.evaluation import evaluate
from vaecli.cli import run
from vaecli.config import load_config
from vaecli.data import ImageSet
from vaecli.evaluation.disentanglement import mig
from vaecli.models import build, from_flat
from vaecli.training.trainer import fit


def tiny_images(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 6, 6, generator=g) > 0.5).to(torch.uint8) * 255
    return ImageSet(images, torch.randint(0, 3, (n,), generator=g), num_classes=3)


def collapsed_model():
    """q(z|x) = N(0, I) = p(z) for every x: the encoder head outputs zeros."""
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=4, hidden=[16]))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def test_a_collapsed_model_has_no_active_units_no_information_and_says_so():
    model, data = collapsed_model(), tiny_images()
    kl = model.kl(data.to_float(data.images)).mean().item()
    assert kl == pytest.approx(0.0, abs=1e-6)
    d = evaluate.latent_diagnostics(model, data, kl)
    assert d["active_units"] == 0 and d["collapsed"] is True
    assert abs(d["mutual_info"]) < 0.05
    assert d["kl_per_dim"] == pytest.approx([0.0] * 4, abs=1e-6)


@pytest.mark.parametrize("kl, active, expected", [
    (0.0, 0, True),
    (0.15, 4, True),  # a PixelCNN-decoder VAE trained plainly: 4 units over Burda's threshold, 0.15 nats in all
    (0.68, 20, True),  # under one bit about each image
    (0.70, 1, False),  # one bit: a binary factor can be coded
    (5.0, 0, True),  # KL spent on no unit that varies with x
])
def test_collapse_means_less_than_one_bit_about_each_image_or_no_active_unit(kl, active, expected):
    assert evaluate.collapsed(kl, active) is expected


def test_mutual_information_reaches_log_n_for_a_code_that_identifies_every_image():
    loc = torch.arange(300, dtype=torch.float64).view(-1, 1) * torch.ones(1, 2)
    scale = torch.full_like(loc, 1e-3)
    assert evaluate.mutual_information(loc, scale) == pytest.approx(math.log(300), abs=1e-6)
    assert evaluate.mutual_information(torch.zeros(300, 2, dtype=torch.float64), torch.ones(300, 2, dtype=torch.float64)) \
        == pytest.approx(0.0, abs=1e-9)


def test_a_saturated_mutual_information_makes_the_aggregate_kl_an_upper_estimate():
    """Codes far apart with tiny posteriors identify every image: I(x; z) reads log N, and
    KL - I is then only an upper estimate (the true I can be larger); a collapsed code is not."""
    torch.manual_seed(0)
    model, data = build(from_flat("mlp", (1, 6, 6), latent_dim=4, hidden=[16])), tiny_images()
    with torch.no_grad():
        model.head.weight.mul_(50)  # posterior means spread far apart ...
        model.head.bias[4:].fill_(-20)  # ... and sigma = e^-10
    kl = model.kl(data.to_float(data.images)).mean().item()
    d = evaluate.latent_diagnostics(model, data, kl)
    assert d["mutual_info"] > math.log(400) - evaluate.SATURATION_MARGIN and d["mutual_info_max"] == math.log(400)
    assert d["mutual_info_saturated"] is True and d["agg_posterior_kl_upper"] is True
    flat = evaluate.latent_diagnostics(collapsed_model(), data, 0.0)
    assert flat["mutual_info_saturated"] is False and flat["agg_posterior_kl_upper"] is False


def test_aggregate_posterior_kl_is_mean_kl_minus_mutual_information():
    torch.manual_seed(0)
    model, data = build(from_flat("mlp", (1, 6, 6), latent_dim=3, hidden=[16])), tiny_images()
    result = evaluate.iwae_dataset(model, data, [1, 10, 100], batch_size=50)
    assert result["agg_posterior_kl"] == pytest.approx(result["kl"] - result["mutual_info"])
    assert result["agg_posterior_kl"] >= -0.05  # a KL, up to estimation noise
    assert len(result["kl_per_dim"]) == 3 and sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-6)
    bounds = [result["iwae_by_k"][k]["iwae"] for k in ("1", "10", "100")]
    assert bounds[0] < bounds[1] < bounds[2]  # the bound tightens with k
    assert result["iwae"] == bounds[2] and result["k"] == 100


def test_active_units_count_dimensions_whose_posterior_mean_varies():
    loc = torch.zeros(100, 4, dtype=torch.float64)
    loc[:, 1] = torch.linspace(-1, 1, 100)  # variance ~0.34 > 0.01
    loc[:, 3] = torch.linspace(-0.1, 0.1, 100)  # variance ~0.0034 < 0.01
    count, variance = evaluate.active_units(loc)
    assert count == 1 and variance[1] > 0.01 > variance[3]


def test_mig_is_near_one_for_a_code_that_copies_the_factors_and_near_zero_for_noise():
    g = torch.Generator().manual_seed(0)
    factors = torch.stack([torch.randint(0, k, (4000,), generator=g) for k in (3, 6, 8)], 1)
    copy = torch.cat([factors.double() + 0.01 * torch.randn(4000, 3, generator=g, dtype=torch.float64),
                      torch.randn(4000, 2, generator=g, dtype=torch.float64)], 1)
    assert mig(copy, factors)["mig"] > 0.95
    assert mig(torch.randn(4000, 5, generator=g, dtype=torch.float64), factors)["mig"] < 0.05
    result = mig(copy, factors, ["a", "b", "c"])
    assert [row["top_dim"] for row in result["factors"]] == [0, 1, 2]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("diag") / "run"
    fit(load_config(["dataset=shapes", "dataset.image_size=16", "dataset.rotations=2", "dataset.positions=4",
                     "model.latent_dim=2", "model.hidden=[32]", "trainer.epochs=2", "trainer.log_every=5"]), run_dir)
    return run_dir


def cli_json(capsys, *args):
    assert run([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def test_training_logs_active_units_and_kl_per_dim_each_epoch(shapes_run):
    tests = [json.loads(line) for line in (shapes_run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "test"]
    assert len(tests) == 2
    assert all(0 <= r["active_units"] <= 2 and len(r["kl_per_dim"]) == 2 for r in tests)


def test_eval_iwae_reports_the_diagnostics(shapes_run, capsys):
    result = cli_json(capsys, "eval-iwae", "--ckpt", str(shapes_run), "--k", "1,20", "--n", "64")
    for key in ("active_units", "kl_per_dim", "mutual_info", "agg_posterior_kl", "collapsed"):
        assert key in result
    assert set(result["iwae_by_k"]) == {"1", "20"} and result["k"] == 20


def test_eval_iwae_says_posterior_collapse_plainly(tmp_path, capsys, shapes_run):
    loaded = checkpoint.load_model(shapes_run)
    with torch.no_grad():
        loaded.model.head.weight.zero_()
        loaded.model.head.bias.zero_()
    checkpoint.save_model(tmp_path / "model.safetensors", loaded.model, loaded.dataset, 0, 0, 0)
    assert run(["eval-iwae", "--ckpt", str(tmp_path), "--k", "5", "--n", "64", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["collapsed"] is True and result["active_units"] == 0
    assert "posterior collapse" in captured.err and "kl.free_bits" in captured.err


def test_traverse_writes_one_row_per_dimension(shapes_run, tmp_path, capsys):
    result = cli_json(capsys, "traverse", "--ckpt", str(shapes_run), "--dims", "all", "--steps", "5",
                      "--out", str(tmp_path / "t.png"))
    assert sorted(result["dims"]) == [0, 1] and result["ordered_by"] == "kl"
    assert result["scores"] == sorted(result["scores"], reverse=True)
    z = result["zoom"]  # 16 px images are enlarged 7x by default
    assert z == 7 and png(tmp_path / "t.png") == ("PNG", (z * (5 * 16 + 6 * 2), z * (2 * 16 + 3 * 2)))
    one = cli_json(capsys, "traverse", "--ckpt", str(shapes_run), "--image", "test:0", "--dims", "1", "--zoom", "1",
                   "--out", str(tmp_path / "t1.png"))
    assert len(one["dims"]) == 1 and png(tmp_path / "t1.png")[1] == (9 * 16 + 10 * 2, 16 + 2 * 2)


@pytest.mark.parametrize("method", ["auto", "pca", "tsne"])
def test_latent_plot_writes_a_scatter_and_for_2d_the_manifold(shapes_run, tmp_path, capsys, method):
    result = cli_json(capsys, "latent-plot", "--ckpt", str(shapes_run), "--n", "100", "--method", method,
                      "--out", str(tmp_path / "l.png"))
    assert result["method"] == {"auto": "direct", "pca": "pca", "tsne": "tsne"}[method]
    assert png(tmp_path / "l.png")[0] == "PNG"
    assert png(result["manifold"])[1] == (result["zoom"] * (20 * 16 + 21 * 2),) * 2
    assert result["zoom"] == 2048 // (20 * 16 + 21 * 2)  # the 20 x 20 grid kept under 2048 px


def test_plot_metrics_and_its_errors(shapes_run, tmp_path, capsys):
    result = cli_json(capsys, "plot-metrics", str(shapes_run), "--out", str(tmp_path / "m.png"))
    assert result["records"] > 2 and png(tmp_path / "m.png")[0] == "PNG"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text("{not json\n")
    assert run(["plot-metrics", str(tmp_path / "bad")]) == 2
    assert "is not a JSON line" in capsys.readouterr().err


def test_eval_disentanglement_on_shapes_and_refused_elsewhere(shapes_run, capsys, trained_run, data_root, monkeypatch):
    result = cli_json(capsys, "eval-disentanglement", "--ckpt", str(shapes_run), "--points", "60")
    assert 0 <= result["mig"] <= 1 and [row["name"] for row in result["factors"]] == \
        ["shape", "scale", "rotation", "pos_x", "pos_y"]
    assert result["n"] == 3 * 4 * 2 * 4 * 4
    assert 0 <= result["dci"]["disentanglement"] <= 1 and 0 <= result["sap"]["sap"] <= 1
    assert 0 <= result["factor_vae"]["eval_accuracy"] <= 1 and 0 <= result["beta_vae"]["eval_accuracy"] <= 1
    listed = cli_json(capsys, "runs", str(shapes_run.parent))["runs"][0]
    assert listed["mig"] == result["mig"] and listed["factor_metrics"]["dci"] == result["dci"]["disentanglement"]
    only = cli_json(capsys, "eval-disentanglement", "--ckpt", str(shapes_run), "--metrics", "sap", "--points", "60")
    assert "mig" not in only and set(only) >= {"sap"} and "dci" not in only
    assert run(["eval-disentanglement", "--ckpt", str(shapes_run), "--metrics", "mig,dcx"]) == 2
    assert "--metrics takes a comma-separated list" in capsys.readouterr().err
    monkeypatch.setenv("VAECLI_DATA", str(data_root))
    assert run(["eval-disentanglement", "--ckpt", str(trained_run)]) == 2
    assert "dataset=shapes" in capsys.readouterr().err
