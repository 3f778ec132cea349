"""The card of the latent-diffusion autoencoder (the code is autoencoder_kl.py). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ..registry import MISSING, Card, Need, member
from . import spec as specs


@specs.kind("autoencoder_kl", model="vaecli.models.autoencoder_kl:AutoencoderKL")
@dataclass
class AutoencoderKLSpec(specs.ModelSpec):
    kind: str = "autoencoder_kl"
    ch: int = 128  # the first level's channels
    ch_mult: List[int] = field(default_factory=lambda: [1, 2, 4, 4])  # each level's channels / ch
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more)
    z_channels: int = 4  # the latent's channels
    attention: bool = True  # self-attention in the middle blocks
    norm_groups: int = 32  # GroupNorm groups (fewer where a level has fewer channels)

    def __post_init__(self):
        super().__post_init__()
        self.ch_mult = [int(m) for m in self.ch_mult]

    @classmethod
    def from_flat(cls, common: dict, flat: dict) -> "AutoencoderKLSpec":  # no flat spec was ever written
        raise ValueError("model=autoencoder_kl has no flat spec: it came after the nested one")


@member("model", "autoencoder_kl")
@dataclass
class AutoencoderKL(Card):
    """The latent-diffusion autoencoder (Rombach et al. 2022; diffusers' AutoencoderKL): a
    ResNet/GroupNorm encoder and decoder with mid-block self-attention and a spatial Gaussian latent."""

    ch: int = MISSING
    ch_mult: List[int] = MISSING
    num_res_blocks: int = MISSING
    attention: bool = MISSING
    z_channels: int = MISSING
    norm_groups: int = MISSING

    conditional = False  # (a class attribute, not a key: no class-conditional form)
    latent_dim = 0  # (fixed by the image size: z_channels x H/f x W/f, set in model_spec)

    def check(self, run, need: Need) -> None:
        need(self.ch >= 1, f"model.ch must be >= 1 (got {self.ch})")
        need(len(self.ch_mult) >= 1 and all(m >= 1 for m in self.ch_mult),
             f"model.ch_mult must list positive multipliers, e.g. [1,2,4] (got {self.ch_mult})")
        need(self.num_res_blocks >= 1, f"model.num_res_blocks must be >= 1 (got {self.num_res_blocks})")
        need(self.z_channels >= 1, f"model.z_channels must be >= 1 (got {self.z_channels})")
        need(self.norm_groups >= 1, f"model.norm_groups must be >= 1 (got {self.norm_groups})")
        for m in self.ch_mult if self.norm_groups >= 1 and self.ch >= 1 else ():
            width = self.ch * m
            need(width % min(self.norm_groups, width) == 0,
                 f"model.ch x model.ch_mult ({width} channels) must be a multiple of model.norm_groups "
                 f"({self.norm_groups})")
        need(run.kl.delta == 0, "model=autoencoder_kl has no committed-rate posterior: drop kl.delta")
        size = run.dataset.image_size
        f = 2 ** (len(self.ch_mult) - 1)
        need(size is None or size % f == 0,
             f"model.ch_mult has {len(self.ch_mult)} levels, so images are downsampled by {f}: dataset.image_size="
             f"{size} is not divisible by {f}; use a size divisible by {f} or fewer levels")

    def provides(self, run) -> set[str]:
        return {"unconditional", "importance_sampling", "gaussian_code", "kl_per_dim", "pixel_mean"}

    def lacks(self, run) -> dict[str, str]:
        return {"chosen_prior": "model=autoencoder_kl has a N(0, I) prior on its spatial latent; use prior=normal",
                "chosen_posterior": "model=autoencoder_kl has a diagonal Gaussian posterior; posterior flows are for "
                                    "model=mlp, conv and resnet"}

    def describe(self) -> str:
        return "model=autoencoder_kl"

    def body(self) -> specs.Body:
        return specs.Body("autoencoder_kl", [self.ch * m for m in self.ch_mult], "silu")

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        _, h, w = common["image_shape"]
        f = 2 ** (len(self.ch_mult) - 1)
        common = {**common, "latent_dim": self.z_channels * (h // f) * (w // f)}
        return AutoencoderKLSpec(**common, ch=self.ch, ch_mult=list(self.ch_mult), num_res_blocks=self.num_res_blocks,
                                 z_channels=self.z_channels, attention=self.attention, norm_groups=self.norm_groups)
