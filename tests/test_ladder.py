"""model=ladder, the top-down hierarchical VAE: its KL and importance weights against an
independent computation with torch.distributions, free bits per group, and every command on a
tiny ladder run (in-process CLI and a real subprocess)."""

import json
import math

import pytest
import torch
from PIL import Image
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaecli.runtime import checkpoint
from vaecli import objectives
from vaecli.cli import run
from vaecli.config import load_config
from vaecli.models import build, from_flat

from conftest import assert_one_line_error, one_json, vae

TINY = ["dataset=shapes", "dataset.scales=2", "dataset.rotations=2", "dataset.positions=6", "model=ladder",
        "model.hidden=[32]", "model.latent_dim=3", "model.groups=3", "trainer.batch_size=32", "trainer.log_every=3",
        "trainer.sample_every=0"]


def tiny_ladder(groups=3, seed=0):
    torch.manual_seed(seed)
    model = build(from_flat(arch="mlp", image_shape=(1, 4, 4), latent_dim=2, hidden=[8], kind="ladder", groups=groups,
                          activation="elu"))
    with torch.no_grad():  # away from the zero initialisation, so every group's posterior and prior differ
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def by_hand(model, x, z):
    """log p(x, z) - log q(z|x) for one joint sample z = [z_1 (top), ..., z_G], computed with
    torch.distributions from the model's networks, group by group."""
    features = model.bottom_up(x, None)
    h = model.h0.expand(x.shape[0], -1)
    log_p = log_q = 0.0
    kls = []
    for t, z_t in enumerate(z):
        if t == 0:
            prior = Normal(torch.zeros_like(z_t), torch.ones_like(z_t))
        else:
            loc, log_scale = model.prior_heads[t - 1](h).chunk(2, -1)
            prior = Normal(loc, log_scale.exp())
        d_loc, d_log_scale = model.posterior_out[t](model.posterior_h[t](h) + features[t]).chunk(2, -1)
        posterior = Normal(prior.loc + d_loc, prior.scale * d_log_scale.exp())
        log_p = log_p + prior.log_prob(z_t).sum(-1)
        log_q = log_q + posterior.log_prob(z_t).sum(-1)
        kls.append(kl_divergence(posterior, prior).sum(-1))
        h = model.down[t](h + model.z_in[t](z_t))
    log_px = Bernoulli(logits=model.decoder(h)).log_prob(x).flatten(1).sum(-1)
    return log_px + log_p - log_q, log_px, torch.stack(kls, -1)


def test_importance_weights_match_an_independent_computation():
    model = tiny_ladder()
    x = (torch.rand(5, 1, 4, 4) > 0.5).float()
    k = 7
    torch.manual_seed(3)
    with torch.no_grad():
        log_w, log_px = model.log_weights(x, k)
    torch.manual_seed(3)  # the same draws, top-down over the k * B rows
    _, record = model.top_down(model.bottom_up(x, None), None, (k, 5))
    z = [z_t.reshape(k * 5, -1) for z_t in record.z]
    expected, expected_px, _ = by_hand(model, x.repeat(k, 1, 1, 1), z)
    torch.testing.assert_close(log_w, expected.view(k, 5), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_px, expected_px.view(k, 5), rtol=1e-5, atol=1e-4)


def test_the_top_group_is_computed_once_per_image_with_the_same_draws():
    """eval-iwae's k samples of an image share the top group's prior and posterior: computed on
    the B images, not the k * B rows, with the same random numbers and results as per row."""
    model = tiny_ladder()
    x = (torch.rand(5, 1, 4, 4) > 0.5).float()
    k = 4
    with torch.no_grad():
        features = model.bottom_up(x, None)
        torch.manual_seed(3)
        h, record = model.top_down(features, None, (k, 5))
        torch.manual_seed(3)  # features repeated per sample: the top group computed on every row
        h_rows, rows = model.top_down([f.expand(k, *f.shape) for f in features], None, (k, 5))
    assert record.q[0][0].shape == (5, 2) and rows.q[0][0].shape == (k, 5, 2)
    torch.testing.assert_close(h, h_rows)
    for z, z_rows in zip(record.z, rows.z):
        torch.testing.assert_close(z, z_rows)


