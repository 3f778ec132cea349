"""The model family: VAE (Kingma & Welling 2013), its conditional form (Sohn et al. 2015), the
deterministic autoencoder baseline, and the two-stochastic-layer VAE of Burda et al. (2015).

Every model answers the same questions, so objectives and commands never ask which one it is
(docs/ARCHITECTURE.md, "The model contract"):
  encode(x, y)         q(z|x), a distribution with .mean and .stddev (a point mass for the AE)
  decode(z, y)         p(x|z);  decode_images(z, y) its mean in [0, 1]
  terms(x, y)          one-sample pieces of the ELBO: log p(x|z), KL, KL per dimension
  log_weights(x, k, y) log p(x, z_j) - log q(z_j|x) for k posterior samples (IWAE)
  latent_mean(x, y)    the point in latent space an image maps to (interpolation)
  sample(n, ...)       prior draws decoded;  reconstruct(x, y) the posterior mean decoded
and describes itself: latent_dim, conditional/num_classes, exact_kl (closed-form KL), has_bound
(log_weights defines a bound on log p(x)), measure (whether that bound is one for the data as
stored: bounds.Measure), layers (stochastic layers), convolutional.
Models raise plain Python errors (ValueError); mapping them to messages is the CLI's business.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MixtureSameFamily, Normal, constraints

from . import autoregressive, blocks, likelihoods, networks, posteriors, priors
from .vae_config import HVAESpec, VAESpec

def normal_kl(q: Normal, p: Normal) -> Tensor:
    """KL(q || p) per dimension for two diagonal Normals: torch's formula, written out because
    kl_divergence's type dispatch is a graph break under torch.compile."""
    var_ratio = (q.scale / p.scale).pow(2)
    t1 = ((q.loc - p.loc) / p.scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def _gaussian(params: Tensor, max_sigma: float | None = None) -> Distribution:
    """(…, 2D) -> N(mu, sigma^2) with event (D,); with `max_sigma`, sigma = max_sigma * sigmoid(.)
    instead (the committed-rate family: committed_sigma)."""
    mu, logvar = params.float().chunk(2, dim=-1)  # float(): fp32 maths under bf16/fp16 autocast
    # clamp: exp() overflows on the large logvars of early training
    # validate_args=False: a NaN from a diverging step must become a NaN loss (which the trainer
    # skips), not an exception; it also saves a check per call.
    sigma = torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) if max_sigma is None else max_sigma * torch.sigmoid(logvar)
    return Independent(Normal(mu, sigma, validate_args=False), 1, validate_args=False)


class _SampleAndKL(torch.autograd.Function):
    """z = mu + sigma * eps and KL(N(mu, sigma^2) || N(0, 1)) per dimension from the encoder head's
    (mu, logvar), as one autograd node with its derivatives written out: the same values as
    _gaussian(params).rsample() and StandardNormal.kl (logvar clamped to [-30, 20] alike), with
    about a third of the operations of the distribution objects' graph in each training step
    (bench/RESULTS.md, issue 21). dKL/dmu = mu, dKL/dlogvar = (sigma^2 - 1) / 2,
    dz/dlogvar = eps * sigma / 2; no gradient where the clamp is active."""

    @staticmethod
    def forward(ctx, params: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = params.chunk(2, dim=-1)
        lv = logvar.clamp(-30.0, 20.0)
        sigma = torch.exp(0.5 * lv)
        var = sigma * sigma
        kl = (var + mu * mu - 1).mul_(0.5).sub_(0.5 * lv)  # (sigma^2 + mu^2 - 1) / 2 - log sigma
        ctx.save_for_backward(mu, sigma, var, eps, lv == logvar)
        return torch.addcmul(mu, sigma, eps), kl

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_kl: Tensor) -> tuple[Tensor, None]:
        mu, sigma, var, eps, inside = ctx.saved_tensors
        grad_mu = torch.addcmul(grad_z, grad_kl, mu)
        grad_logvar = (grad_z * eps * sigma).addcmul_(grad_kl, var - 1).mul_(0.5 * inside)
        return torch.cat([grad_mu, grad_logvar], dim=-1), None


def committed_sigma(delta: float) -> float:
    """The largest sigma < 1 with KL(N(mu, sigma^2) || N(0, 1)) >= delta for every mu: the root of
    (sigma^2 - 1 - log sigma^2) / 2 = delta (the mu^2 / 2 term only adds). A posterior family with
    sigma below it keeps at least delta nats per dimension: the simplest form of the delta-VAE's
    committed rate (Razavi et al. 2019), which no decoder can collapse."""
    low, high = 1e-12, 1.0
    for _ in range(200):  # bisection: the left side falls from infinity to 0 on (0, 1)
        mid = (low + high) / 2
        if 0.5 * (mid * mid - 1 - 2 * math.log(mid)) > delta:
            low = mid
        else:
            high = mid
    return low


