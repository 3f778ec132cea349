"""Model and objective properties: shapes, KL >= 0, the IWAE bound, likelihoods, latent paths."""

import math

import pytest
import torch
from torch.distributions import kl_divergence

from vaecli.evaluation import latent
from vaecli import objectives
from vaecli.models import build, from_flat

SHAPES = [("mlp", (1, 28, 28), [64]), ("conv", (1, 28, 28), [8, 16]), ("conv", (3, 32, 32), [8, 16]),
          ("conv", (1, 7, 9), [4])]


@pytest.mark.parametrize("arch, shape, hidden", SHAPES)
def test_shapes_of_posterior_likelihood_samples_and_reconstructions(arch, shape, hidden):
    torch.manual_seed(0)
    model = build(from_flat(arch, shape, latent_dim=5, hidden=hidden))
    x = torch.rand(6, *shape)
    q = model.encode(x)
    assert q.batch_shape == (6,) and q.event_shape == (5,)
    p = model.decode(q.rsample())
    assert p.batch_shape == (6,) and p.event_shape == shape
    assert p.log_prob(x).shape == (6,)
    assert model.decode(torch.randn(3, 6, 5)).batch_shape == (3, 6)  # extra leading dims
    assert model.sample(7).shape == (7, *shape)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1


def test_classic_mlp_has_the_784_400_20_shape():
    model = build(from_flat("mlp", (1, 28, 28)))
    linear = [m for m in [*model.encoder.modules(), model.head] if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 400), (400, 40)]  # mu, logvar


def test_kl_is_nonnegative_and_zero_when_posterior_equals_prior():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 28, 28), latent_dim=8, hidden=[32]))
    _, metrics = objectives.elbo(model, torch.rand(64, 1, 28, 28))
    assert metrics["kl"] >= 0
    q = model.prior()  # KL(p || p) = 0 exactly in closed form
    assert kl_divergence(q, model.prior()).abs().max() < 1e-6


def test_loss_is_recon_plus_beta_kl_and_elbo_is_reported_at_beta_one():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 28, 28), latent_dim=8, hidden=[32]))
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(1)
    loss, m = objectives.elbo(model, x, beta=4.0)
    assert torch.allclose(loss, m["recon"] + 4.0 * m["kl"], rtol=1e-5)
    assert torch.allclose(m["elbo"], -(m["recon"] + m["kl"]), rtol=1e-5)


def test_bernoulli_log_prob_is_negative_binary_cross_entropy():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=2, hidden=[8]))
    logits = torch.randn(3, 1, 4, 4)
    x = torch.rand(3, 1, 4, 4)
    expected = (x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(1 - torch.sigmoid(logits))).sum((1, 2, 3))
    assert torch.allclose(model.likelihood(logits).log_prob(x), expected, atol=1e-4)


def test_gaussian_log_prob_matches_the_normal_density():
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=2, hidden=[8], likelihood="gaussian", sigma=0.3))
    mean, x = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    expected = (-0.5 * ((x - mean) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    assert torch.allclose(model.likelihood(mean).log_prob(x), expected, atol=1e-4)


def test_bernoulli_probabilities_sum_to_one_over_all_binary_images():
    model = build(from_flat("mlp", (1, 2, 2), latent_dim=2, hidden=[4]))
    logits = torch.randn(1, 1, 2, 2)
    images = torch.tensor([[(i >> b) & 1 for b in range(4)] for i in range(16)], dtype=torch.float).view(16, 1, 2, 2)
    total = model.likelihood(logits.expand(16, 1, 2, 2)).log_prob(images).exp().sum()
    assert torch.allclose(total, torch.tensor(1.0), atol=1e-5)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 8, 8), latent_dim=3, hidden=[16]))
    x = (torch.rand(32, 1, 8, 8) > 0.5).float()
    return model, x


def test_iwae_bound_tightens_with_k(small_model):
    model, x = small_model
    torch.manual_seed(0)
    bounds = [objectives.iwae_bound(model, x, k)["iwae"].mean().item() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2]


def test_iwae_is_at_least_the_elbo_on_average(small_model):
    model, x = small_model
    torch.manual_seed(0)
    r = objectives.iwae_bound(model, x, 50)
    assert r["iwae"].mean() >= r["elbo"].mean()


def test_iwae_with_k_1_equals_the_elbo_in_expectation(small_model):
    model, x = small_model
    torch.manual_seed(0)
    draws = torch.stack([objectives.iwae_bound(model, x, 1)["iwae"].mean() for _ in range(400)])
    reference = torch.stack([objectives.iwae_bound(model, x, 1)["elbo"].mean() for _ in range(400)])
    se = math.sqrt(draws.var() / 400 + reference.var() / 400)
    assert abs(draws.mean() - reference.mean()) < 4 * se


def test_iwae_chunking_changes_nothing_but_memory(small_model):
    model, x = small_model
    torch.manual_seed(5)
    whole = objectives.iwae_bound(model, x, 64)
    torch.manual_seed(5)
    chunked = objectives.iwae_bound(model, x, 64, chunk=64)
    assert torch.allclose(whole["iwae"], chunked["iwae"])
    # Different chunk sizes draw different samples; the estimates must still agree closely.
    torch.manual_seed(6)
    small = objectives.iwae_bound(model, x, 64, chunk=5)
    assert (small["iwae"] - whole["iwae"]).abs().mean() < 0.5