def test_the_kl_of_each_group_is_closed_form_given_the_groups_above():
    model = tiny_ladder()
    x = (torch.rand(6, 1, 4, 4) > 0.5).float()
    torch.manual_seed(5)
    terms = model.terms(x)
    torch.manual_seed(5)
    _, record = model.top_down(model.bottom_up(x, None), None, (6,))
    _, log_px, kls = by_hand(model, x, record.z)
    torch.testing.assert_close(terms["kl_groups"], kls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["kl"], kls.sum(-1))
    torch.testing.assert_close(terms["log_px"], log_px, rtol=1e-5, atol=1e-4)
    assert (kls > 0).all()
    # and on average it is the Monte Carlo KL: E_q[log q - log p] over fresh draws of every group
    torch.manual_seed(0)
    with torch.no_grad():
        xs = x[:1].expand(20000, -1, -1, -1)
        log_w, log_px = model.log_weights(x[:1], 20000)
        mc = (log_px - log_w)[:, 0]
        closed = model.terms(xs)["kl"]
    se = math.sqrt(mc.var().item() / mc.numel() + closed.var().item() / closed.numel())
    assert abs(mc.mean().item() - closed.mean().item()) < 4 * se
    assert closed.var() < mc.var()  # the closed form per group is the lower-variance estimate