class PointMass(Distribution):
    """q(z|x) = delta(z - loc): the posterior of a deterministic encoder, so an autoencoder
    answers encode() like every other model (diffusers' DiagonalGaussianDistribution with
    deterministic=True plays the same role). Samples are loc itself; event (D,)."""

    arg_constraints = {"loc": constraints.real}
    has_rsample = True

    def __init__(self, loc: Tensor):
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def stddev(self) -> Tensor:
        return torch.zeros_like(self.loc)

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self.loc.expand(*sample_shape, *self.loc.shape)

    def log_prob(self, value: Tensor) -> Tensor:
        raise ValueError("a point-mass posterior has no density: a deterministic autoencoder has no bound")


class LatentModel(nn.Module):
    """What every model shares: its spec, what it describes of itself, class conditioning, and
    the pictures made from encode/decode. Subclasses provide the distributions."""

    has_bound = True  # log_weights() bounds log p(x): ELBO and IWAE are defined
    layers = 1  # stochastic layers; the latent z of encode() is the only one
    groups = 1  # latent groups with their own KL and sampling temperature (model=ladder: several)
    posterior = "gaussian"  # q(z|x): "gaussian" (KL per dimension, I(x; z)) or "point" (a point mass)
    discrete = False  # latents are code indices (VQ-VAE): traverse swaps codes instead of sweeping
    can_sample = True  # sample() draws from the model's prior

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    @property
    def conditional(self) -> bool:
        return bool(self.spec.num_classes)

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes

    @property
    def convolutional(self) -> bool:
        """Whether its networks are convolutional (they can use the channels_last layout)."""
        return self.spec.body.arch in ("conv", "resnet") and not self.spec.body.networks

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def draws_pixel_by_pixel(self) -> bool:
        """Pictures cost one decoder pass per pixel (an autoregressive decoder)."""
        return isinstance(getattr(self, "likelihood", None), autoregressive.AutoregressiveLikelihood)

    @property
    def measure(self):
        """What log p(x|z), and so the ELBO and IWAE bound, is of (bounds.Measure)."""
        return self.likelihood.measure

    def _onehot(self, y: Tensor | None, dtype: torch.dtype) -> Tensor:
        if y is None:
            raise ValueError("this is a conditional model: it needs class labels (e.g. --label 3)")
        return F.one_hot(y.long(), self.spec.num_classes).to(dtype)

    def _condition(self, h: Tensor, y: Tensor | None) -> Tensor:
        """Append one-hot labels (B,) to features (..., B, F) for a conditional model."""
        if not self.conditional:
            return h
        onehot = self._onehot(y, h.dtype)
        return torch.cat([h, onehot.expand(*h.shape[:-1], onehot.shape[-1])], dim=-1)

    def latent_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encode(x, y).mean

    def initialize(self) -> None:
        """Before a new run trains (not on resume): weights from elsewhere, if the spec names any."""

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (a GAN term's adaptive weight compares gradients there)."""
        return [p for p in self.decoder.parameters() if p.dim() > 1][-1]

    def decode_images(self, z: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None,
                      common: bool = False) -> Tensor:
        """Pictures of p(x|z) for latents (..., latent_dim): images (..., C, H, W) in [0, 1], the
        likelihood's mean (an autoregressive decoder's: a draw, pixel by pixel, from `generator`;
        `common`: the same random numbers for every image, for paths through latent space)."""
        return autoregressive.picture(self.decode(z, y), generator, common).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Decode the latent mean of each image: (B, C, H, W) in [0, 1]."""
        return self.decode_images(self.latent_mean(x, y), y)


class VAE(LatentModel):
    """p(z) p(x|z) with an amortized Gaussian posterior q(z|x); images are (B, C, H, W)."""

    def __init__(self, spec: VAESpec):
        super().__init__()
        self.spec = spec
        self.likelihood = likelihoods.build(spec)
        self.flow = posteriors.build(spec)  # None: the diagonal Gaussian itself
        c = spec.num_classes or 0
        self.encoder, features = networks.body_encoder(spec)  # vaecli's, or the user's (model.encoder_net)
        self.head = nn.Linear(features + c, self._head_outputs() + (self.flow.extra_outputs if self.flow else 0))
        out_channels = self.likelihood.params_per_pixel * spec.image_shape[0]
        self.decoder = networks.body_decoder(spec, spec.latent_dim + c, out_channels)
        self.prior_net = priors.build(spec.prior.name, self._prior_dim(), spec.image_shape, spec.prior.components)

    def _head_outputs(self) -> int:
        return 2 * self.spec.latent_dim

    def _prior_dim(self) -> int:
        return self.spec.latent_dim

    @property
    def exact_kl(self) -> bool:
        """Whether KL(q(z|x) || p(z)) has a closed form (standard-normal prior, Gaussian posterior)."""
        return self.prior_net.analytic_kl and self.flow is None

    @property
    def posterior(self) -> str:
        """"gaussian", or "flow" (a density known at its own samples: no KL per dimension or I(x; z))."""
        return "gaussian" if self.flow is None else "flow"

    # -- the model's distributions ---------------------------------------------------------

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        """q(z|x): batch (B,), event (latent_dim,); with a flow, the Gaussian pushed through it."""
        params = self.head(self._condition(self.encoder(x), y))
        if self.flow is None:
            return _gaussian(params, committed_sigma(self.spec.posterior.delta) if self.spec.posterior.delta > 0 else None)
        base_size = 2 * self.spec.latent_dim
        return self.flow(_gaussian(params[..., :base_size]), params[..., base_size:].float())

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        """p(x|z) for latents (..., latent_dim): batch (...), event (C, H, W)."""
        return self.likelihood(self._likelihood_params(z, y))

    def _likelihood_params(self, z: Tensor, y: Tensor | None) -> Tensor:
        lead = z.shape[:-1]
        h = self._condition(z, y)
        params = self.decoder(h.reshape(-1, h.shape[-1])).float()  # log p(x|z) in fp32 under autocast
        return params.reshape(*lead, *params.shape[1:])

    def _log_px(self, z: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
        """decode(z, y).log_prob(x), without the distribution object where the likelihood offers
        `log_prob_of` (the Bernoulli: the training hot path)."""
        direct = getattr(self.likelihood, "log_prob_of", None)
        params = self._likelihood_params(z, y)
        return direct(params, x) if direct is not None else self.likelihood(params).log_prob(x)

    def prior(self, temperature: float = 1.0) -> Distribution:
        """p(z), event (latent_dim,); temperature scales its sigma(s)."""
        return self.prior_net(temperature, encode=self.encode)

    # -- what objectives and evaluation use ------------------------------------------------

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """One reparameterized sample: log_px (B,), kl (B,), kl_per_dim (B, D) or None.

        The KL is closed form for the standard-normal prior; otherwise the single-sample Monte
        Carlo estimate log q(z|x) - log p(z), which is unbiased but noisy (kl_exact False).
        """
        if self.exact_kl and self.spec.posterior.delta == 0:  # the default model's hot path: one autograd node
            params = self.head(self._condition(self.encoder(x), y)).float()
            eps = torch.empty(params.shape[:-1] + (self.spec.latent_dim,), device=params.device).normal_()
            z, kl_per_dim = _SampleAndKL.apply(params, eps)  # z = mu + sigma * eps, and the KL
            return {"log_px": self._log_px(z, x, y), "kl": kl_per_dim.sum(-1), "kl_per_dim": kl_per_dim,
                    "kl_exact": True}
        posterior = self.encode(x, y)
        z = posterior.rsample()  # reparameterization: z = mu + sigma * eps
        log_px = self._log_px(z, x, y)
        if self.exact_kl:
            kl_per_dim = self.prior_net.kl(posterior.base_dist)
            return {"log_px": log_px, "kl": kl_per_dim.sum(-1), "kl_per_dim": kl_per_dim, "kl_exact": True}
        kl = posterior.log_prob(z) - self.prior().log_prob(z)
        return {"log_px": log_px, "kl": kl, "kl_per_dim": None, "kl_exact": False}

    def log_weights(self, x: Tensor, k: int, y: Tensor | None = None,
                    reparam: bool = False) -> tuple[Tensor, Tensor]:
        """log w_j = log p(x, z_j) - log q(z_j|x), z_j ~ q(z|x): (log_w, log_px), each (k, B).

        reparam=True keeps the gradient path through z (IWAE training)."""
        posterior = self.encode(x, y)
        z = posterior.rsample((k,)) if reparam else posterior.sample((k,))  # (k, B, latent_dim)
        log_px = self._log_px(z, x, y)  # x broadcasts over the k samples
        return log_px + self.prior().log_prob(z) - posterior.log_prob(z), log_px

    def kl(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """KL(q(z|x) || p(z)) per image (B,): exact when closed form, else 64-sample Monte Carlo."""
        posterior = self.encode(x, y)
        if self.exact_kl:
            return self.prior_net.kl(posterior.base_dist).sum(-1)
        z = posterior.sample((64,))
        return (posterior.log_prob(z) - self.prior().log_prob(z)).mean(0)

    # -- pictures ----------------------------------------------------------------------------

    def _prior_draws(self, n: int, temperature: float, generator: torch.Generator | None) -> Tensor:
        """n draws from p(z) (n, D), reproducible from `generator` for every prior."""
        p = self.prior(temperature)
        if isinstance(p, MixtureSameFamily):  # pick a component, then draw from it
            probs = p.mixture_distribution.probs
            index = torch.multinomial(probs, n, replacement=True, generator=generator)
            base = p.component_distribution.base_dist
            loc, scale = base.loc[index], base.scale[index]
        else:
            loc, scale = p.base_dist.loc.expand(n, -1), p.base_dist.scale.expand(n, -1)
        return loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1]: prior draws decoded to pictures (decode_images)."""
        return self.decode_images(self._prior_draws(n, temperature, generator), y, generator)

class AE(VAE):
    """The deterministic autoencoder baseline: same networks, q(z|x) a point mass at
    encoder(x), so its KL is zero by convention and its loss the reconstruction term alone.

    `sample` still decodes N(0, I) draws, which shows the holes such an unregularized latent
    space has. It bounds nothing (has_bound False): log_weights refuses.
    """

    has_bound = False
    posterior = "point"

    def _head_outputs(self) -> int:
        return self.spec.latent_dim

    @property
    def exact_kl(self) -> bool:
        return True  # zero, exactly

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        return PointMass(self.head(self._condition(self.encoder(x), y)))

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        log_px = self._log_px(self.latent_mean(x, y), x, y)
        return {"log_px": log_px, "kl": torch.zeros_like(log_px), "kl_per_dim": None, "kl_exact": True}

    def log_weights(self, x, k, y=None, reparam=False):
        raise ValueError("model=ae is a deterministic autoencoder: it has no ELBO or IWAE bound "
                         "to evaluate; train a VAE (e.g. model=mlp) for eval-iwae")

    def kl(self, x, y=None):
        return self.log_weights(x, 1, y)


class HVAE(VAE):
    """Two stochastic layers (Burda et al. 2015): inference x -> z1 -> z2, generation
    p(z2) p(z1|z2) p(x|z1). z1 has latent_dim units, z2 latent_dim2; the z1 <-> z2 networks
    are MLPs with `hidden2` units. encode/decode/latent_mean work on z1."""

    layers = 2

    def __init__(self, spec: HVAESpec):
        super().__init__(spec)
        d1, d2 = spec.latent_dim, spec.latent_dim2
        self.q_z2 = blocks.mlp([d1, *spec.hidden2, 2 * d2], spec.body.activation)
        self.p_z1 = blocks.mlp([d2, *reversed(spec.hidden2), 2 * d1], spec.body.activation)

    def _prior_dim(self) -> int:
        return self.spec.latent_dim2

    @property
    def exact_kl(self) -> bool:
        return False

    def q2(self, z1: Tensor) -> Distribution:
        return _gaussian(self.q_z2(z1))

    def p1(self, z2: Tensor) -> Distribution:
        return _gaussian(self.p_z1(z2))

    def _log_joint_minus_q(self, x, y, q1, z1, z2, q2) -> tuple[Tensor, Tensor]:
        log_px = self._log_px(z1, x, y)
        log_pz = self.p1(z2).log_prob(z1) + self.prior().log_prob(z2)
        return log_px, log_pz - q1.log_prob(z1) - q2.log_prob(z2)

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        q1 = self.encode(x, y)
        z1 = q1.rsample()
        q2 = self.q2(z1)
        z2 = q2.rsample()
        log_px, minus_kl = self._log_joint_minus_q(x, y, q1, z1, z2, q2)
        return {"log_px": log_px, "kl": -minus_kl, "kl_per_dim": None, "kl_exact": False}

    def log_weights(self, x: Tensor, k: int, y: Tensor | None = None,
                    reparam: bool = False) -> tuple[Tensor, Tensor]:
        q1 = self.encode(x, y)
        z1 = q1.rsample((k,)) if reparam else q1.sample((k,))
        q2 = self.q2(z1)
        z2 = q2.rsample() if reparam else q2.sample()
        log_px, rest = self._log_joint_minus_q(x, y, q1, z1, z2, q2)
        return log_px + rest, log_px

    def kl(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        q1 = self.encode(x, y)
        z1 = q1.sample((64,))
        q2 = self.q2(z1)
        z2 = q2.sample()
        _, minus_kl = self._log_joint_minus_q(x, y, q1, z1, z2, q2)
        return -minus_kl.mean(0)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        z2 = self._prior_draws(n, temperature, generator)
        p1 = self.p1(z2).base_dist
        eps = torch.randn(p1.loc.shape, generator=generator, device=self.device)
        z1 = p1.loc + temperature * p1.scale * eps
        return self.decode_images(z1, y, generator)
