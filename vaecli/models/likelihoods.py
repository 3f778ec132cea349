"""p(x|z): each likelihood turns decoder outputs (B, P*C, H, W) into a distribution whose event
is one image (C, H, W): log_prob(x) has shape (B,), and `mean` is an image batch in [0, 1].

Each likelihood also knows what its log_prob is of (`measure`, from bounds.py): a probability of
the data as stored, a density made into one by dequantization, or neither. A density built for
dequantized data (`levels`, `dequantize`) subtracts D ln L from log_prob itself, so the ELBO, the
IWAE bound and every score computed from it are figures of the discrete data, with no caller
adding the offset."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (Bernoulli, ContinuousBernoulli, Distribution, Independent, Normal,
                                 constraints)

from .. import bounds

LOG_SIGMA_MIN = -7.0  # sigma >= ~1e-3: a learned variance collapsing to 0 sends log p to infinity


def _image(dist: Distribution, log_levels: float = 0.0) -> Distribution:
    # validate_args=False: grey pixels lie outside Bernoulli's {0, 1} support by design, and
    # per-call validation costs time in the training loop.
    if log_levels:
        return _DequantizedImage(dist, log_levels)
    return Independent(dist, 3, validate_args=False)


class _DequantizedImage(Independent):
    """A density over images evaluated at dequantized images y = (k + u) / L: log_prob(y) is
    log p(y) - D ln L, whose expectation over u is a lower bound on log P(k) of the stored levels k
    (Theis et al. 2016), and so are the ELBO and IWAE bound built on it."""

    def __init__(self, base: Distribution, log_levels: float):
        super().__init__(base, 3, validate_args=False)
        self.log_levels = log_levels

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value) - self.log_levels * value.shape[-3:].numel()


class _Density(nn.Module):
    """A density likelihood: on dequantized data its log_prob carries the -D ln L of the bins."""

    def __init__(self, levels: int = 256, dequantize: bool = False):
        super().__init__()
        self.log_levels = math.log(levels) if dequantize else 0.0


class _BernoulliLogProb(torch.autograd.Function):
    """sum_d x_d l_d - softplus(l_d) over the last dimension as one autograd node: the forward is
    BCE's fused kernel, the backward (x - sigmoid(l)) * g, three operations where autograd's graph
    of expand, BCE, sum and negation takes about twice as many (issue 21)."""

    @staticmethod
    def forward(ctx, logits: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(logits, value)
        return F.binary_cross_entropy_with_logits(logits, value.expand_as(logits), reduction="none").sum(-1).neg_()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        logits, value = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_logits = (value - torch.sigmoid(logits)).mul_(g) if ctx.needs_input_grad[0] else None
        grad_value = (logits * g).sum_to_size(value.shape) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_value


class _BernoulliImage(Independent):
    """Independent per-pixel Bernoulli over an image, log p(x|l) = sum_d x_d l_d - softplus(l_d).
    Without gradients (eval-iwae, where it is half of the time) this makes two passes over the
    logits instead of torch's ~six (broadcast copy, BCE temporaries, then the sum); with
    gradients, one autograd node with BCE's fused forward (bench/RESULTS.md)."""

    def log_prob(self, value: Tensor) -> Tensor:
        return bernoulli_log_prob(self.base_dist.logits, value)


def bernoulli_log_prob(logits: Tensor, value: Tensor) -> Tensor:
    """log p(x|l) of images (..., C, H, W) under per-pixel Bernoulli(logits): (...)."""
    logits = logits.flatten(-3)
    value = value.flatten(-3).to(logits.dtype)
    if torch.is_grad_enabled():
        return _BernoulliLogProb.apply(logits, value)
    return torch.einsum("...d,...d->...", logits, value) - softplus_sum(logits)


def softplus_sum(logits: Tensor) -> Tensor:
    """sum_d softplus(l_d) over the last dimension, without gradients: softplus(l) =
    log(1 + exp(-|l|)) + (l + |l|) / 2, in place on one temporary. torch's softplus kernel takes a
    scalar log1p per element and this form does not (exp and log are vectorized), and one
    temporary instead of two saves the page faults of a fresh large allocation: 4 ms instead of
    16 ms on a (62, 64, 784) block (bench/RESULTS.md). Absolute error per element < 1e-7."""
    t = logits.abs()
    total = t.sum(-1)
    total += logits.sum(-1)
    t.neg_().exp_().add_(1).log_()
    return t.sum(-1) + 0.5 * total


