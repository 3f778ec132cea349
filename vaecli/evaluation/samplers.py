"""Samplers of a trained model's latents: where `vae sample` and `vae eval-samples` draw z from.

`prior` is the model's own p(z) (model.sample). The fitted ones are ex-post density estimates of
the aggregate posterior q(z) = E_x q(z|x), fitted after training to the training set's latents so
that samples land where images were encoded instead of in the prior's holes:
- `gmm`: a Gaussian mixture (Ghosh et al. 2020, "From variational to deterministic autoencoders",
  sec. 4: it is what makes a deterministic autoencoder generative), fitted by scikit-learn's EM;
- `two_stage`: a second small VAE on z with a learned decoder variance (Dai & Wipf 2019,
  "Diagnosing and enhancing VAE models"); z ~ N(g(u), gamma I) with u ~ N(0, I), then an image.

Every sampler answers `images(model, n, temperature, generator, y)`; a fitted one also `draw(n,
temperature, generator)` -> z (n, latent_dim). A fitted sampler lives in the run folder as
sampler.NAME.safetensors, tied to the model file it was fitted on by that file's SHA-256 (as a
VQ-VAE's prior is tied to its codebook): loading it for another checkpoint is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import UsageError

FORMAT = "1"
NAMES = ("prior", "gmm", "two_stage")


def file_name(name: str) -> str:
    return f"sampler.{name}.safetensors"


def fingerprint(model_file: Path) -> str:
    """SHA-256 of the model file: a fitted sampler belongs to exactly these weights."""
    digest = hashlib.sha256()
    with open(model_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model(model) -> None:
    """Refuse (UsageError) a model whose latents an ex-post sampler cannot stand in for."""
    if model.discrete:
        raise UsageError("this model's latents are discrete codes, and its prior over codes is its sampler "
                         "(a VQ-VAE: vae train-prior); fit-sampler fits a density to continuous latents")
    if model.groups > 1:
        raise UsageError(f"this model has {model.groups} latent groups (a hierarchy, each group's prior depends on "
                         "the one above); fit-sampler fits a density to one latent vector: use sample --temperature")


class Prior:
    """The model's own prior p(z) (N(0, I), a mixture, a VampPrior, a ladder's top-down groups)."""

    name = "prior"

    def images(self, model, n: int, temperature, generator: torch.Generator | None, y: Tensor | None) -> Tensor:
        return model.sample(n, temperature=temperature, generator=generator, y=y)


class Fitted(nn.Module):
    """A density over latents fitted after training; decoded by the model like prior draws.
    Subclasses give `name` and `draw(n, temperature, generator)` -> z (n, latent_dim)."""

    name = ""

    @torch.no_grad()
    def images(self, model, n: int, temperature, generator: torch.Generator | None, y: Tensor | None) -> Tensor:
        if not isinstance(temperature, (int, float)):
            raise UsageError(f"the {self.name} sampler takes one --temperature")
        z = self.draw(n, float(temperature), generator).to(model.device)
        return model.decode_images(z, y, generator)


class GMM(Fitted):
    """A mixture of K full- (or diagonal-) covariance Gaussians over z; temperature scales every
    component's standard deviations (the means stay)."""

    name = "gmm"

    def __init__(self, components: int, dim: int):
        super().__init__()
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, dim))
        self.register_buffer("scale_tril", torch.eye(dim).expand(components, dim, dim).clone())

    def draw(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        device = self.means.device
        index = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn((n, self.means.shape[1], 1), generator=generator, device=device)
        return self.means[index] + temperature * (self.scale_tril[index] @ eps).squeeze(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) under the mixture, (B,)."""
        from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

        mixture = MixtureSameFamily(Categorical(probs=self.weights),
                                    MultivariateNormal(self.means, scale_tril=self.scale_tril))
        return mixture.log_prob(z)


class TwoStage(Fitted):
    """The second stage of Dai & Wipf's two-stage VAE: q(u|z) = N(mu(z), sigma(z)^2), p(u) = N(0, I),
    p(z|u) = N(g(u), gamma I) with gamma learned (it shrinks towards the data's own noise, which is
    what lets the second stage match q(z) where the first did not)."""

    name = "two_stage"

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        from ..models.blocks import mlp

        self.encoder = mlp([dim, *hidden, 2 * dim], "relu")
        self.decoder = mlp([dim, *reversed(hidden), dim], "relu")
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.register_buffer("shift", torch.zeros(dim))  # z is standardized for the networks
        self.register_buffer("scale", torch.ones(dim))

    def loss(self, z: Tensor) -> Tensor:
        """The second stage's negative ELBO per latent vector, (B,), in nats."""
        x = (z - self.shift) / self.scale
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        logvar = logvar.clamp(-30, 20)
        u = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_gamma = self.log_gamma.clamp(min=-12.0)  # exp(-12): far below any latent's spread
        recon = 0.5 * ((x - self.decoder(u)) ** 2 * torch.exp(-log_gamma) + log_gamma + math.log(2 * math.pi)).sum(-1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)
        return recon + kl + torch.log(self.scale).sum()  # in z's units: the standardization's Jacobian

    def draw(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """z ~ p(z|u) p(u): the decoder's mean g(u) plus its learned noise sqrt(gamma) * eps (both
        scaled by the temperature). Where the latents fill their space the second stage can
        collapse onto a Gaussian (gamma ~ 1, g constant), and this is then still a Gaussian fit of
        q(z); drawing g(u) alone would give one image over and over."""
        dim, device = self.shift.shape[0], self.shift.device
        u = temperature * torch.randn((n, dim), generator=generator, device=device)
        noise = torch.randn((n, dim), generator=generator, device=device)
        x = self.decoder(u) + temperature * self.log_gamma.clamp(min=-12.0).mul(0.5).exp() * noise
        return x * self.scale + self.shift


# ---------------------------------------------------------------------------------------------
# Fitting


@torch.no_grad()
def latents(model, data, fit_on: str, generator: torch.Generator, batch_size: int = 500) -> Tensor:
    """The training images' latents (N, latent_dim) on the CPU: posterior means, or one draw each."""
    out = []
    for start in range(0, len(data), batch_size):
        x = data.to_float(data.images[start:start + batch_size].to(model.device), generator)
        y = None if data.labels is None or not model.conditional else data.labels[start:start + batch_size].to(model.device)
        q = model.encode(x, y)
        out.append((q.mean if fit_on == "mean" else q.sample()).float().cpu())
    return torch.cat(out)


def _em(z: Tensor, components: int, covariance: str, max_iter: int, seed: int):
    """scikit-learn's GaussianMixture (k-means initialised) fitted to z (N, D), and whether EM converged."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(components, covariance_type=covariance, max_iter=max_iter, random_state=seed, reg_covar=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        gm.fit(z.double().numpy())
    return gm, bool(gm.converged_) and not any(issubclass(w.category, ConvergenceWarning) for w in caught)


GMM_CANDIDATES = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # sampler.components=auto tries these, in order
HELD_OUT = 0.1  # the share of the latents auto keeps out of the fit to score each candidate
SELECT_ON = 10_000  # auto chooses K on at most this many latents (a seeded random subset), then fits all
MIN_PER_COMPONENT = 20  # auto tries no K with fewer fitted latents than this per component
PATIENCE = 2  # auto stops after this many candidates in a row that do not beat the best held-out score


def choose_components(z: Tensor, covariance: str, max_iter: int, seed: int,
                      on_candidate: Callable[[int, float], None] | None = None) -> tuple[int, dict[int, float]]:
    """sampler.components=auto: the K of GMM_CANDIDATES whose mixture, fitted to 90% of the latents
    (a seeded random split of at most SELECT_ON of them), gives the held-out 10% the highest mean
    log-likelihood; candidates are tried from small to large and the search stops after PATIENCE
    that do not improve on the best (more components then only overfit). Returns K and every
    tried K's held-out score; `on_candidate(K, score)` after each."""
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:SELECT_ON]
    held = max(1, int(round(HELD_OUT * len(order))))
    fit_z, held_z = z[order[held:]], z[order[:held]].double().numpy()
    scores: dict[int, float] = {}
    best, worse = None, 0
    for k in GMM_CANDIDATES:
        if k > 1 and k * MIN_PER_COMPONENT > len(fit_z):
            break
        scores[k] = float(_em(fit_z, k, covariance, max_iter, seed)[0].score(held_z))
        if on_candidate is not None:
            on_candidate(k, scores[k])
        if best is None or scores[k] > scores[best]:
            best, worse = k, 0
        else:
            worse += 1
            if worse >= PATIENCE:
                break
    return best, scores


def fit_gmm(z: Tensor, components: int | str, covariance: str, max_iter: int, seed: int,
            on_candidate: Callable[[int, float], None] | None = None) -> tuple[GMM, dict]:
    """EM (scikit-learn's GaussianMixture, k-means initialised) on z (N, D); components="auto"
    chooses K by held-out likelihood first (choose_components)."""
    chosen_from = None
    if components == "auto":
        if len(z) < 2:
            raise UsageError("sampler.components=auto needs at least 2 latent vectors (one to fit, one held out)")
        components, chosen_from = choose_components(z, covariance, max_iter, seed, on_candidate)
    if components > len(z):
        raise UsageError(f"sampler.components={components} is more than the {len(z)} latent vectors to fit it on")
    gm, converged = _em(z, components, covariance, max_iter, seed)
    sampler = GMM(components, z.shape[1])
    cov = torch.as_tensor(gm.covariances_, dtype=torch.float64)
    tril = torch.linalg.cholesky(cov) if covariance == "full" else torch.diag_embed(cov.sqrt())
    sampler.weights.copy_(torch.as_tensor(gm.weights_))
    sampler.means.copy_(torch.as_tensor(gm.means_))
    sampler.scale_tril.copy_(tril)
    return sampler, {"components": components, "log_q_z": float(gm.score(z.double().numpy())),
                     "iterations": int(gm.n_iter_), "converged": converged, "held_out_log_q_z": chosen_from}


def fit_two_stage(z: Tensor, hidden: list[int], epochs: int, lr: float, batch_size: int, seed: int,
                  redraw: Callable[[], Tensor] | None = None, on_epoch: Callable[[int, float], None] | None = None
                  ) -> tuple[TwoStage, dict]:
    """Train the second-stage VAE on z (N, D) with Adam, the learning rate cosine-decayed to 0;
    `redraw` gives fresh latents (one draw of q(z|x) per image) at each epoch after the first."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sampler = TwoStage(z.shape[1], hidden)
        sampler.shift.copy_(z.mean(0))
        sampler.scale.copy_(z.std(0).clamp(min=1e-3))  # a collapsed unit (constant) is not blown up
        optimizer = torch.optim.Adam(sampler.parameters(), lr=lr)
        steps = epochs * math.ceil(len(z) / batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        order = torch.Generator().manual_seed(seed)
        loss = float("nan")
        for epoch in range(epochs):
            if epoch and redraw is not None:
                z = redraw()
            total, count = 0.0, 0
            for index in torch.randperm(len(z), generator=order).split(batch_size):
                batch_loss = sampler.loss(z[index]).mean()
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                schedule.step()
                total, count = total + batch_loss.item() * len(index), count + len(index)
            loss = total / count
            if not math.isfinite(loss):
                raise UsageError(f"the two-stage sampler diverged at epoch {epoch + 1} (loss {loss}); "
                                 "try a smaller sampler.lr")
            if on_epoch is not None:
                on_epoch(epoch + 1, loss)
    sampler.eval()
    return sampler, {"loss": loss, "gamma": float(sampler.log_gamma.detach().clamp(min=-12).exp())}


def fit(model, data, cfg, generator: torch.Generator,
        on_step: Callable[[int, float], None] | None = None) -> tuple[Fitted, dict]:
    """The sampler that `cfg` (the chosen card of samplers_config.py) names, fitted to the latents of `data`;
    `on_step` after each of progress_steps(cfg) steps (an epoch, a candidate mixture size)."""
    z = latents(model, data, cfg.fit_on, generator)
    if cfg.name == "gmm":
        return fit_gmm(z, cfg.components, cfg.covariance, cfg.max_iter, cfg.seed, on_step)
    redraw = (lambda: latents(model, data, "sample", generator)) if cfg.fit_on == "sample" else None
    return fit_two_stage(z, cfg.hidden, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, redraw, on_step)


def progress_steps(cfg) -> tuple[str, int, str]:
    """What fit reports progress on: a label, how many steps at most (0: none worth a bar), the unit."""
    if cfg.name == "two_stage":
        return "two-stage VAE", cfg.epochs, "epochs"
    if cfg.components == "auto":
        return "mixture sizes", len(GMM_CANDIDATES), "tried"
    return "", 0, ""


# ---------------------------------------------------------------------------------------------
# Files


def save(run_dir: Path, sampler: Fitted, spec: dict, model_file: Path, step: int, stats: dict) -> Path:
    from ..runtime.checkpoint import save_tensors

    path = Path(run_dir) / file_name(sampler.name)
    metadata = {"vaecli.format": FORMAT, "vaecli.version": __version__, "vaecli.sampler": sampler.name,
                "vaecli.sampler_spec": json.dumps(spec), "vaecli.model_sha256": fingerprint(model_file),
                "vaecli.model_step": str(step), "vaecli.fit": json.dumps(stats)}
    save_tensors(path, sampler.state_dict(), metadata)
    return path


def build(name: str, spec: dict, dim: int) -> Fitted:
    if name == "gmm":
        return GMM(int(spec["components"]), dim)
    return TwoStage(dim, [int(h) for h in spec["hidden"]])


def load(name: str, loaded) -> Prior | Fitted:
    """The sampler `name` for a loaded checkpoint (checkpoint.Loaded): the prior, or the fitted
    sampler in its run folder, refused when it was fitted to other weights."""
    if name not in NAMES:
        raise UsageError(f"--sampler must be one of {', '.join(NAMES)} (got {name!r})")
    if name == "prior":
        return Prior()
    check_model(loaded.model)
    from ..runtime.checkpoint import _json_field, read_tensors

    path = loaded.run_dir / file_name(name)
    fit = f"vae fit-sampler --ckpt {loaded.run_dir} sampler={name}"
    if not path.is_file():
        raise UsageError(f"no {name} sampler in {loaded.run_dir}: fit one with: {fit}")
    tensors, metadata = read_tensors(path)
    if metadata.get("vaecli.sampler") != name or metadata.get("vaecli.format") != FORMAT:
        raise UsageError(f"{path} is not a vaecli {name} sampler of format {FORMAT}: fit it again with: {fit}")
    if metadata.get("vaecli.model_sha256") != fingerprint(loaded.path):
        fitted_step = metadata.get("vaecli.model_step", "?")
        when = (f"at step {fitted_step}, and the model is now at step {loaded.step}" if fitted_step != str(loaded.step)
                else "to other weights")
        raise UsageError(f"{path} was fitted to {loaded.path.name} {when}; fit it again with: {fit}")
    spec = _json_field(metadata, "vaecli.sampler_spec", path)
    try:
        sampler = build(name, spec, loaded.model.latent_dim)
        sampler.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path} does not hold a {name} sampler for this model ({str(e).splitlines()[0]}): "
                         f"fit it again with: {fit}") from None
    return sampler.to(loaded.model.device).eval()