def test_free_bits_apply_per_group():
    model = tiny_ladder()
    x = (torch.rand(6, 1, 4, 4) > 0.5).float()
    torch.manual_seed(1)
    kls = model.terms(x)["kl_groups"].mean(0)
    torch.manual_seed(1)
    _, metrics = objectives.elbo(model, x, free_bits=2.0)
    expected = kls.clamp(min=2.0 * 2).sum()  # lambda per unit times 2 units per group
    assert metrics["kl_clamped"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["kl_clamped"] > metrics["kl"]


def test_sampling_uses_a_temperature_per_group():
    model = tiny_ladder()
    g = torch.Generator().manual_seed(0)
    cold = model.sample(4, temperature=[1e-6, 1e-6, 1e-6], generator=g)
    again = model.sample(4, temperature=[1e-6, 1e-6, 1e-6], generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(cold, again, atol=1e-4, rtol=0)  # every group at its prior mean
    warm = model.sample(4, temperature=[1e-6, 1e-6, 1.0], generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(cold, warm, atol=1e-4)  # the bottom group alone varies the images
    with pytest.raises(ValueError, match="3 latent groups"):
        model.sample(2, temperature=[1.0, 1.0])


def test_ladder_config_rules():
    from vaecli.errors import UsageError

    with pytest.raises(UsageError, match="model.groups must be >= 1"):
        load_config(["model=ladder", "model.groups=0"])
    with pytest.raises(UsageError, match="model=ladder has its own hierarchical prior"):
        load_config(["model=ladder", "prior=vamp"])
    assert load_config(["model=ladder", "kl.free_bits=0.25"]).cfg.kl.free_bits == 0.25


def cli_json(capsys, *args):
    assert run([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_every_command_on_a_tiny_ladder_run(tmp_path, capsys):
    ckpt = str(tmp_path / "run")
    summary = cli_json(capsys, "train", *TINY, "trainer.epochs=2", "trainer.ema=0.9", "--run-dir", ckpt)
    assert len(summary["kl_per_group"]) == 3 and len(summary["active_per_group"]) == 3
    assert summary["latent_dim"] == 9 and summary["test_kl"] == pytest.approx(sum(summary["kl_per_group"]), rel=1e-4)
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert {"kl_group1", "kl_group2", "kl_group3"} <= set(lines[0])
    grid = cli_json(capsys, "sample", "--ckpt", ckpt, "--n", "6", "--temperature", "1,0.7,0.5",
                    "--out", str(tmp_path / "s.png"))
    assert grid["temperature"] == [1.0, 0.7, 0.5] and Image.open(grid["out"]).size[0] > 32
    assert run(["sample", "--ckpt", ckpt, "--temperature", "1,0.5"]) == 2
    assert "takes 3 latent groups" in capsys.readouterr().err
    recon = cli_json(capsys, "reconstruct", "--ckpt", ckpt, "--n", "3", "--out", str(tmp_path / "r.png"))
    assert recon["n"] == 3 and recon["mean_neg_elbo"] > 0
    strip = cli_json(capsys, "interpolate", "test:0", "test:1", "--ckpt", ckpt, "--steps", "4", "--slerp",
                     "--out", str(tmp_path / "i.png"))
    assert Image.open(strip["out"]).size[0] == strip["zoom"] * (4 * 32 + 5 * 2)
    bound = cli_json(capsys, "eval-iwae", "--ckpt", ckpt, "--k", "1,20", "--n", "16")
    assert bound["iwae_by_k"]["20"]["iwae"] >= bound["iwae_by_k"]["1"]["iwae"] - 1.0
    assert len(bound["kl_per_group"]) == 3 and bound["latent_dim"] == 9 and 0 <= bound["active_groups"] <= 3
    assert abs(bound["elbo"] + bound["recon"] + bound["kl"]) < 1e-3 and bound["mutual_info"] is None
    traversed = cli_json(capsys, "traverse", "--ckpt", ckpt, "--dims", "2", "--out", str(tmp_path / "t.png"))
    assert len(traversed["dims"]) == 2 and max(traversed["dims"]) < 3  # dimensions of the top group
    plot = cli_json(capsys, "latent-plot", "--ckpt", ckpt, "--n", "40", "--out", str(tmp_path / "l.png"))
    assert plot["latent_dim"] == 3
    model = checkpoint.load_model(ckpt).model
    assert model.groups == 3 and model.layers == 3 and not model.exact_kl


@pytest.mark.parametrize("network", ["conv", "resnet"])
def test_convolutional_ladders_train_and_bound(tmp_path, capsys, network):
    ckpt = str(tmp_path / network)
    hidden = "[8,16]" if network == "conv" else "[4,8]"
    cli_json(capsys, "train", *TINY, f"model.network={network}", f"model.hidden={hidden}", "trainer.epochs=1",
             "--run-dir", ckpt)
    model = checkpoint.load_model(ckpt).model
    assert model.convolutional and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    bound = cli_json(capsys, "eval-iwae", "--ckpt", ckpt, "--k", "4", "--n", "8")
    assert math.isfinite(bound["iwae"]) and bound["iwae"] < 0


def test_a_conditional_ladder_samples_one_row_per_class(tmp_path, capsys):
    ckpt = str(tmp_path / "c")
    cli_json(capsys, "train", *TINY, "model.conditional=true", "trainer.epochs=1", "--run-dir", ckpt)
    grid = cli_json(capsys, "sample", "--ckpt", ckpt, "--n", "2", "--out", str(tmp_path / "s.png"))
    assert grid["n"] == 2 * checkpoint.load_model(ckpt).model.num_classes


@pytest.mark.slow  # ~6 s of subprocess commands; the combinations test trains the ladder in-process
def test_the_ladder_through_the_real_cli(tmp_path, env):
    ckpt = str(tmp_path / "run")
    summary = one_json(vae("train", *TINY, "trainer.epochs=1", "--run-dir", ckpt, "--json", env=env))
    assert summary["kl_per_group"] is not None
    result = vae("eval-iwae", "--ckpt", ckpt, "--k", "5", "--n", "8", env=env)
    assert result.returncode == 0 and "KL per group" in result.stdout and "active groups" in result.stdout
    assert_one_line_error(vae("sample", "--ckpt", ckpt, "--temperature", "1,x", env=env), 2, "--temperature")