class BernoulliLikelihood(nn.Module):
    """Per-pixel Bernoulli(logits). On grey [0, 1] pixels log_prob is the negative binary
    cross-entropy most VAE code uses; it is a proper likelihood for binary data only."""

    params_per_pixel = 1

    def forward(self, params: Tensor) -> Distribution:
        return _BernoulliImage(Bernoulli(logits=params, validate_args=False), 3, validate_args=False)

    @staticmethod
    def log_prob_of(params: Tensor, x: Tensor) -> Tensor:
        """forward(params).log_prob(x) without building the distribution (the training hot path)."""
        return bernoulli_log_prob(params, x)


class ContinuousBernoulliLikelihood(_Density):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): the Bernoulli shape renormalized
    into a density on [0, 1], the correct likelihood for grey pixels. Its mean is not the
    Bernoulli parameter, which is why samples shown with it are less washed out."""

    params_per_pixel = 1

    def forward(self, params: Tensor) -> Distribution:
        return _image(ContinuousBernoulli(logits=params, validate_args=False), self.log_levels)


class GaussianLikelihood(_Density):
    """Per-pixel Normal(mean = decoder output, fixed sigma)."""

    params_per_pixel = 1

    def __init__(self, sigma: float, levels: int = 256, dequantize: bool = False):
        super().__init__(levels, dequantize)
        self.sigma = float(sigma)

    def forward(self, params: Tensor) -> Distribution:
        return _image(Normal(params, self.sigma, validate_args=False), self.log_levels)


class LearnedGaussianLikelihood(_Density):
    """Per-pixel Normal with a learned sigma: one global log sigma, or (per_pixel) a second
    decoder output per pixel. log sigma is clamped below at LOG_SIGMA_MIN."""

    def __init__(self, per_pixel: bool, init_sigma: float = 0.1, levels: int = 256, dequantize: bool = False):
        super().__init__(levels, dequantize)
        self.per_pixel = per_pixel
        self.params_per_pixel = 2 if per_pixel else 1
        if not per_pixel:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(init_sigma)))

    def forward(self, params: Tensor) -> Distribution:
        if self.per_pixel:
            mean, log_sigma = params.chunk(2, dim=-3)
        else:
            mean, log_sigma = params, self.log_sigma.expand_as(params)
        return _image(Normal(mean, log_sigma.clamp(min=LOG_SIGMA_MIN).exp(), validate_args=False), self.log_levels)


class DiscretizedLogisticMixture(Distribution):
    """Per-pixel mixture of K logistics discretized to 256 bins (Salimans et al. 2017,
    PixelCNN++), channels independent. Batch (..., C, H, W) with values x = k/255, k = 0..255.

    Bin k covers [x - 1/255, x + 1/255] on the [-1, 1] scale; the edge bins take the tails,
    so the 256 probabilities of a pixel sum to exactly 1.
    """

    arg_constraints: dict = {}
    support = constraints.unit_interval

    def __init__(self, logit_probs: Tensor, means: Tensor, log_scales: Tensor):
        """Each (..., K, C, H, W) with means on the [-1, 1] scale (the pixel range; a mean may lie
        outside it, putting most of the mass in an edge bin)."""
        self.logit_probs, self.means = logit_probs, means
        self.log_scales = log_scales.clamp(min=LOG_SIGMA_MIN)
        batch = means.shape[:-4] + means.shape[-3:]
        super().__init__(batch_shape=batch, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        x = (value * 2 - 1).unsqueeze(-4)  # [0, 1] -> [-1, 1], broadcast over the K components
        inv_scale = torch.exp(-self.log_scales)
        plus = inv_scale * (x - self.means + 1 / 255)  # the bin's upper edge, standardized
        minus = plus - inv_scale * (2 / 255)  # its lower edge
        softplus_plus, softplus_minus = F.softplus(plus), F.softplus(minus)
        # log(sigmoid(plus) - sigmoid(minus)) = plus + log(1 - e^(minus - plus)) - softplus(plus) -
        # softplus(minus): exact and stable for every bin, where PixelCNN++'s form subtracts two
        # sigmoids and falls back to the density at the bin's centre times its width.
        log_inner = plus - softplus_plus - softplus_minus + torch.log(-torch.expm1(inv_scale * (-2 / 255)))
        log_bin = torch.where(x < -0.999, plus - softplus_plus,  # the first bin takes the left tail
                              torch.where(x > 0.999, -softplus_minus, log_inner))  # the last the right
        if self.logit_probs.shape[-4] == 1:  # one logistic: no mixture to sum
            return log_bin.squeeze(-4)
        return torch.logsumexp(torch.log_softmax(self.logit_probs, dim=-4) + log_bin, dim=-4)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        """Pixel values k/255: a component by its weight, a logistic draw from it, clipped to the
        range and rounded to its bin (the edge bins take the tails, as log_prob counts them)."""
        shape = torch.Size(sample_shape) + self.logit_probs.shape
        component = torch.distributions.Categorical(logits=self.logit_probs.movedim(-4, -1)).sample(sample_shape)
        pick = F.one_hot(component, self.logit_probs.shape[-4]).movedim(-1, -4).to(self.means.dtype)
        u = torch.rand(shape, device=self.means.device).clamp(1e-5, 1 - 1e-5)
        draws = self.means + self.log_scales.exp() * (torch.log(u) - torch.log1p(-u))
        x = (pick * draws).sum(-4).clamp(-1, 1)
        return torch.round((x + 1) / 2 * 255) / 255

    @property
    def mean(self) -> Tensor:
        """E[x] in [0, 1]: each component's mean censored to [-1, 1] (the edge bins take the tails),
        E[clip(y, -1, 1)] = -1 + s (softplus((mu + 1) / s) - softplus((mu - 1) / s)), weighted.
        Not mu itself: a wide logistic at mu = -1 puts half its mass in the last bin."""
        scale = self.log_scales.exp()
        censored = scale * (F.softplus((self.means + 1) / scale) - F.softplus((self.means - 1) / scale)) - 1
        weights = torch.softmax(self.logit_probs, dim=-4)
        return ((weights * censored).sum(-4).clamp(-1, 1) + 1) / 2


class LogisticLikelihood(nn.Module):
    """Discretized logistic (K = 1) or a mixture of K logistics per pixel, for 8-bit images.

    The means are the decoder's outputs as they are, as in PixelCNN++: squashed by tanh (what
    checkpoints from before 2026-12-02 did, `tanh_means`), a mean that reaches -1 saturates and
    stops learning, and models got stuck encoding white pixels by a wide scale around a black mean
    (measured on shapes: test ELBO -917 and a collapsed KL of 0.03 nats after 10 epochs, against
    -251 and 13 nats with linear means)."""

    def __init__(self, mixtures: int = 1, tanh_means: bool = False):
        super().__init__()
        self.k = mixtures
        self.params_per_pixel = 3 * mixtures
        self.tanh_means = tanh_means

    def forward(self, params: Tensor) -> Distribution:
        lead, (pc, h, w) = params.shape[:-3], params.shape[-3:]
        c = pc // self.params_per_pixel
        logit_probs, means, log_scales = params.reshape(*lead, 3, self.k, c, h, w).unbind(-5)
        return _image(DiscretizedLogisticMixture(logit_probs, torch.tanh(means) if self.tanh_means else means,
                                                 log_scales))


def _sigma(lik) -> float:
    return lik.sigma if lik.sigma is not None else 0.1


# Each member registers its builder once: (spec.likelihood part, levels, dequantize) -> module.
BUILDERS = {
    "bernoulli": lambda lik, levels, dequantize: BernoulliLikelihood(),
    "cbernoulli": lambda lik, levels, dequantize: ContinuousBernoulliLikelihood(levels, dequantize),
    "gaussian": lambda lik, levels, dequantize: GaussianLikelihood(_sigma(lik), levels, dequantize),
    "gaussian_learned": lambda lik, levels, dequantize: LearnedGaussianLikelihood(lik.per_pixel, _sigma(lik), levels,
                                                                                  dequantize),
    "logistic": lambda lik, levels, dequantize: LogisticLikelihood(lik.mixtures, lik.tanh_means),
}


def build(spec) -> nn.Module:
    """The likelihood a model spec names (spec.likelihood, and spec.decoder where the kind has one),
    for the data it describes (spec.data), with `measure` saying what its log_prob is of."""
    lik, decoder = spec.likelihood, getattr(spec, "decoder", None)
    name, levels, dequantize = lik.name, spec.data.levels, spec.data.dequantize
    if name not in BUILDERS:
        raise ValueError(f"unknown likelihood {name!r}")
    likelihood = BUILDERS[name](lik, levels, dequantize)
    if dequantize and name not in bounds.DENSITIES:
        raise ValueError(f"likelihood={name} is a probability of the stored values; dequantized data needs a density")
    likelihood.measure = bounds.measure(name, levels, dequantize)
    if decoder is not None and decoder.name == "pixelcnn":  # the same per-pixel likelihood, each pixel given those before it
        from .autoregressive import PixelCNNLikelihood

        likelihood = PixelCNNLikelihood(likelihood, spec.image_shape[0], decoder.layers, decoder.kernel,
                                        decoder.channels)
        likelihood.measure = likelihood.inner.measure
    elif decoder is not None and decoder.name == "linear_ar":  # ... given a linear function of those before it
        from .autoregressive import LinearARLikelihood

        likelihood = LinearARLikelihood(likelihood, tuple(spec.image_shape))
        likelihood.measure = likelihood.inner.measure
    return likelihood
