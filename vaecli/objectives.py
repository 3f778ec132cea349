"""Objectives: functions of (model, x) that return a loss to minimise and metrics.

`build(...)` gives the trainer one callable, objective(model, x, y, step), that owns the
KL schedule, free bits and the choice of bound, so the trainer never changes for a new one.
Metrics are detached tensors (no host sync here); all figures are nats per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .hooks import Callback

@dataclass
class KLSchedule:
    """The weight of the KL term at a training step.

    constant: beta.  linear: beta * min(1, step / warmup_steps) (KL warm-up, Bowman et al. 2016;
    Sønderby et al. 2016).  cyclic: the training run is split into `cycles` periods; in each the
    weight rises linearly from 0 to beta over the first `ratio` of the period, then stays
    (cyclical annealing, Fu et al. 2019).
    """

    schedule: str = "constant"
    beta: float = 1.0
    warmup_steps: int = 10_000
    cycles: int = 4
    ratio: float = 0.5
    total_steps: int = 1
    capacity: float = 0.0  # annealed capacity (Burgess et al. 2018): C_max in nats, 0 = off
    capacity_steps: int = 10_000
    capacity_gamma: float = 1000.0

    def capacity_at(self, step: int) -> float:
        """C(step) = capacity * min(1, step / capacity_steps)."""
        return self.capacity * min(1.0, step / max(self.capacity_steps, 1))

    def weight(self, step: int) -> float:
        if self.schedule == "linear":
            return self.beta * min(1.0, step / max(self.warmup_steps, 1))
        if self.schedule == "cyclic":
            period = max(self.total_steps / self.cycles, 1.0)
            tau = (step % period) / period
            return self.beta * min(1.0, tau / self.ratio)
        return self.beta


def elbo(model, x: Tensor, beta: float = 1.0, y: Tensor | None = None,
         free_bits: float = 0.0, capacity: tuple[float, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = -(E_q[log p(x|z)] - beta * KL), one reparameterized sample per image.

    free_bits = lambda > 0 (Kingma et al. 2016): the KL of each latent dimension enters the
    loss as max(lambda, its batch mean), so the encoder is not pushed below lambda nats per
    dimension; for a model with latent groups (model=ladder) the clamp is per group, at lambda
    times the group's size. `kl_clamped` is that term, `kl` the true KL. The reported `elbo` is always
    the true bound (beta = 1, no clamp). A model's `aux_loss` (not part of the bound) is added
    to the loss, and its `stats` (scalars such as codebook perplexity) join the metrics.
    capacity = (C, gamma) (Burgess et al. 2018, "Understanding disentangling in beta-VAE"): the KL
    term becomes gamma |KL - C|, the encoder held to C nats, which the schedule raises.
    """
    terms = model.terms(x, y)
    mean_log_px, mean_kl = terms["log_px"].mean(), terms["kl"].mean()  # each once: the loss reuses them
    metrics = {"elbo": (mean_log_px - mean_kl).detach(), "recon": -mean_log_px.detach(), "kl": mean_kl.detach()}
    if free_bits > 0:
        if "kl_groups" in terms:  # a hierarchy: lambda per unit, applied to each group's KL
            kl_term = terms["kl_groups"].mean(0).clamp(min=free_bits * terms["group_size"]).sum()
        elif terms["kl_per_dim"] is not None:
            kl_term = terms["kl_per_dim"].mean(0).clamp(min=free_bits).sum()
        else:
            raise ValueError("free bits need a KL per latent dimension or group (prior=normal, "
                             "model=mlp/conv/resnet/ladder)")
        metrics["kl_clamped"] = kl_term.detach()
    else:
        kl_term = mean_kl
    if capacity is not None:
        target, gamma = capacity
        loss = gamma * (mean_kl - target).abs() - mean_log_px
        metrics["capacity"] = torch.tensor(target, device=mean_kl.device)
    else:
        loss = beta * kl_term - mean_log_px
    if "aux_loss" in terms:  # a training loss outside the bound (VQ-VAE: commitment, codebook)
        loss = loss + terms["aux_loss"]
        metrics["aux_loss"] = terms["aux_loss"].detach()
    metrics.update({k: v.detach() for k, v in terms.get("stats", {}).items()})
    metrics["loss"] = loss.detach()
    return loss, metrics


