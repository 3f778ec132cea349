"""The latent-diffusion autoencoder ("KL-f4/f8", Rombach et al. 2022; diffusers' AutoencoderKL) as a
vaecli model: a ResNet/GroupNorm encoder and decoder with a self-attention block in the middle and a
*spatial* Gaussian latent of (z_channels, H/f, W/f), f = 2^(len(ch_mult) - 1).

The module tree and parameter names follow diffusers' AutoencoderKL (`encoder.down_blocks.0.resnets.0.
norm1`, `quant_conv`, ...), so `vae export --format diffusers` writes the same tensors under the
same names and a diffusers folder loads back into this class (cli/latents.py). Written for vaecli
from the architecture's description (taming-transformers' / diffusers' Encoder and Decoder), checked
against the real diffusers package output for output (tests/test_autoencoder_kl.py).

To every command it is a VAE like the others: encode() returns q(z|x) on the flattened latent
(event z_channels * H/f * W/f), decode() the chosen likelihood on the decoder's output, the KL to
N(0, I) is closed form; the spatial shape is `latent_shape`. The encoder sees pixels on diffusers'
[-1, 1] scale (2x - 1); the decoder's output goes to the likelihood as it is (a Gaussian's mean in
[0, 1]; the export folds the affine map into the last convolution).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from . import likelihoods, priors
from .autoencoder_kl_config import AutoencoderKLSpec
from .vae import LatentModel, _SampleAndKL

EPS = 1e-6  # GroupNorm's eps in every block (diffusers' resnet_eps)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=EPS, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, plus the input (a 1x1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """One-head self-attention over the H x W positions, GroupNorm first, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _norm(channels, groups)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        out = F.scaled_dot_product_attention(self.to_q(t)[:, None], self.to_k(t)[:, None], self.to_v(t)[:, None])
        out = self.to_out[0](out[:, 0]).transpose(1, 2).reshape(b, c, h, w)
        return out + x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Down(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 convolution (no padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(blocks)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Down(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Up(cout)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resnets:
            x = block(x)
        for resample in getattr(self, "downsamplers", ()) or getattr(self, "upsamplers", ()):
            x = resample(x)
        return x


class Encoder(nn.Module):
    def __init__(self, in_channels: int, widths: list[int], blocks: int, z_channels: int, groups: int, attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [Stage(widths[max(i - 1, 0)], w, blocks, groups, "down" if i < len(widths) - 1 else None)
             for i, w in enumerate(widths)])
        self.mid_block = MidBlock(widths[-1], groups, attention)
        self.conv_norm_out = _norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, out_channels: int, widths: list[int], blocks: int, z_channels: int, groups: int,
                 attention: bool):
        super().__init__()
        top = list(reversed(widths))
        self.conv_in = nn.Conv2d(z_channels, top[0], 3, padding=1)
        self.mid_block = MidBlock(top[0], groups, attention)
        self.up_blocks = nn.ModuleList(
            [Stage(top[max(i - 1, 0)], w, blocks + 1, groups, "up" if i < len(top) - 1 else None)
             for i, w in enumerate(top)])
        self.conv_norm_out = _norm(widths[0], groups)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for stage in self.up_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(LatentModel):
    """The model (module names as diffusers'): encoder -> quant_conv -> q(z|x) -> post_quant_conv ->
    decoder -> the likelihood's parameters."""

    def __init__(self, spec: AutoencoderKLSpec):
        super().__init__()
        self.spec = spec
        c, h, w = spec.image_shape
        f = 2 ** (len(spec.levels.ch_mult) - 1)
        if h % f or w % f:
            raise ValueError(f"model.ch_mult has {len(spec.levels.ch_mult)} levels, so the image is downsampled by {f}: "
                             f"{h}x{w} is not divisible by {f}; use fewer levels or another dataset.image_size")
        levels = spec.levels
        if spec.latent_dim != levels.z_channels * (h // f) * (w // f):
            raise ValueError(f"latent_dim {spec.latent_dim} is not z_channels x H/f x W/f")
        widths = [levels.ch * m for m in levels.ch_mult]
        self.likelihood = likelihoods.build(spec)
        self.encoder = Encoder(c, widths, levels.num_res_blocks, levels.z_channels, levels.norm_groups, levels.attention)
        self.decoder = Decoder(c * self.likelihood.params_per_pixel, widths, levels.num_res_blocks, levels.z_channels,
                               levels.norm_groups, levels.attention)
        self.quant_conv = nn.Conv2d(2 * levels.z_channels, 2 * levels.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(levels.z_channels, levels.z_channels, 1)
        self.prior_net = priors.build("normal", spec.latent_dim, spec.image_shape, 1)
        self.latent_shape = (levels.z_channels, h // f, w // f)
        self.factor = f
        if not spec.start.train_encoder:  # the decoder trains alone (Stability's sd-vae-ft-* recipe)
            self.encoder.requires_grad_(False)
            self.quant_conv.requires_grad_(False)

    def initialize(self) -> None:
        """Before a new run trains: the weights of the diffusers folder it starts from, if any."""
        if self.spec.start.pretrained:
            load_diffusers(self, self.spec.start.pretrained)

    exact_kl = True
    convolutional = True
    flow = None

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight: the adaptive GAN weight's gradient ratio is taken there."""
        return self.decoder.conv_out.weight

    def moments(self, x: Tensor) -> Tensor:
        """(mu, logvar) of q(z|x) stacked on the channels: (B, 2 z_channels, H/f, W/f), diffusers'
        `encode(x).latent_dist.parameters` for pixels x in [0, 1]."""
        return self.quant_conv(self.encoder(x * 2 - 1)).float()

    def _flat_params(self, x: Tensor) -> Tensor:
        mu, logvar = self.moments(x).chunk(2, dim=1)
        return torch.cat([mu.flatten(1), logvar.flatten(1)], dim=-1)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        mu, logvar = self._flat_params(x).chunk(2, dim=-1)
        sigma = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return Independent(Normal(mu, sigma, validate_args=False), 1, validate_args=False)

    def decoder_output(self, z: Tensor) -> Tensor:
        """The decoder's output (B, P, H, W) for flat or spatial latents (B, D) / (B, z_c, h, w)."""
        z = z.reshape(-1, *self.latent_shape)
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype))).float()

    def _likelihood_params(self, z: Tensor, y: Tensor | None) -> Tensor:
        lead = z.shape[:-1]
        params = self.decoder_output(z)
        return params.reshape(*lead, *params.shape[1:])

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        return self.likelihood(self._likelihood_params(z, y))

    def _log_px(self, z: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
        direct = getattr(self.likelihood, "log_prob_of", None)
        params = self._likelihood_params(z, y)
        return direct(params, x) if direct is not None else self.likelihood(params).log_prob(x)

    def prior(self, temperature: float = 1.0) -> Distribution:
        return self.prior_net(temperature)

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        params = self._flat_params(x)
        eps = torch.empty(params.shape[:-1] + (self.spec.latent_dim,), device=params.device).normal_()
        z, kl_per_dim = _SampleAndKL.apply(params, eps)
        return {"log_px": self._log_px(z, x, y), "kl": kl_per_dim.sum(-1), "kl_per_dim": kl_per_dim, "kl_exact": True}

    def log_weights(self, x: Tensor, k: int, y: Tensor | None = None, reparam: bool = False) -> tuple[Tensor, Tensor]:
        posterior = self.encode(x, y)
        z = posterior.rsample((k,)) if reparam else posterior.sample((k,))
        log_px = self._log_px(z, x, y)
        return log_px + self.prior().log_prob(z) - posterior.log_prob(z), log_px

    def kl(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.prior_net.kl(self.encode(x, y).base_dist).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        z = temperature * torch.randn(n, self.spec.latent_dim, generator=generator, device=self.device)
        return self.decode_images(z, y, generator)



# -- diffusers' format ------------------------------------------------------------------------
# The same tensors under the same names; only the decoder's last convolution differs, by the map
# between our [0, 1] mean image and diffusers' [-1, 1] output: theirs = 2 ours - 1.

MEAN_LIKELIHOODS = ("gaussian", "gaussian_learned")


def _check_mean_image(model: AutoencoderKL) -> None:
    lik = model.spec.likelihood
    if lik.name not in MEAN_LIKELIHOODS or lik.per_pixel:
        raise ValueError(f"diffusers' AutoencoderKL decodes a mean image; this model's likelihood={lik.name} "
                         "decodes other parameters: train with likelihood=gaussian or gaussian_learned")


def diffusers_config(model: AutoencoderKL, scaling_factor: float) -> dict:
    spec, levels = model.spec, model.spec.levels
    widths = [levels.ch * m for m in levels.ch_mult]
    if min(widths) < levels.norm_groups:
        raise ValueError(f"diffusers' AutoencoderKL uses model.norm_groups={levels.norm_groups} groups in every "
                         f"GroupNorm, and a level of this model has {min(widths)} channels; train with "
                         f"model.norm_groups <= {min(widths)}")
    c, h, _ = spec.image_shape
    count = len(widths)
    return {"_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0", "in_channels": c, "out_channels": c,
            "down_block_types": ["DownEncoderBlock2D"] * count, "up_block_types": ["UpDecoderBlock2D"] * count,
            "block_out_channels": widths, "layers_per_block": levels.num_res_blocks, "act_fn": "silu",
            "latent_channels": levels.z_channels, "norm_num_groups": levels.norm_groups, "sample_size": h,
            "scaling_factor": float(scaling_factor), "force_upcast": True, "use_quant_conv": True,
            "use_post_quant_conv": True, "mid_block_add_attention": levels.attention}


def diffusers_state(model: AutoencoderKL) -> dict[str, Tensor]:
    """The model's tensors as diffusers names and scales them (no likelihood parameters)."""
    _check_mean_image(model)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.startswith(("likelihood.", "prior_net."))}
    state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"] * 2
    state["decoder.conv_out.bias"] = state["decoder.conv_out.bias"] * 2 - 1
    return state


def export_diffusers(model: AutoencoderKL, folder: Path, scaling_factor: float) -> None:
    """Write a folder diffusers.AutoencoderKL.from_pretrained reads: config.json and the weights."""
    import json

    from safetensors.torch import save_file

    from .autoencoder_kl_config import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS

    config, state = diffusers_config(model, scaling_factor), diffusers_state(model)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
    (folder / DIFFUSERS_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_diffusers(model: AutoencoderKL, folder: str) -> None:
    """Load a diffusers AutoencoderKL folder's weights (the inverse of diffusers_state)."""
    from safetensors.torch import load_file

    from .autoencoder_kl_config import DIFFUSERS_WEIGHTS

    _check_mean_image(model)
    path = Path(folder).expanduser() / DIFFUSERS_WEIGHTS
    try:
        state = load_file(str(path))
    except Exception as e:  # a damaged file
        raise ValueError(f"cannot read {path}: {e}") from None
    state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"] / 2
    state["decoder.conv_out.bias"] = (state["decoder.conv_out.bias"] + 1) / 2
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith(("likelihood.", "prior_net.")))
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if missing or wrong:
        first = missing[0] if missing else f"{wrong[0]} {tuple(state[wrong[0]].shape)} (this model: {tuple(own[wrong[0]].shape)})"
        raise ValueError(f"{path} does not fit this model ({len(missing)} tensors missing, {len(wrong)} of another "
                         f"shape, e.g. {first}): the images' channels must be the folder's in_channels")
    model.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})
