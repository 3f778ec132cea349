"""The model family of issue 3: likelihoods against independent computations, priors, KL
schedules, free bits, IWAE training, AE, HVAE, conditional models, Burda's schedule."""

import math

import pytest
import torch

from vaecli import objectives
from vaecli.models import build, from_flat
from vaecli.models.likelihoods import LOG_SIGMA_MIN
from vaecli.training.callbacks import burda_lr

# -- likelihoods ---------------------------------------------------------------------------


def logistic_cdf(x, mean, scale):
    return 1 / (1 + torch.exp(-(x - mean) / scale))


@pytest.mark.parametrize("mixtures", [1, 3])
def test_discretized_logistic_probabilities_sum_to_one_and_match_the_cdf(mixtures):
    torch.manual_seed(0)
    model = build(from_flat("mlp", (2, 2, 2), latent_dim=2, hidden=[4], likelihood="logistic", mixtures=mixtures))
    params = torch.randn(1, 3 * mixtures * 2, 2, 2, dtype=torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255
    # every pixel takes every value: (256, C, H, W) images, one per value
    images = values.view(256, 1, 1, 1).expand(256, 2, 2, 2)
    dist = model.likelihood(params.expand(256, -1, -1, -1)).base_dist
    per_pixel = dist.log_prob(images)  # (256, C, H, W)
    assert torch.allclose(per_pixel.exp().sum(0), torch.ones(2, 2, 2, dtype=torch.float64), atol=1e-6)
    # independent computation of one interior bin, single component
    if mixtures == 1:
        logit, mean, log_scale = params[0].view(3, 1, 2, 2, 2).unbind(0)
        mean, scale = mean[0], log_scale[0].clamp(min=LOG_SIGMA_MIN).exp()  # the decoder's means as they are
        x = 100 / 255 * 2 - 1
        expected = logistic_cdf(x + 1 / 255, mean, scale) - logistic_cdf(x - 1 / 255, mean, scale)
        assert torch.allclose(per_pixel[100].exp(), expected, rtol=1e-5)
    # its mean is the expectation over the 256 values (up to the rounding inside the bins)
    expectation = (per_pixel.exp() * values.view(256, 1, 1, 1)).sum(0)
    assert torch.allclose(dist.mean, expectation, atol=2e-3)


def test_logistic_checkpoints_from_before_linear_means_keep_their_tanh():
    torch.manual_seed(0)
    old = build(from_flat("mlp", (1, 2, 2), latent_dim=2, hidden=[4], likelihood="logistic", logistic_tanh_means=True))
    params = 3 * torch.randn(1, 3, 2, 2)
    assert torch.allclose(old.likelihood(params).base_dist.means, torch.tanh(params[:, 1:2]).unsqueeze(1))


def test_continuous_bernoulli_matches_its_formula_and_integrates_to_one():
    model = build(from_flat("mlp", (1, 1, 1), latent_dim=2, hidden=[4], likelihood="cbernoulli"))
    for logit in (-3.0, -0.2, 0.0, 1.5):
        lam = torch.sigmoid(torch.tensor(logit, dtype=torch.float64))
        grid = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
        dist = model.likelihood(torch.full((20000, 1, 1, 1), logit, dtype=torch.float64))
        density = dist.log_prob(grid.view(-1, 1, 1, 1)).exp()
        assert abs(density.mean().item() - 1) < 1e-4  # midpoint rule over [0, 1]
        if abs(lam - 0.5) > 1e-3:  # C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)
            log_c = math.log(2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam))
            x = 0.3
            expected = x * math.log(lam) + (1 - x) * math.log(1 - lam) + log_c
            got = dist.log_prob(torch.full((20000, 1, 1, 1), x, dtype=torch.float64))[0].item()
            assert abs(got - expected) < 1e-6


@pytest.mark.parametrize("per_pixel", [False, True])
def test_learned_gaussian_sigma_is_a_parameter_or_a_decoder_output(per_pixel):
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 3, 3), latent_dim=2, hidden=[4], likelihood="gaussian_learned",
                          sigma=0.2, per_pixel=per_pixel))
    channels = 2 if per_pixel else 1
    params = torch.randn(2, channels, 3, 3)
    x = torch.rand(2, 1, 3, 3)
    if per_pixel:
        mean, sigma = params[:, :1], params[:, 1:].clamp(min=LOG_SIGMA_MIN).exp()
    else:
        mean, sigma = params, torch.tensor(0.2)
    expected = torch.distributions.Normal(mean, sigma).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(model.likelihood(params).log_prob(x), expected, atol=1e-5)
    assert any("log_sigma" in name for name, _ in model.named_parameters()) != per_pixel


# -- priors --------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_priors_are_learned_normalised_and_use_a_monte_carlo_kl(prior):
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=2, hidden=[16], prior=prior, prior_components=4))
    assert not model.exact_kl
    p = model.prior()
    grid = torch.stack(torch.meshgrid(torch.linspace(-8, 8, 161), torch.linspace(-8, 8, 161), indexing="ij"), -1)
    mass = p.log_prob(grid.view(-1, 2)).exp().sum() * (16 / 160) ** 2
    assert abs(mass.item() - 1) < 0.02  # a normalised density over the plane
    x = torch.rand(8, 1, 6, 6)
    terms = model.terms(x)
    assert terms["kl_per_dim"] is None and terms["kl_exact"] is False
    loss, _ = objectives.elbo(model, x)
    loss.backward()
    prior_grads = [p.grad for n, p in model.named_parameters() if n.startswith("prior_net")]
    assert prior_grads and all(g is not None and g.abs().sum() > 0 for g in prior_grads)
    torch.manual_seed(1)
    bound = objectives.iwae_bound(model, x, 200)
    assert bound["iwae"].mean() >= bound["elbo"].mean()


