"""Every sensible model x likelihood x prior x objective trains a few steps and works with
sample, reconstruct, interpolate and eval-iwae (the CLI run in-process, on tiny shapes)."""

import itertools
import json

import pytest
from PIL import Image

from vaecli.cli import run
from vaecli.config import group_options, load_config
from vaecli.errors import UsageError
from vaecli.training.trainer import fit

TINY_SHAPES = ["dataset=shapes", "dataset.image_size=16", "dataset.scales=1", "dataset.rotations=2",
               "dataset.positions=4", "trainer.epochs=1", "trainer.batch_size=32", "trainer.log_every=1",
               "trainer.eval_batch_size=32"]
SIZES = {"mlp": ["model.hidden=[16]"], "conv": ["model.hidden=[4,8]"], "resnet": ["model.hidden=[4,8]"],
         "ae": ["model.hidden=[16]"], "hvae": ["model.hidden=[16]", "model.latent_dim2=2", "model.hidden2=[8]"],
         "vqvae": ["model.hidden=[4,8]", "model.code_dim=3", "model.codebook_size=8", "model.dead_after=2"],
         "ladder": ["model.hidden=[16]", "model.groups=2"]}
SIZES = {model: sizes + ["model.latent_dim=3"] for model, sizes in SIZES.items()}
# the latent-diffusion autoencoder: its latent is (z_channels, H/f, W/f), here 1 x 8 x 8
SIZES["autoencoder_kl"] = ["model.ch=4", "model.ch_mult=[1,2]", "model.norm_groups=4", "model.z_channels=1"]
EXTRA = {"mog": ["prior.components=3"], "vamp": ["prior.components=3"], "iwae": ["objective.k=3"],
         "perceptual": ["objective.adversarial=true", "objective.disc_start=1", "objective.disc_channels=4",
                        "objective.disc_layers=2"],
         "logistic": ["likelihood.mixtures=2"], "factorvae": ["objective.disc_width=16", "objective.disc_layers=2"]}


def sensible(model: str, prior: str, objective: str) -> bool:
    """The combinations config.validate accepts: an autoencoder has no posterior (so no IWAE)
    and no KL (so no learned prior); the hierarchical model keeps N(0, I) on its top layer;
    btcvae, dipvae, factorvae and infovae split or shape the KL of one Gaussian posterior to N(0, I);
    wae matches the codes of a Gaussian or deterministic (ae) encoder to N(0, I); perceptual compares
    a decoder's mean image (not the ae's: it has no KL, nor the ladder's groups) and a KL to N(0, I);
    the latent-diffusion autoencoder keeps N(0, I) on its spatial latent."""
    if objective == "perceptual":
        return model in ("mlp", "conv", "resnet", "autoencoder_kl") and prior == "normal"
    if model == "autoencoder_kl":
        return prior == "normal"
    if objective in ("btcvae", "dipvae", "factorvae", "infovae"):
        return model in ("mlp", "conv", "resnet") and prior == "normal"
    if objective == "wae":
        return model in ("mlp", "conv", "resnet", "ae") and prior == "normal"
    if model == "ae":
        return prior == "normal" and objective == "elbo"
    if model in ("hvae", "ladder"):  # their top layer keeps N(0, I)
        return prior == "normal"
    if model == "vqvae":  # its prior over codes is its own; the posterior is a point mass
        return prior == "normal" and objective == "elbo"
    return True


def combinations():
    for model, lik, prior, obj in itertools.product(group_options("model"), group_options("likelihood"),
                                                    group_options("prior"), group_options("objective")):
        if not sensible(model, prior, obj):
            continue
        overrides = [f"model={model}", f"likelihood={lik}", f"prior={prior}", f"objective={obj}"]
        overrides += SIZES[model] + EXTRA.get(prior, []) + EXTRA.get(obj, []) + EXTRA.get(lik, [])
        yield pytest.param(overrides, id=f"{model}-{lik}-{prior}-{obj}")


@pytest.mark.slow  # ~16 s: composes every refused combination
def test_the_combinations_left_out_are_refused_with_a_reason():
    for model, prior, obj in itertools.product(group_options("model"), group_options("prior"), group_options("objective")):
        if not sensible(model, prior, obj):
            with pytest.raises(UsageError, match=f"model={model}"):
                load_config([f"model={model}", f"prior={prior}", f"objective={obj}"])


ALL = list(combinations())


