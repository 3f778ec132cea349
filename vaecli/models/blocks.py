"""Encoder and decoder networks. Encoders map images (B, C, H, W) to (B, out_features);
decoders map latents (B, latent_dim) to per-pixel likelihood parameters (B, P, H, W)."""

from __future__ import annotations

import math

from torch import nn


def mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Sequential):
    def __init__(self, image_shape: tuple[int, int, int], hidden: list[int], out_features: int):
        super().__init__(nn.Flatten(), mlp([math.prod(image_shape), *hidden, out_features]))


class MLPDecoder(nn.Sequential):
    def __init__(self, image_shape: tuple[int, int, int], hidden: list[int], latent_dim: int,
                 params_per_pixel: int = 1):
        c, h, w = image_shape
        super().__init__(
            mlp([latent_dim, *reversed(hidden), params_per_pixel * c * h * w]),
            nn.Unflatten(1, (params_per_pixel * c, h, w)),
        )


def conv_sizes(size: int, stages: int) -> list[int]:
    """Spatial sizes after each stride-2 4x4 conv with padding 1: s -> floor(s / 2)."""
    sizes = [size]
    for _ in range(stages):
        sizes.append(sizes[-1] // 2)
    return sizes


class ConvEncoder(nn.Sequential):
    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], out_features: int):
        c, h, w = image_shape
        hs, ws = conv_sizes(h, len(channels)), conv_sizes(w, len(channels))
        if min(hs[-1], ws[-1]) < 1:
            raise ValueError(f"{len(channels)} stride-2 stages are too many for {h}x{w} images")
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Flatten(), nn.Linear(channels[-1] * hs[-1] * ws[-1], out_features)]
        super().__init__(*layers)


class ConvDecoder(nn.Sequential):
    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], latent_dim: int,
                 params_per_pixel: int = 1):
        c, h, w = image_shape
        hs, ws = conv_sizes(h, len(channels)), conv_sizes(w, len(channels))
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, channels[-1] * hs[-1] * ws[-1]),
            nn.ReLU(),
            nn.Unflatten(1, (channels[-1], hs[-1], ws[-1])),
        ]
        outs = [*reversed(channels[:-1]), params_per_pixel * c]
        for stage, (c_in, c_out) in enumerate(zip(reversed(channels), outs)):
            i = len(channels) - stage - 1  # upsample from size index i+1 to i
            # A transposed 4x4 stride-2 conv doubles the size; output_padding restores odd sizes.
            pad = (hs[i] - 2 * hs[i + 1], ws[i] - 2 * ws[i + 1])
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=pad))
            if stage < len(channels) - 1:
                layers.append(nn.ReLU())
        super().__init__(*layers)