def test_lerp_and_slerp_include_endpoints_and_slerp_keeps_norm_for_equal_radii():
    a, b = torch.randn(16), torch.randn(16)
    b = b / b.norm() * a.norm()
    for path in (latent.lerp(a, b, 7), latent.slerp(a, b, 7)):
        assert path.shape == (7, 16)
        assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    norms = latent.slerp(a, b, 7).norm(dim=1)
    assert torch.allclose(norms, a.norm().expand(7), rtol=1e-4)
    assert latent.lerp(a, b, 7).norm(dim=1)[3] < a.norm()  # the straight line cuts inside
    assert torch.allclose(latent.slerp(a, a, 3)[1], a)  # parallel: no NaN


@pytest.mark.parametrize("tilt", [0.0, 1e-7, 1e-4])
def test_slerp_of_nearly_opposite_vectors_stays_on_the_sphere(tilt):
    """sin(omega) ~ 0 at both ends of the range: the path must neither blow up nor leave the sphere."""
    torch.manual_seed(0)
    a = torch.randn(16)
    b = -a + tilt * torch.randn(16)
    b = b / b.norm() * a.norm()
    path = latent.slerp(a, b, 9)
    assert torch.isfinite(path).all()
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=1), a.norm().expand(9), rtol=1e-4)
    assert (path[4] @ a).abs() < 1e-3 * a.norm() ** 2  # half way round: orthogonal to both ends


# -- the training hot path (issue 21): hand-written autograd nodes ------------------------------


def test_the_fused_sample_and_kl_node_equals_the_distribution_graph_in_value_and_gradient():
    from torch.distributions import Normal

    from vaecli.models.priors import StandardNormal
    from vaecli.models.vae import _SampleAndKL

    torch.manual_seed(0)
    params = torch.randn(5, 8, dtype=torch.float64) * 3
    eps = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: _SampleAndKL.apply(p, eps), (params.clone().requires_grad_(),))
    params[0, 5], params[1, 6] = 40.0, -40.0  # log variances beyond the clamp: no gradient there
    fused, graph = params.clone().requires_grad_(), params.clone().requires_grad_()
    z1, kl1 = _SampleAndKL.apply(fused, eps)
    mu, logvar = graph.chunk(2, dim=-1)  # what _gaussian and the prior's closed form compute
    q = Normal(mu, torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))
    z2, kl2 = q.loc + q.scale * eps, StandardNormal.kl(q)
    assert torch.allclose(z1, z2, rtol=1e-12) and torch.allclose(kl1, kl2, rtol=1e-9)
    w_z, w_kl = torch.randn_like(z1), torch.randn_like(kl1)
    ((z1 * w_z).sum() + (kl1 * w_kl).sum()).backward()
    ((z2 * w_z).sum() + (kl2 * w_kl).sum()).backward()
    assert torch.allclose(fused.grad, graph.grad, rtol=1e-9, atol=1e-12)
    assert fused.grad[0, 5] == 0 and fused.grad[1, 6] == 0


def test_the_bernoulli_log_prob_node_equals_bce_with_its_gradients_under_broadcasting():
    import torch.nn.functional as F

    from vaecli.models.likelihoods import _BernoulliLogProb

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)  # k samples of B images
    x = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BernoulliLogProb.apply, (logits, x))
    expected = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    assert torch.allclose(_BernoulliLogProb.apply(logits, x), expected)


def test_the_vae_hot_path_draws_the_same_latents_and_terms_as_the_distributions():
    """The default model's terms() skip the distribution objects: the same random numbers, the
    same log p(x|z) and KL as encode().rsample() and the prior's closed form."""
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=3, hidden=[16]))
    x = (torch.rand(5, 1, 6, 6) > 0.5).float()
    torch.manual_seed(1)
    fast = model.terms(x)
    torch.manual_seed(1)
    q = model.encode(x)
    z = q.rsample()
    assert torch.allclose(fast["log_px"], model.decode(z).log_prob(x), rtol=1e-6)
    assert torch.allclose(fast["kl_per_dim"], model.prior_net.kl(q.base_dist), rtol=1e-5, atol=1e-7)
    assert torch.allclose(fast["kl"], fast["kl_per_dim"].sum(-1)) and fast["kl_exact"]


def test_the_resnet_survives_adams_first_steps_at_the_default_rate():
    """Unnormalized, this 32x32 ResNet's KL went 0.002 -> 1.7 -> 9e6 -> NaN in four Adam steps at
    lr 1e-3 (`vae train dataset=shapes model=resnet model.latent_dim=16` stopped at step 40); with
    GroupNorm before each activation it trains."""
    from vaecli.data import shapes

    images = shapes.render(32, 4, 8, 4)[0][:256].float() / 255
    torch.manual_seed(0)
    model = build(from_flat("resnet", (1, 32, 32), latent_dim=16, hidden=[64, 128, 256], likelihood="logistic"))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(4):
        terms = model.terms(images[step * 64:(step + 1) * 64])
        loss = (terms["kl"] - terms["log_px"]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and terms["kl"].mean() < 1000


def test_a_resnet_checkpoint_from_before_groupnorm_loads_unnormalized(tmp_path):
    import json

    from vaecli.runtime import checkpoint
    from vaecli.config import DatasetConfig

    old = build(from_flat("resnet", (1, 8, 8), latent_dim=2, hidden=[4, 8], likelihood="logistic", norm="none"))
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in old.modules())
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, old, DatasetConfig(name="shapes"), seed=0, step=1, epoch=1)
    tensors, metadata = checkpoint.read_tensors(path)
    from conftest import flat_spec_json

    spec = flat_spec_json(old.spec)  # the flat spec of earlier releases ...
    del spec["norm"]  # ... written before the field existed
    metadata["vaecli.model"] = json.dumps(spec)
    checkpoint.save_tensors(path, tensors, metadata)
    loaded = checkpoint.load_model(path).model
    assert loaded.spec.body.norm == "none"
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded.reconstruct(x), old.eval().reconstruct(x))
