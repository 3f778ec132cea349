"""Networks. An encoder body maps images (B, C, H, W) to features (B, out_features); a decoder
maps a vector (B, in_features) to per-pixel likelihood parameters (B, P*C, H, W).

The VAE adds the heads (features -> posterior parameters) and any conditioning, so every body
here serves every model: VAE, AE, hierarchical, conditional.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def mlp(sizes: list[int], activation: str = "relu", final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or final_activation:
            # in place on the Linear's fresh output (its backward does not need it): one large
            # temporary fewer per layer, which eval-iwae's big sample blocks feel (bench/RESULTS.md)
            layers.append(ACTIVATIONS[activation](**({} if activation == "tanh" else {"inplace": True})))
    return nn.Sequential(*layers)


def conv_sizes(size: int, stages: int) -> list[int]:
    """Spatial sizes after each stride-2 4x4 conv with padding 1: s -> floor(s / 2)."""
    sizes = [size]
    for _ in range(stages):
        sizes.append(sizes[-1] // 2)
    return sizes


def _check_stages(h: int, w: int, stages: int) -> tuple[list[int], list[int]]:
    hs, ws = conv_sizes(h, stages), conv_sizes(w, stages)
    if min(hs[-1], ws[-1]) < 1:
        raise ValueError(f"{stages} stride-2 stages are too many for {h}x{w} images")
    return hs, ws


def _upsample(c_in: int, c_out: int, target: tuple[int, int], current: tuple[int, int]) -> nn.ConvTranspose2d:
    # A transposed 4x4 stride-2 conv doubles the size; output_padding restores odd sizes.
    pad = (target[0] - 2 * current[0], target[1] - 2 * current[1])
    return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=pad)


NORMS = ("group", "none")


def _norm(kind: str, channels: int) -> list[nn.Module]:
    """The normalization before each activation of the resnet bodies: GroupNorm (Wu & He 2018;
    gcd(channels, 32) groups, per image: no batch statistics, so a likelihood never depends on
    the other images of a batch), or none (checkpoints from before 2026-12-03, which Adam at
    lr 1e-3 could blow up within two steps on 32x32 images: each unnormalized stride-2 conv
    multiplied the features' scale several times over)."""
    if kind == "group":
        return [nn.GroupNorm(math.gcd(channels, 32), channels)]
    if kind == "none":
        return []
    raise ValueError(f"unknown normalization {kind!r}: choose one of {', '.join(NORMS)}")


class ResBlock(nn.Module):
    """x + conv3x3(act(norm(conv3x3(act(norm(x)))))), the pre-activation residual block (He et al. 2016)."""

    def __init__(self, channels: int, activation: str = "relu", norm: str = "group"):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(*_norm(norm, channels), act(), nn.Conv2d(channels, channels, 3, padding=1),
                                  *_norm(norm, channels), act(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _down(arch: str, channels: int, hidden: list[int], activation: str, norm: str = "group") -> list[nn.Module]:
    """Stride-2 stages from `channels` input channels to hidden[-1] (conv or resnet)."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    if arch == "conv":
        for c_in, c_out in zip([channels, *hidden[:-1]], hidden):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]
    elif arch == "resnet":
        layers.append(nn.Conv2d(channels, hidden[0], 3, padding=1))
        for c_in, c_out in zip(hidden, [*hidden[1:], hidden[-1]]):
            layers += [ResBlock(c_in, activation, norm), *_norm(norm, c_in), act(),
                       nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [*_norm(norm, hidden[-1]), act()]
    else:
        raise ValueError(f"unknown network {arch!r}")
    return layers


def _up(arch: str, image_shape: tuple[int, int, int], hidden: list[int], out_channels: int,
        activation: str, norm: str = "group") -> list[nn.Module]:
    """The mirror of _down: from hidden[-1] channels at the smallest size to out_channels at H x W."""
    _, h, w = image_shape
    hs, ws = _check_stages(h, w, len(hidden))
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    n = len(hidden)
    if arch == "conv":
        outs = [*reversed(hidden[:-1]), out_channels]
        for stage, (c_in, c_out) in enumerate(zip(reversed(hidden), outs)):
            i = n - stage - 1  # from size index i+1 up to i
            layers.append(_upsample(c_in, c_out, (hs[i], ws[i]), (hs[i + 1], ws[i + 1])))
            if stage < n - 1:
                layers.append(act())
    elif arch == "resnet":
        outs = [*reversed(hidden[:-1]), hidden[0]]
        for stage, (c_in, c_out) in enumerate(zip(reversed(hidden), outs)):
            i = n - stage - 1
            layers += [ResBlock(c_in, activation, norm), *_norm(norm, c_in), act(),
                       _upsample(c_in, c_out, (hs[i], ws[i]), (hs[i + 1], ws[i + 1]))]
        layers += [ResBlock(hidden[0], activation, norm), *_norm(norm, hidden[0]), act(),
                   nn.Conv2d(hidden[0], out_channels, 3, padding=1)]
    else:
        raise ValueError(f"unknown network {arch!r}")
    return layers


def encoder(arch: str, image_shape: tuple[int, int, int], hidden: list[int],
            activation: str = "relu", norm: str = "group") -> tuple[nn.Module, int]:
    """An encoder body and the size of its feature vector."""
    c, h, w = image_shape
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), mlp([c * h * w, *hidden], activation, final_activation=True)), hidden[-1]
    hs, ws = _check_stages(h, w, len(hidden))
    return nn.Sequential(*_down(arch, c, hidden, activation, norm), nn.Flatten()), hidden[-1] * hs[-1] * ws[-1]


def decoder(arch: str, image_shape: tuple[int, int, int], hidden: list[int], in_features: int,
            out_channels: int, activation: str = "relu", norm: str = "group") -> nn.Module:
    """A decoder from (B, in_features) to (B, out_channels, H, W)."""
    c, h, w = image_shape
    if arch == "mlp":
        return nn.Sequential(mlp([in_features, *reversed(hidden), out_channels * h * w], activation),
                             nn.Unflatten(1, (out_channels, h, w)))
    hs, ws = _check_stages(h, w, len(hidden))
    top = hidden[-1]
    return nn.Sequential(nn.Linear(in_features, top * hs[-1] * ws[-1]), ACTIVATIONS[activation](),
                         nn.Unflatten(1, (top, hs[-1], ws[-1])), *_up(arch, image_shape, hidden, out_channels, activation, norm))


def grid_encoder(arch: str, image_shape: tuple[int, int, int], hidden: list[int], code_dim: int,
                 activation: str = "relu", norm: str = "group") -> tuple[nn.Module, tuple[int, int]]:
    """Images (B, C, H, W) -> a grid of code_dim vectors (B, code_dim, h, w), and (h, w)."""
    c, h, w = image_shape
    if arch not in ("conv", "resnet"):
        raise ValueError(f"a code grid needs a convolutional network (conv or resnet), not {arch!r}")
    hs, ws = _check_stages(h, w, len(hidden))
    return nn.Sequential(*_down(arch, c, hidden, activation, norm), nn.Conv2d(hidden[-1], code_dim, 1)), (hs[-1], ws[-1])


def grid_decoder(arch: str, image_shape: tuple[int, int, int], hidden: list[int], in_channels: int,
                 out_channels: int, activation: str = "relu", norm: str = "group") -> nn.Module:
    """A grid (B, in_channels, h, w) -> (B, out_channels, H, W), mirroring grid_encoder."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden[-1], 3, padding=1), ACTIVATIONS[activation](),
                         *_up(arch, image_shape, hidden, out_channels, activation, norm))