def iwae(model, x: Tensor, k: int, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = -log (1/k) sum_j w_j (Burda et al. 2015), reparameterized; k = 1 is the ELBO."""
    log_w, log_px = model.log_weights(x, k, y, reparam=True)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)
    loss = -bound.mean()
    return loss, {
        "loss": loss.detach(),
        "iwae": bound.mean().detach(),
        "elbo": log_w.mean().detach(),  # the k samples' average log w: an ELBO estimate
        "recon": -log_px.mean().detach(),
        "kl": (log_px - log_w).mean().detach(),  # Monte Carlo KL
    }


LOG_2PI = math.log(2 * math.pi)


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) per dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor) -> dict[str, Tensor]:
    """The KL's three parts per image (Chen et al. 2018, "Isolating Sources of Disentanglement"),
    for z_i ~ q(z|x_i), i = 1..M of a minibatch, with the aggregate posterior q(z) and its marginals
    q(z_d) estimated by the minibatch's mixture: log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log M,
    likewise per dimension. Chen et al.'s minibatch-weighted sampling subtracts log(N M) instead (N:
    the data set's size), which moves MI by +log N, TC by (D - 1) log N and the dimension-wise KL by
    -D log N: constants that add up to zero and leave every gradient as it is, but make the reported
    terms hard to read. Returns (M,) tensors: mi = log q(z|x) - log q(z) (index-code mutual
    information), tc = log q(z) - sum_d log q(z_d) (total correlation), dim_kl = sum_d log q(z_d) -
    log p(z) with p = N(0, I); they add up to log q(z|x) - log p(z), the one-sample KL."""
    m = z.shape[0]
    pairs = _log_normal(z[:, None, :], mu[None], logvar[None])  # (M, M, D): log q(z_i,d | x_j)
    offset = math.log(m)
    log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - offset
    log_prod_qzd = (torch.logsumexp(pairs, dim=1) - offset).sum(-1)
    log_qz_x = _log_normal(z, mu, logvar).sum(-1)
    log_pz = (-0.5 * (LOG_2PI + z.square())).sum(-1)
    return {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzd, "dim_kl": log_prod_qzd - log_pz}


def btcvae(model, x: Tensor, y: Tensor | None, alpha: float, beta: float, gamma: float,
           weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """beta-TCVAE (Chen et al. 2018): loss = -E[log p(x|z)] + weight (alpha MI + beta TC + gamma
    dimension-wise KL), the three estimated on the minibatch (tc_decomposition); alpha = beta =
    gamma = 1 is the ELBO with a one-sample KL. `weight` is the KL schedule's (warm-up) over all
    three. The reported elbo is the true one-sample bound (its KL the sum of the three parts)."""
    posterior = model.encode(x, y).base_dist
    mu, sigma = posterior.loc, posterior.scale
    z = posterior.rsample()
    log_px = model.decode(z, y).log_prob(x)
    parts = {key: value.mean() for key, value in tc_decomposition(z, mu, 2 * sigma.log()).items()}
    mean_log_px = log_px.mean()
    kl = parts["mi"] + parts["tc"] + parts["dim_kl"]
    loss = weight * (alpha * parts["mi"] + beta * parts["tc"] + gamma * parts["dim_kl"]) - mean_log_px
    metrics = {"elbo": (mean_log_px - kl).detach(), "recon": -mean_log_px.detach(), "kl": kl.detach(),
               **{key: value.detach() for key, value in parts.items()}, "loss": loss.detach()}
    return loss, metrics


def _one_sample(model, x: Tensor, y: Tensor | None):
    """The diagonal Gaussian posterior, one reparameterized z and the batch means of log p(x|z)
    and of the closed-form KL: what the objectives that add a term to the ELBO share."""
    posterior = model.encode(x, y).base_dist
    z = posterior.rsample()
    mean_log_px = model.decode(z, y).log_prob(x).mean()
    mean_kl = model.prior_net.kl(posterior).sum(-1).mean()
    return posterior, z, mean_log_px, mean_kl


def _elbo_metrics(mean_log_px: Tensor, mean_kl: Tensor) -> dict[str, Tensor]:
    return {"elbo": (mean_log_px - mean_kl).detach(), "recon": -mean_log_px.detach(), "kl": mean_kl.detach()}


def dip_regularizer(mu: Tensor, sigma: Tensor, kind: str, lambda_od: float, lambda_d: float) -> Tensor:
    """DIP-VAE's penalty (Kumar et al. 2018) on a covariance C of the batch's codes:
    lambda_od * sum of squared off-diagonal entries + lambda_d * sum of (diagonal - 1)^2. kind "i":
    C = Cov[mu(x)] (the posterior means'; E[mu mu^T] - E[mu] E[mu]^T over the batch, as
    disentanglement_lib); "ii": C = E[diag(sigma(x)^2)] + Cov[mu(x)], the aggregate posterior's."""
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / mu.shape[0]
    if kind == "ii":
        cov = cov + torch.diag(sigma.square().mean(0))
    diagonal = torch.diagonal(cov)
    off = cov - torch.diag(diagonal)
    return lambda_od * off.square().sum() + lambda_d * (diagonal - 1).square().sum()


def dipvae(model, x: Tensor, y: Tensor | None, kind: str, lambda_od: float, lambda_d: float,
           beta: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """DIP-VAE: the ELBO's loss (beta and the schedule on its KL) plus dip_regularizer; the
    reported elbo is the bound itself."""
    posterior, _, mean_log_px, mean_kl = _one_sample(model, x, y)
    penalty = dip_regularizer(posterior.loc, posterior.scale, kind, lambda_od, lambda_d)
    loss = beta * mean_kl - mean_log_px + penalty
    return loss, {**_elbo_metrics(mean_log_px, mean_kl), "dip": penalty.detach(), "loss": loss.detach()}


def permute_dims(z: Tensor) -> Tensor:
    """Each latent dimension's values permuted across the batch on its own (Kim & Mnih 2018,
    Algorithm 1): draws of the product of the marginals prod_d q(z_d) when z are draws of q(z)."""
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


class TrainedPart(Callback):
    """A network an objective trains beside the model (FactorVAE's critic, the PatchGAN
    discriminator, the recipe's learned log-variance), with its own Adam.

    Its step runs after the model's (on_step_end): on `pending`, a loss with its graph that the
    objective left (the critics), or on the gradients the model's backward already gave its
    parameters (`from_model`: the log-variance). The step is skipped with the model's (a rejected
    step) or when its own loss or gradients are not finite, decided on the device; under torchrun its
    gradients are averaged over ranks. lr None follows the model optimizer's current learning rate.
    Its weights and Adam state are kept in trainer.safetensors under "NAME.", so a resumed run
    continues bit for bit."""

    name = ""
    from_model = False  # its gradients come from the model's loss (no pending loss of its own)

    def __init__(self, net: torch.nn.Module, lr: float | None, betas: tuple[float, float] = (0.5, 0.9)):
        self.net, self.lr, self.betas = net, lr, tuple(betas)
        self.optimizer: torch.optim.Adam | None = None
        self.pending: Tensor | None = None  # this step's loss, with its graph

    def _ready(self, device: torch.device) -> None:
        if self.optimizer is None:
            self.net.to(device)
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr or 1e-3, betas=self.betas,
                                              fused=device.type in ("cpu", "cuda"))

    def on_train_start(self, trainer) -> None:
        self._ready(trainer.device)

    def on_step_end(self, trainer) -> None:
        loss, self.pending = self.pending, None
        if loss is None and not self.from_model:
            return
        params = list(self.net.parameters())
        if loss is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if trainer.dist.world > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            grads = [g.view_as(p) / trainer.dist.world for g, p in zip(flat.split([p.numel() for p in params]), params)]
        for p, g in zip(params, grads):
            p.grad = g
        checked = loss.detach() if loss is not None else torch.zeros((), device=grads[0].device)
        total = torch.stack([g.sum() for g in grads] + [checked.float()]).sum()
        accepted = ((total - total) == 0) & torch.as_tensor(trainer.state.applied, device=total.device)
        if self.lr is None:
            for group in self.optimizer.param_groups:
                group["lr"] = trainer.optimizer.param_groups[0]["lr"]
        if self.optimizer.defaults["fused"]:
            self.optimizer.found_inf = (~accepted).float()  # the fused Adam skips on the device
            self.optimizer.step()
        elif bool(accepted):
            self.optimizer.step()
        if self.from_model:
            self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self, trainer) -> dict[str, Tensor]:
        tensors = {f"net.{key}": value.detach().clone() for key, value in self.net.state_dict().items()}
        for i, param in enumerate(self.net.parameters()):
            for key, value in self.optimizer.state.get(param, {}).items():
                tensors[f"adam.{i}.{key}"] = value.detach().clone()
        return tensors

    def load_state_dict(self, trainer, tensors: dict[str, Tensor]) -> None:
        self._ready(trainer.device)
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        params = list(self.net.parameters())
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, what = key.split(".")
                self.optimizer.state[params[int(index)]][what] = value.to(params[int(index)].device).clone()


