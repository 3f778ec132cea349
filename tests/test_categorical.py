"""Categorical latents (models/categorical.py): the exact KL against a direct sum, the
importance-weighted bound against an exact log p(x), the relaxation while training and hard codes
when evaluating, the temperature schedule, every command, and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, assert_one_line_error, one_json, vae, whole_and_resumed

from vaecli.models import build, from_flat


def tiny(n=2, k=3, **extra):
    torch.manual_seed(0)
    return build(from_flat("mlp", (1, 2, 2), latent_dim=n, hidden=[8], kind="categorical", categories=k, levels=2,
                         **extra))


def test_the_kl_to_the_uniform_prior_is_the_direct_sum_over_every_code():
    model = tiny(n=2, k=3).eval()
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    q = model.encode(x)
    probs = q.log_probs.exp()[0]  # (N, K)
    direct = 0.0
    for code in itertools.product(range(3), repeat=2):
        q_z = probs[0, code[0]] * probs[1, code[1]]
        direct += q_z * (torch.log(q_z) - math.log(1 / 9))
    assert model.kl(x).item() == pytest.approx(direct.item(), rel=1e-5)


def test_the_importance_weighted_bound_approaches_the_exact_log_likelihood():
    model = tiny(n=1, k=3).eval()
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    codes = F.one_hot(torch.arange(3), 3).float()  # every value of the single variable
    with torch.no_grad():
        exact = (torch.logsumexp(model.decode(codes).log_prob(x.expand(3, -1, -1, -1)), 0) - math.log(3)).item()
        torch.manual_seed(0)
        log_w, _ = model.log_weights(x, 4000)
    bound = (torch.logsumexp(log_w, 0) - math.log(4000)).item()
    elbo = log_w.mean().item()
    assert elbo <= exact + 1e-4 and exact - 0.01 <= bound <= exact + 0.01


def test_training_relaxes_the_codes_and_evaluation_draws_hard_ones():
    model = tiny(n=2, k=4, anneal_rate=0.1, temperature=1.0, temperature_min=0.3)
    x = (torch.rand(5, 1, 2, 2) > 0.5).float()
    model.train()
    soft = model.encode(x).rsample()
    assert soft.shape == (5, 8) and torch.allclose(soft.view(5, 2, 4).sum(-1), torch.ones(5, 2))
    assert ((soft > 0.001) & (soft < 0.999)).any()  # relaxed, not one-hot
    for _ in range(30):
        model.terms(x)
    assert int(model.passes) == 30 and model.temperature().item() == pytest.approx(max(0.3, math.exp(-3.0)))
    model.eval()
    model.terms(x)
    assert int(model.passes) == 30  # evaluation does not anneal
    hard = model.encode(x).rsample((7,))
    assert hard.shape == (7, 5, 8) and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.view(7, 5, 2, 4).sum(-1), torch.ones(7, 5, 2))


def test_categorical_latents_resume_bit_exactly(tmp_path):
    whole, split = whole_and_resumed(tmp_path, ["dataset.image_size=16", "model.latent=categorical", "model.latent_dim=4",
                                                "model.categories=3", "model.anneal_rate=0.01"])
    assert int(whole["passes"]) > 0 and all(torch.equal(whole[k], split[k]) for k in whole)

@pytest.mark.slow  # ~20 s of subprocess commands; the fast suite keeps the maths
def test_categorical_latents_through_every_command(env, tmp_path):
    run = tmp_path / "cat"
    summary = one_json(vae("train", *TINY, "dataset=binarized_mnist", "model.latent=categorical", "model.latent_dim=6",
                           "model.categories=4", "--run-dir", str(run), "--json", env=env))
    assert summary["kl_exact"] is True and len(summary["kl_per_dim"] or []) in (0, 6)
    assert summary["test_kl"] <= 6 * math.log(4) + 1e-6 and summary["bound"] is True
    bound = one_json(vae("eval-iwae", "--ckpt", str(run), "--k", "1,20", "--n", "16", "--json", env=env))
    assert bound["iwae"] >= bound["elbo"] - 3 * bound["elbo_se"] and bound["bits_per_dim"] > 0
    traversed = one_json(vae("traverse", "--ckpt", str(run), "--dims", "3", "--steps", "4", "--out",
                             str(tmp_path / "t.png"), "--json", env=env))
    assert len(traversed["dims"]) == 3 and traversed["ordered_by"].startswith("entropy")
    for command in (["sample", "--n", "4"], ["reconstruct", "--n", "3"], ["interpolate", "test:0", "test:1", "--steps", "3"],
                    ["latent-plot", "--n", "32"]):
        out = tmp_path / f"{command[0]}.png"
        one_json(vae(*command, "--ckpt", str(run), "--out", str(out), "--json", env=env))
        assert out.is_file()


@pytest.mark.parametrize("overrides, needle", [
    (["model.categories=1"], "model.categories must be >= 2"),
    (["model.temperature=0"], "model.temperature must be > 0"),
    (["model.temperature_min=2"], "model.temperature_min must be in (0, model.temperature]"),
    (["objective=iwae"], "use objective=elbo"),
    (["posterior=iaf"], "has its own posterior"),
])
def test_bad_categorical_settings_are_refused_in_one_line(env, tmp_path, overrides, needle):
    result = vae("train", *TINY, "model.latent=categorical", *overrides, "--run-dir", str(tmp_path / "r"), env=env)
    assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "r").exists()
