"""Flow posteriors (models/posteriors.py): log-determinants against autograd Jacobians, the
autoregressive structure of IAF, densities known at the posterior's own samples, and every
command through the CLI on a tiny flow VAE."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, assert_one_line_error, one_json, vae, whole_and_resumed

from vaecli.evaluation import evaluate
from vaecli.models import build, from_flat, posteriors


def test_iaf_log_determinant_is_that_of_its_jacobian_and_the_jacobian_is_triangular():
    torch.manual_seed(0)
    for reverse in (False, True):
        step = posteriors.IAFStep(4, 16, 5, reverse=reverse)
        for p in step.parameters():  # away from the zero initialisation, so every term matters
            torch.nn.init.normal_(p, std=0.5)
        h, z = torch.randn(5), torch.randn(4)
        jacobian = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], z)
        assert step(z, h)[1].item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-5)
        order = torch.arange(4).flip(0) if reverse else torch.arange(4)
        permuted = jacobian[order][:, order]  # rows and columns in the step's autoregressive order
        assert torch.allclose(permuted.triu(1), torch.zeros(4, 4), atol=1e-6)  # output d sees no input >= d but itself


def test_planar_log_determinant_is_that_of_its_jacobian_and_the_step_stays_invertible():
    torch.manual_seed(0)
    u, w, b = torch.randn(3), torch.randn(3), torch.randn(1)
    u = u - 3 * w / w.square().sum()  # w.u < -1: invertible only through the u' correction
    step = posteriors.planar_step(u, w, b)
    for _ in range(5):
        z = 2 * torch.randn(3)
        jacobian = torch.autograd.functional.jacobian(lambda v: step(v)[0], z)
        sign, logdet = torch.linalg.slogdet(jacobian)
        assert sign.item() > 0 and step(z)[1].item() == pytest.approx(logdet.item(), abs=1e-5)


@pytest.mark.parametrize("posterior, extra", [("iaf", {"flows": 3, "flow_hidden": 16}), ("planar", {"flows": 4})])
def test_a_flow_posterior_density_is_the_base_minus_the_log_determinants(posterior, extra):
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=3, hidden=[16], posterior=posterior, **extra))
    x = (torch.rand(4, 1, 6, 6) > 0.5).float()
    q = model.encode(x)
    torch.manual_seed(1)
    z = q.rsample((5,))
    assert z.shape == (5, 4, 3) and q.log_prob(z).shape == (5, 4)
    # by hand, from the same noise: the base draw pushed through each step, less each log-determinant
    torch.manual_seed(1)
    total = q.base.rsample((5,))
    log_q = q.base.log_prob(total)
    for step in q.steps:
        total, log_det = step(total)
        log_q = log_q - log_det
    assert torch.allclose(total, z) and torch.allclose(log_q, q.log_prob(z))
    with pytest.raises(ValueError, match="its own samples"):
        q.log_prob(torch.zeros(4, 3))
    assert model.posterior == "flow" and not model.exact_kl
    terms = model.terms(x)
    assert terms["kl_per_dim"] is None and terms["kl"].shape == (4,)


def test_a_flow_posterior_trains_and_its_bound_is_a_bound():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=2, hidden=[32], posterior="iaf", flows=2, flow_hidden=16,
                          levels=2))
    from vaecli.data import ImageSet

    data = ImageSet((torch.rand(64, 1, 6, 6) > 0.5).to(torch.uint8) * 255, levels=2)
    result = evaluate.iwae_dataset(model, data, [1, 100])
    assert result["bound"] and result["iwae"] >= result["elbo"] - 3 * result["elbo_se"]
    assert result["active_units"] is not None and result["mutual_info"] is None and result["kl_per_dim"] is None


@pytest.mark.slow  # real subprocess runs of every command (~20 s): the fast suite keeps the maths tests
def test_flow_posteriors_through_every_command(env, tmp_path):
    run = tmp_path / "iaf"
    summary = one_json(vae("train", *TINY, "posterior=iaf", "posterior.flows=2", "posterior.hidden=16",
                           "--run-dir", str(run), "--json", env=env))
    assert summary["kl_exact"] is False and summary["kl_per_dim"] is None and math.isfinite(summary["test_elbo"])
    bound = one_json(vae("eval-iwae", "--ckpt", str(run), "--k", "10", "--n", "16", "--json", env=env))
    assert bound["mutual_info"] is None and bound["active_units"] is not None
    for command in (["sample", "--n", "4"], ["reconstruct", "--n", "3"], ["interpolate", "test:0", "test:1", "--steps", "3"],
                    ["traverse", "--dims", "2", "--steps", "3"], ["latent-plot", "--n", "32"]):
        out = tmp_path / f"{command[0]}.png"
        one_json(vae(*command, "--ckpt", str(run), "--out", str(out), "--json", env=env))
        assert out.is_file()
    scored = one_json(vae("score", "--ckpt", str(run), "--k", "5", "--n", "8", "--out", str(tmp_path / "s.csv"),
                          "--json", env=env))
    assert math.isfinite(scored["sets"][0]["neg_iwae"])


def test_flow_posteriors_resume_bit_exactly(tmp_path):
    whole, split = whole_and_resumed(tmp_path, ["dataset.image_size=16", "posterior=planar", "posterior.flows=2"])
    assert all(torch.equal(whole[k], split[k]) for k in whole)

@pytest.mark.parametrize("overrides, needle", [
    (["posterior=iaf", "model=vqvae"], "posterior=iaf is for the flat VAEs"),
    (["posterior=planar", "model=ladder"], "posterior=planar is for the flat VAEs"),
    (["posterior=iaf", "posterior.flows=0"], "posterior.flows must be >= 1"),
    (["posterior=planar", "kl.free_bits=0.5"], "posterior=gaussian"),
    # the VampPrior evaluates q at its pseudo-inputs' codes: a flow's density is known at its own samples only
    (["posterior=iaf", "prior=vamp"], "prior=vamp evaluates the posteriors of its pseudo-inputs at any z"),
    (["posterior=planar", "prior=vamp"], "posterior=planar has a density only at its own samples"),
])
def test_flows_where_they_make_no_sense_are_refused_in_one_line(env, tmp_path, overrides, needle):
    assert_one_line_error(vae("train", *TINY, *overrides, "--run-dir", str(tmp_path / "r"), env=env), 2, needle)
    assert not (tmp_path / "r").exists()