class TCDiscriminator(TrainedPart):
    """FactorVAE's density-ratio critic (Kim & Mnih 2018), a trainer feature the objective brings:
    an MLP on codes, `layers` x `width` with leaky ReLU 0.2 and two logits (class 0: a draw of the
    aggregate posterior q(z), class 1: of prod_d q(z_d), the batch's codes permuted per dimension);
    disentanglement_lib's is 6 x 1000, trained by Adam (lr 1e-4, betas 0.5 / 0.9). The TC estimate
    is E_q[logit_0 - logit_1] (= log q(z) / prod_d q(z_d) for the optimal critic).

    losses(z) is called inside the objective: the TC with gradients to the encoder only, and the
    critic's cross-entropy on the detached codes and their permutation (both at this step's critic
    weights, as disentanglement_lib's simultaneous update); its step is TrainedPart's."""

    name = "discriminator"

    def __init__(self, latent_dim: int, width: int = 1000, layers: int = 6, lr: float = 1e-4):
        dims = [latent_dim, *([width] * layers)]
        stack: list[torch.nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            stack += [torch.nn.Linear(a, b), torch.nn.LeakyReLU(0.2)]
        super().__init__(torch.nn.Sequential(*stack, torch.nn.Linear(dims[-1], 2)), lr, (0.5, 0.9))

    def losses(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The TC estimate (differentiable in z, not in the critic) and the critic's metrics."""
        self.net.requires_grad_(False)
        logits = self.net(z)
        self.net.requires_grad_(True)
        tc = (logits[:, 0] - logits[:, 1]).float().mean()
        codes = z.detach()
        both = self.net(torch.cat([codes, permute_dims(codes)])).float()
        target = torch.cat([torch.zeros(len(codes), dtype=torch.long, device=z.device),
                            torch.ones(len(codes), dtype=torch.long, device=z.device)])
        self.pending = torch.nn.functional.cross_entropy(both, target)
        accuracy = (both.argmax(1) == target).float().mean()
        return tc, {"disc_loss": self.pending.detach(), "disc_acc": accuracy}


def patchgan(channels: int, width: int = 64, layers: int = 3) -> torch.nn.Sequential:
    """The PatchGAN discriminator of pix2pix as taming-transformers' NLayerDiscriminator: a 4x4
    stride-2 conv and LeakyReLU 0.2, then `layers` - 1 stride-2 and one stride-1 4x4 convs with
    BatchNorm (widths doubling up to 8x), then a 4x4 conv to one logit per patch; weights N(0, 0.02),
    BatchNorm scales N(1, 0.02)."""
    stack: list[torch.nn.Module] = [torch.nn.Conv2d(channels, width, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, layers + 1):
        previous, mult = mult, min(2 ** n, 8)
        stack += [torch.nn.Conv2d(width * previous, width * mult, 4, 2 if n < layers else 1, 1, bias=False),
                  torch.nn.BatchNorm2d(width * mult), torch.nn.LeakyReLU(0.2)]
    stack.append(torch.nn.Conv2d(width * mult, 1, 4, 1, 1))
    net = torch.nn.Sequential(*stack)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight, 1.0, 0.02)
            torch.nn.init.zeros_(module.bias)
    return net


class PatchDiscriminator(TrainedPart):
    """The latent-diffusion recipe's adversary (Esser et al. 2021; Rombach et al. 2022): a PatchGAN
    (`patchgan`) trained with the hinge loss 0.5 (E relu(1 - D(x)) + E relu(1 + D(x^))) on the inputs
    and the detached reconstructions of this step (a simultaneous update, like FactorVAE's critic)."""

    name = "discriminator"

    def __init__(self, channels: int, width: int = 64, layers: int = 3, lr: float | None = None,
                 betas: tuple[float, float] = (0.5, 0.9)):
        super().__init__(patchgan(channels, width, layers), lr, betas)

    def losses(self, x: Tensor, x_hat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's term -E D(x^) (differentiable in x^, not in D) and the hinge loss pending."""
        self.net.requires_grad_(False)
        g_loss = -self.net(x_hat).float().mean()
        self.net.requires_grad_(True)
        # real and fake in separate passes, as taming's discriminator step runs them: each BatchNorm
        # normalises a batch of one kind (one mixed batch lets D separate them by batch statistics)
        real, fake = self.net(x.detach()).float(), self.net(x_hat.detach()).float()
        self.pending = 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
        return g_loss, {"disc_loss": self.pending.detach(), "logits_real": real.mean().detach(),
                        "logits_fake": fake.mean().detach()}


class LogVariance(TrainedPart):
    """The recipe's learned scalar log-variance s of the pixel term: nll = rec / e^s + s per pixel
    (for L1 that is a Laplace likelihood of scale e^s, up to log 2 a pixel). Trained by the model's
    loss with its own Adam (the model optimizer's learning rate, the objective's betas)."""

    name = "pixel_logvar"
    from_model = True

    def __init__(self, init: float = 0.0, betas: tuple[float, float] = (0.5, 0.9)):
        net = torch.nn.Module()
        net.logvar = torch.nn.Parameter(torch.tensor(float(init)))
        super().__init__(net, None, betas)

    @property
    def value(self) -> Tensor:
        return self.net.logvar


def adaptive_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float) -> Tensor:
    """The latent-diffusion adaptive weight of the generator term: ||grad_W nll|| / (||grad_W g|| +
    1e-4) at the decoder's last weight W, clamped to [0, 1e4], detached, times disc_weight."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(nll_grads) / (torch.linalg.vector_norm(g_grads) + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


def factorvae(model, x: Tensor, y: Tensor | None, gamma: float, critic: TCDiscriminator,
              beta: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """FactorVAE (Kim & Mnih 2018, Eq. 2): the ELBO's loss (beta and the schedule on its KL) plus
    gamma times the critic's estimate of the total correlation of q(z); the reported elbo is the
    bound itself, `tc` the estimate, `disc_loss` / `disc_acc` the critic's cross-entropy and
    accuracy (0.69 / 0.5: it cannot tell q(z) from its factorized version)."""
    _, z, mean_log_px, mean_kl = _one_sample(model, x, y)
    tc, critic_metrics = critic.losses(z)
    loss = beta * mean_kl - mean_log_px + gamma * tc
    return loss, {**_elbo_metrics(mean_log_px, mean_kl), "tc": tc.detach(), **critic_metrics, "loss": loss.detach()}


@dataclass
class Perceptual:
    """objective=perceptual's settings and parts (the latent-diffusion autoencoder's loss, Rombach et
    al. 2022, as taming-transformers' LPIPSWithDiscriminator computes it)."""

    pixel: str = "l1"  # l1 | l2
    perceptual: str = "none"  # none | msssim | lpips
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    logvar: "LogVariance | None" = None  # the learned log-variance (None: fixed at logvar_init)
    logvar_init: float = 0.0
    lpips_weights: str | None = None
    discriminator: "PatchDiscriminator | None" = None
    disc_start: int = 0
    disc_weight: float = 0.5
    _lpips: torch.nn.Module | None = None

    def distance(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """The perceptual term per image (B,): 1 - MS-SSIM, or LPIPS."""
        if self.perceptual == "msssim":
            from .perceptual import ms_ssim

            return 1 - ms_ssim(x, x_hat)
        if self._lpips is None:
            from .perceptual import LPIPS

            self._lpips = LPIPS(self.lpips_weights)
        self._lpips.to(x.device)
        return self._lpips(x, x_hat)


def perceptual(model, x: Tensor, y: Tensor | None, o: Perceptual, weight: float,
               step: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The latent-diffusion autoencoder's loss: per pixel rec = |x - x^| (or squared) plus
    perceptual_weight times the image's perceptual distance (1 - MS-SSIM or LPIPS; broadcast to its
    pixels, as taming's LPIPSWithDiscriminator adds p_loss to rec_loss), nll = rec / e^s + s with the
    learned scalar log-variance s, summed over pixels and averaged over images; plus kl_weight x the
    closed-form KL to N(0, I) (x the KL schedule); from step disc_start, the generator's term
    -E D(x^) weighted adaptively (adaptive_weight). x^ is the decoder's mean image, z one
    reparameterized draw of q(z|x). Not a likelihood: the summary says so (Objective.measure)."""
    posterior = model.encode(x, y)
    z = posterior.rsample()
    x_hat = model.decode(z, y).mean
    rec = (x - x_hat).abs() if o.pixel == "l1" else (x - x_hat).square()
    metrics = {"pixel": rec.detach().flatten(1).sum(1).mean()}
    if o.perceptual != "none":
        distance = o.distance(x, x_hat)
        rec = rec + o.perceptual_weight * distance.view(-1, *([1] * (rec.dim() - 1)))
        metrics[o.perceptual] = distance.detach().mean()
    logvar = o.logvar.value if o.logvar is not None else torch.tensor(o.logvar_init, device=x.device)
    nll_loss = (rec / logvar.exp() + logvar).flatten(1).sum(1).mean()
    kl = model.prior_net.kl(posterior.base_dist).sum(-1).mean()
    loss = nll_loss + o.kl_weight * weight * kl
    metrics.update(nll=nll_loss.detach(), kl=kl.detach(), logvar=logvar.detach())
    if o.discriminator is not None:
        active = step >= o.disc_start
        zero = torch.zeros((), device=x.device)
        g_loss, d_metrics = o.discriminator.losses(x, x_hat) if active else (zero, {})
        d_weight = adaptive_weight(nll_loss, g_loss, model.last_layer, o.disc_weight) if active else zero
        loss = loss + d_weight * g_loss
        metrics.update(g_loss=g_loss.detach(), d_weight=d_weight,
                       disc_loss=d_metrics.get("disc_loss", zero), logits_real=d_metrics.get("logits_real", zero),
                       logits_fake=d_metrics.get("logits_fake", zero))
    metrics["loss"] = loss.detach()
    return loss, metrics


MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # the IMQ kernel's bandwidths (Tolstikhin et al.'s code)


def mmd(a: Tensor, b: Tensor, kernel: str = "imq", scale: float = 1.0) -> Tensor:
    """The unbiased estimate of MMD^2 between the distributions of the rows of a and of b (n each;
    Gretton et al. 2012): the mean kernel within a and within b (i != j) minus twice the mean across.
    kernel "imq" (WAE, Tolstikhin et al. 2018): k(u, v) = sum_s C_s / (C_s + |u - v|^2), C_s = 2 d
    scale s for s in MMD_SCALES (d the dimension, scale the prior's variance: 1); "rbf" (InfoVAE,
    Zhao et al. 2019): k(u, v) = exp(-|u - v|^2 / (2 d scale))."""
    n, d = a.shape
    both = torch.cat([a, b]).float()
    norms = both.square().sum(1)
    sq = (norms[:, None] + norms[None] - 2 * both @ both.T).clamp(min=0)
    base = 2.0 * d * scale
    k = sum(base * s / (base * s + sq) for s in MMD_SCALES) if kernel == "imq" else torch.exp(-sq / base)
    off = 1.0 - torch.eye(n, device=k.device)
    within = ((k[:n, :n] * off).sum() + (k[n:, n:] * off).sum()) / (n * (n - 1))
    return within - 2 * k[:n, n:].mean()


def infovae(model, x: Tensor, y: Tensor | None, alpha: float, lam: float, kernel: str, scale: float,
            weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """InfoVAE (Zhao et al. 2019, Eq. 6 with the MMD divergence): loss = -E[log p(x|z)] +
    (1 - alpha) KL + (alpha + lambda - 1) MMD(q(z), p(z)), MMD between the batch's codes and as many
    N(0, I) draws; `weight` (the KL schedule) on the KL. alpha = 0, lambda = 1 is the ELBO."""
    _, z, mean_log_px, mean_kl = _one_sample(model, x, y)
    divergence = mmd(z, torch.randn_like(z), kernel, scale)
    loss = (1 - alpha) * weight * mean_kl - mean_log_px + (alpha + lam - 1) * divergence
    return loss, {**_elbo_metrics(mean_log_px, mean_kl), "mmd": divergence.detach(), "loss": loss.detach()}


def wae(model, x: Tensor, y: Tensor | None, lam: float, kernel: str, scale: float) -> tuple[Tensor, dict[str, Tensor]]:
    """WAE-MMD (Tolstikhin et al. 2018): loss = -E[log p(x|z)] + lambda MMD(q(z), p(z)), no KL: the
    aggregate posterior, not each q(z|x), is matched to the prior. With model=ae the encoder is
    deterministic (the paper's choice); with a Gaussian encoder its ELBO is still reported (a bound
    that is not trained)."""
    posterior = model.encode(x, y)
    z = posterior.rsample()
    mean_log_px = model.decode(z, y).log_prob(x).mean()
    divergence = mmd(z, torch.randn_like(z), kernel, scale)
    loss = lam * divergence - mean_log_px
    metrics = {"recon": -mean_log_px.detach(), "mmd": divergence.detach(), "loss": loss.detach()}
    if model.has_bound:
        mean_kl = model.prior_net.kl(posterior.base_dist).sum(-1).mean().detach()
        metrics.update(elbo=mean_log_px.detach() - mean_kl, kl=mean_kl)
    return loss, metrics


# Each objective registers its loss once, beside its maths, with what the trainer must know of it:
# `terms`, its own metric names (the summary's objective_terms); `scheduled`, whether the KL weight
# (beta and kl.schedule) applies; `batch_statistic`, whether its loss holds a statistic of the whole
# batch (the minibatch's mixture of posteriors, a covariance or permutation of the codes, an MMD
# between n codes and n prior draws). Those train on whole batches only: a short last batch would
# make the statistic degenerate (MMD's n(n-1) is 0 at n = 1) or noisier than the rest, so the
# trainer drops it (the shuffled order differs every epoch, so no image is left out for good).
# Decided once, for all of them.


@dataclass(frozen=True)
class Loss:
    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]  # (objective, model, x, y, weight, step)
    terms: tuple[str, ...] = ()
    scheduled: bool = True
    batch_statistic: bool = False


LOSSES: dict[str, Loss] = {}


def loss(name: str, terms: tuple[str, ...] = (), scheduled: bool = True, batch_statistic: bool = False):
    """Decorator: register `fn(objective, model, x, y, weight, step)` as objective=`name`'s loss."""

    def register(fn):
        LOSSES[name] = Loss(fn, terms, scheduled, batch_statistic)
        return fn

    return register


@loss("elbo")
def _elbo(o, model, x, y, weight, step):
    capacity = (o.schedule.capacity_at(step), o.schedule.capacity_gamma) if o.schedule.capacity > 0 else None
    return elbo(model, x, weight, y, o.free_bits, capacity)


@loss("iwae", terms=("iwae",), scheduled=False)
def _iwae(o, model, x, y, weight, step):
    return iwae(model, x, o.k, y)


@loss("btcvae", terms=("mi", "tc", "dim_kl"), batch_statistic=True)
def _btcvae(o, model, x, y, weight, step):
    return btcvae(model, x, y, *o.tc_weights, weight)


@loss("dipvae", terms=("dip",), batch_statistic=True)
def _dipvae(o, model, x, y, weight, step):
    return dipvae(model, x, y, *o.dip, weight)


@loss("factorvae", terms=("tc", "disc_loss", "disc_acc"), batch_statistic=True)
def _factorvae(o, model, x, y, weight, step):
    return factorvae(model, x, y, o.gamma, o.critic, weight)


@loss("perceptual", terms=("pixel", "msssim", "lpips", "nll", "logvar", "g_loss", "d_weight", "disc_loss"))
def _perceptual(o, model, x, y, weight, step):
    return perceptual(model, x, y, o.perceptual, weight, step)


@loss("infovae", terms=("mmd",), batch_statistic=True)
def _infovae(o, model, x, y, weight, step):
    return infovae(model, x, y, *o.mmd, weight)


@loss("wae", terms=("mmd",), scheduled=False, batch_statistic=True)
def _wae(o, model, x, y, weight, step):
    return wae(model, x, y, *o.mmd[1:])


BATCH_STATISTIC = frozenset(name for name, entry in LOSSES.items() if entry.batch_statistic)


class Objective:
    """objective(model, x, y, step) -> (loss, metrics) for the trainer: the registered loss of
    `name` (LOSSES) with its settings. `callbacks`: the trainer features the objective brings
    (FactorVAE's critic, trained beside the model); `terms`: the names of its own metrics, which
    the training summary reports."""

    def __init__(self, name: str = "elbo", k: int = 1, schedule: KLSchedule | None = None,
                 free_bits: float = 0.0, tc_weights: tuple[float, float, float] = (1.0, 6.0, 1.0),
                 dip: tuple[str, float, float] = ("i", 10.0, 100.0), gamma: float = 10.0,
                 critic: TCDiscriminator | None = None, mmd: tuple[float, float, str, float] = (0.0, 1000.0, "imq", 1.0),
                 perceptual: Perceptual | None = None, adam_betas: tuple[float, float] = (0.9, 0.999)):
        if name not in LOSSES:
            raise ValueError(f"unknown objective {name!r}")
        self.name, self.k, self.free_bits, self.loss = name, k, free_bits, LOSSES[name]
        self.schedule = schedule or KLSchedule()
        self.tc_weights, self.dip, self.gamma, self.critic, self.mmd = tc_weights, dip, gamma, critic, mmd
        self.perceptual, self.adam_betas = perceptual, tuple(adam_betas)  # adam_betas: the model optimizer's
        parts = [critic] + ([perceptual.logvar, perceptual.discriminator] if perceptual is not None else [])
        self.callbacks = tuple(part for part in parts if part is not None)
        self.terms = self.loss.terms + (("capacity",) if self.schedule.capacity > 0 else ())
        self.whole_batches = self.loss.batch_statistic  # the trainer drops a short last batch

    def measure(self, model_measure):
        """What the trained model's figures are (bounds.Measure): the model's own, or, for a loss
        that is not a likelihood, not a bound to compare with one."""
        if self.perceptual is None:
            return model_measure
        from .bounds import Measure

        p = self.perceptual
        names = {"msssim": "MS-SSIM", "lpips": "LPIPS"}
        trained = p.pixel.upper() + (f" + {p.perceptual_weight:g} x {names[p.perceptual]}" if p.perceptual != "none"
                                     else "") + (" + PatchGAN" if p.discriminator is not None else "")
        return Measure(False, f"trained on {trained}, KL weight {p.kl_weight:g}: not a likelihood; the ELBO scores "
                              "reconstructions, it is no bound to compare (vae eval-recon: PSNR, SSIM, LPIPS, rFID)")

    def __call__(self, model, x: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        weight = self.schedule.weight(step) if self.loss.scheduled else 1.0
        loss, metrics = self.loss.fn(self, model, x, y, weight, step)
        if self.loss.scheduled and self.schedule.schedule != "constant":
            metrics["kl_weight"] = torch.tensor(weight, device=loss.device)
        return loss, metrics


def _given(value, default: float) -> float:
    return float(value) if value is not None else default


def build(objective_cfg, kl_cfg, beta: float, total_steps: int, latent_dim: int = 0,
          image_channels: int = 1) -> Objective:
    """From the config sections `objective` (the chosen member's card: objectives_config.py) and
    `kl`, the run length (cyclic schedule), the model's latent size (FactorVAE's critic reads
    codes) and the images' channels (the PatchGAN reads images)."""
    def key(name: str, default: float) -> float:  # a key the chosen objective does not have: its default
        return _given(getattr(objective_cfg, name, None), default)

    name = objective_cfg.name
    schedule = KLSchedule(kl_cfg.schedule, beta, kl_cfg.warmup_steps, kl_cfg.cycles, kl_cfg.ratio, total_steps,
                          kl_cfg.capacity, kl_cfg.capacity_steps, kl_cfg.capacity_gamma)
    weights = (key("alpha", 1.0), key("beta", 6.0), key("gamma", 1.0))
    kind = getattr(objective_cfg, "type", None) or "i"
    lambda_od = key("lambda_od", 10.0)
    lambda_d = key("lambda_d", lambda_od * (10.0 if kind == "i" else 1.0))  # disentanglement_lib's lambda_d_factor
    critic = (TCDiscriminator(latent_dim, int(key("disc_width", 1000)), int(key("disc_layers", 6)), key("disc_lr", 1e-4))
              if name == "factorvae" else None)
    mmd_settings = (key("alpha", 0.0), key("lambda_mmd", 1000.0 if name == "infovae" else 100.0),
                    getattr(objective_cfg, "kernel", None) or "imq", key("kernel_scale", 1.0))
    betas = tuple(getattr(objective_cfg, "adam_betas", None) or (0.9, 0.999))
    settings = _perceptual_settings(objective_cfg, image_channels, betas) if name == "perceptual" else None
    return Objective(name, int(key("k", 1)), schedule, kl_cfg.free_bits, weights, (kind, lambda_od, lambda_d),
                     key("gamma", 10.0), critic, mmd_settings, settings, betas)


def _perceptual_settings(o, channels: int, betas: tuple[float, float]) -> Perceptual:
    disc = (PatchDiscriminator(channels, o.disc_channels, o.disc_layers, o.disc_lr, betas) if o.adversarial else None)
    return Perceptual(o.pixel, o.perceptual, o.perceptual_weight, o.kl_weight,
                      LogVariance(o.logvar_init, betas) if o.learn_logvar else None, o.logvar_init, o.lpips_weights,
                      disc, o.disc_start, o.disc_weight)


@torch.no_grad()
def iwae_bound(model, x: Tensor, k: int, chunk: int | None = None, y: Tensor | None = None,
               also: tuple[int, ...] = ()) -> dict[str, Tensor]:
    """The importance-weighted bound log (1/k) sum_j w_j (Burda et al. 2015), per image.

    The k samples are drawn `chunk` at a time and combined with a running logsumexp, so memory
    is O(chunk * B) whatever k is. Returns per-image tensors (B,): `iwae`, `elbo`
    (E_q log p(x|z) - KL, the k samples averaged), `recon` (-E_q log p(x|z)) and `kl`
    (exact when the model has a closed form, else the Monte Carlo average over the k samples).
    `also` lists smaller k whose bounds come from the first k' of the same samples (nested, so
    the bound's growth with k is seen without the noise of fresh draws): `iwae_at` {k': (B,)}.
    `iwae_mc_se` (B,) is each image's Monte Carlo standard error of the bound (the delta method
    on the mean weight: sqrt((k sum_j p_j^2 - 1) / (k - 1)) with p_j the normalized weights).
    """
    chunk = min(chunk or k, k)
    stops = sorted({j for j in also if 1 <= j < k} | {k})
    lse = lse_sq = None
    iwae_at: dict[int, Tensor] = {}
    sum_log_px = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
    sum_log_w = torch.zeros_like(sum_log_px)
    done = 0
    while done < k:
        m = min(chunk, next(j for j in stops if j > done) - done)  # chunks end on every stop
        log_w, log_px = model.log_weights(x, m, y)
        log_w = log_w.double()
        part, part_sq = torch.logsumexp(log_w, dim=0), torch.logsumexp(2 * log_w, dim=0)
        lse = part if lse is None else torch.logaddexp(lse, part)
        lse_sq = part_sq if lse_sq is None else torch.logaddexp(lse_sq, part_sq)
        sum_log_px += log_px.double().sum(0)
        sum_log_w += log_w.sum(0)
        done += m
        if done in stops:
            iwae_at[done] = lse - math.log(done)
    recon = -sum_log_px / k
    if model.exact_kl:
        kl = model.kl(x, y).double()  # closed form: lower variance than the sample average
    else:
        kl = -recon - sum_log_w / k
    mc_se = ((k * torch.exp(lse_sq - 2 * lse) - 1).clamp(min=0) / max(k - 1, 1)).sqrt()
    return {"iwae": iwae_at[k], "elbo": -recon - kl, "recon": recon, "kl": kl, "iwae_at": iwae_at,
            "iwae_mc_se": mc_se}