def covering(params):
    """A subset in which every model, likelihood, prior and objective appears at least once."""
    seen, chosen = set(), []
    for param in params:
        options = set(param.id.split("-"))
        if not options <= seen:
            chosen.append(param)
            seen |= options
    return chosen


FAST = covering(ALL)


def cli_json(capsys, *args):
    assert run([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("overrides", FAST)
def test_each_option_trains_and_every_command_works(overrides, tmp_path, capsys):
    check_combination(overrides, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [p for p in ALL if p not in FAST])
def test_every_other_combination_trains_and_every_command_works(overrides, tmp_path, capsys):
    check_combination(overrides, tmp_path, capsys)


def check_combination(overrides, tmp_path, capsys):
    composed = load_config(TINY_SHAPES + overrides)
    summary = fit(composed, tmp_path / "run").to_dict()
    assert summary["step"] >= 2 and summary["test_recon"] == summary["test_recon"]  # not NaN
    ckpt = str(tmp_path / "run")
    if composed.cfg.model.name == "vqvae":  # no prior over the codes to sample from (yet)
        assert run(["sample", "--ckpt", ckpt]) == 2 and "no prior over its code grid" in capsys.readouterr().err
    else:
        out = cli_json(capsys, "sample", "--ckpt", ckpt, "--n", "4", "--out", str(tmp_path / "s.png"))
        assert Image.open(out["out"]).size[0] > 0
    out = cli_json(capsys, "reconstruct", "--ckpt", ckpt, "--n", "2", "--out", str(tmp_path / "r.png"))
    assert out["n"] == 2
    out = cli_json(capsys, "interpolate", "test:0", "test:1", "--ckpt", ckpt, "--steps", "3",
                   "--out", str(tmp_path / "i.png"))
    assert Image.open(out["out"]).size == (out["zoom"] * (3 * 16 + 4 * 2), out["zoom"] * (16 + 2 * 2))
    recon = cli_json(capsys, "eval-recon", "--ckpt", ckpt, "--n", "4", "--features", "pixels", "--lpips-weights", "none")
    assert recon["n"] == 4 and recon["psnr"] > 0 and recon["lpips"] is None and "skipped" in recon["lpips_missing"]
    if composed.cfg.objective.name == "perceptual":
        assert summary["bound"] is False and "not a likelihood" in summary["measure"]
    if composed.cfg.model.name == "ae":
        assert run(["eval-iwae", "--ckpt", ckpt, "--k", "3", "--n", "4"]) == 2
        assert "deterministic autoencoder" in capsys.readouterr().err
    else:
        result = cli_json(capsys, "eval-iwae", "--ckpt", ckpt, "--k", "4", "--n", "4")
        assert result["iwae"] == result["iwae"] and result["n"] == 4  # finite, not NaN
        exact = composed.cfg.prior.name == "normal" and composed.cfg.model.name not in ("hvae", "ladder")
        assert result["kl_exact"] is exact and summary["kl_exact"] is exact


@pytest.mark.parametrize("model", ["mlp", "conv", "hvae"])
def test_conditional_models_sample_one_row_per_class_and_by_label(model, tmp_path, capsys):
    composed = load_config(TINY_SHAPES + [f"model={model}", "model.conditional=true"] + SIZES[model])
    fit(composed, tmp_path / "run")
    ckpt = str(tmp_path / "run")
    grid = cli_json(capsys, "sample", "--ckpt", ckpt, "--n", "5", "--out", str(tmp_path / "all.png"))
    assert grid["label"] == "all" and grid["n"] == 15  # 3 shapes x 5
    assert Image.open(grid["out"]).size == (grid["zoom"] * (5 * 16 + 6 * 2), grid["zoom"] * (3 * 16 + 4 * 2))
    one = cli_json(capsys, "sample", "--ckpt", ckpt, "--n", "4", "--label", "2", "--out", str(tmp_path / "2.png"))
    assert one["label"] == 2 and one["n"] == 4
    assert run(["sample", "--ckpt", ckpt, "--label", "7"]) == 2
    assert "--label must be a class index 0..2 or all" in capsys.readouterr().err
    cli_json(capsys, "eval-iwae", "--ckpt", ckpt, "--k", "3", "--n", "4")
    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    assert run(["interpolate", str(tmp_path / "a.png"), "test:0", "--ckpt", ckpt, "--out", str(tmp_path / "i.png")]) == 2
    assert "--label" in capsys.readouterr().err
    cli_json(capsys, "interpolate", str(tmp_path / "a.png"), "test:0", "--ckpt", ckpt, "--label", "1",
             "--out", str(tmp_path / "i.png"))