# -- objectives ----------------------------------------------------------------------------


def test_kl_schedules():
    linear = objectives.KLSchedule("linear", beta=2.0, warmup_steps=100)
    assert [linear.weight(s) for s in (0, 50, 100, 500)] == [0.0, 1.0, 2.0, 2.0]
    cyclic = objectives.KLSchedule("cyclic", beta=1.0, cycles=4, ratio=0.5, total_steps=400)
    assert [cyclic.weight(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    assert objectives.KLSchedule("constant", beta=4.0).weight(123) == 4.0


def test_free_bits_clamp_each_dimension_and_stop_its_gradient():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=4, hidden=[16]))
    x = torch.rand(16, 1, 6, 6)
    torch.manual_seed(2)
    per_dim = model.terms(x)["kl_per_dim"].mean(0).detach()
    big = per_dim.max().item() + 1.0  # above every dimension's KL: the KL term is a constant
    torch.manual_seed(2)
    loss, metrics = objectives.elbo(model, x, free_bits=big)
    assert torch.isclose(metrics["kl_clamped"], torch.tensor(4 * big))
    assert metrics["kl"] < metrics["kl_clamped"]
    loss.backward()
    head_grad_with = model.head.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(2)
    objectives.elbo(model, x, beta=0.0)[0].backward()  # recon only
    assert torch.allclose(head_grad_with, model.head.weight.grad, atol=1e-6)


def test_iwae_training_loss_with_k_1_is_the_elbo_and_tightens_with_k():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=3, hidden=[16]))
    x = (torch.rand(32, 1, 6, 6) > 0.5).float()
    k1 = torch.stack([objectives.iwae(model, x, 1)[0].detach() for _ in range(300)])
    el = torch.stack([objectives.elbo(model, x)[0].detach() for _ in range(300)])
    assert abs(k1.mean() - el.mean()) < 4 * math.sqrt(k1.var() / 300 + el.var() / 300)
    k20 = torch.stack([objectives.iwae(model, x, 20)[0].detach() for _ in range(50)])
    assert k20.mean() < k1.mean()  # loss = -bound: a tighter bound is a lower loss
    loss, metrics = objectives.iwae(model, x, 5)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0 and {"iwae", "elbo", "kl", "recon"} <= set(metrics)


def test_burda_schedule_is_3_to_the_i_passes_at_lr_times_10_to_the_minus_i_over_7():
    boundaries = [0, 1, 4, 13, 40, 121, 364, 1093]  # first epoch of stage i
    for i, start in enumerate(boundaries):
        assert burda_lr(1e-3, start) == pytest.approx(1e-3 * 10 ** (-i / 7))
        if start:
            assert burda_lr(1e-3, start - 1) == pytest.approx(1e-3 * 10 ** (-(i - 1) / 7))
    assert burda_lr(1e-3, 3279) == pytest.approx(1e-3 * 10 ** (-1))


# -- models --------------------------------------------------------------------------------


def test_autoencoder_has_no_kl_and_no_bound():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=3, hidden=[16], kind="ae"))
    x = torch.rand(4, 1, 6, 6)
    terms = model.terms(x)
    assert torch.equal(terms["kl"], torch.zeros(4))
    assert torch.equal(model.latent_mean(x), model.latent_mean(x))  # deterministic
    assert model.sample(3).shape == (3, 1, 6, 6)
    with pytest.raises(ValueError, match="deterministic autoencoder"):  # models raise plain errors
        objectives.iwae_bound(model, x, 5)


def test_hvae_has_two_stochastic_layers_and_a_valid_bound():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=4, hidden=[16], kind="hvae", latent_dim2=2, hidden2=[8]))
    x = (torch.rand(16, 1, 6, 6) > 0.5).float()
    log_w, log_px = model.log_weights(x, 7)
    assert log_w.shape == log_px.shape == (7, 16)
    assert model.prior().event_shape == (2,) and model.encode(x).event_shape == (4,)
    torch.manual_seed(1)
    bound = objectives.iwae_bound(model, x, 300)
    assert bound["iwae"].mean() > bound["elbo"].mean()
    draws = torch.stack([objectives.iwae_bound(model, x, 1)["iwae"].mean() for _ in range(300)])
    assert abs(draws.mean() - bound["elbo"].mean()) < 4 * draws.std() / math.sqrt(300) + 0.05
    assert model.sample(5).shape == (5, 1, 6, 6)


def test_conditional_model_decodes_differently_per_label_and_needs_one():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 6), latent_dim=3, hidden=[16], num_classes=4))
    z = torch.zeros(2, 3)
    a = model.decode(z, torch.tensor([0, 0])).mean
    b = model.decode(z, torch.tensor([3, 3])).mean
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class labels"):
        model.encode(torch.rand(2, 1, 6, 6))
    g = torch.Generator().manual_seed(0)
    assert model.sample(4, generator=g, y=torch.tensor([0, 1, 2, 3])).shape == (4, 1, 6, 6)


@pytest.mark.parametrize("size", [32, 64])
def test_resnet_handles_colour_images_at_32_and_64(size):
    torch.manual_seed(0)
    model = build(from_flat("resnet", (3, size, size), latent_dim=8, hidden=[8, 16, 16]))
    x = torch.rand(2, 3, size, size)
    loss, _ = objectives.elbo(model, x)
    loss.backward()
    assert model.reconstruct(x).shape == x.shape
    assert any(type(m).__name__ == "ResBlock" for m in model.decoder.modules())
