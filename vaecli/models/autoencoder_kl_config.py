"""The card of the latent-diffusion autoencoder (the code is autoencoder_kl.py). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import List, Optional

from ..registry import MISSING, Card, Need, member
from . import spec as specs


@dataclass
class Levels:
    """The encoder/decoder's shape (diffusers' block_out_channels = ch x ch_mult, layers_per_block ...)."""

    ch: int = 128  # the first level's channels
    ch_mult: List[int] = field(default_factory=lambda: [1, 2, 4, 4])  # each level's channels / ch
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more)
    z_channels: int = 4  # the latent's channels
    attention: bool = True  # self-attention in the middle blocks
    norm_groups: int = 32  # GroupNorm groups (fewer where a level has fewer channels)

    def __post_init__(self):
        self.ch_mult = [int(m) for m in self.ch_mult]


@dataclass
class Start:
    """Where a run's weights came from, and what trains."""

    pretrained: Optional[str] = None  # the diffusers folder whose weights a new run started from (provenance)
    train_encoder: bool = True  # false: the encoder is frozen and the decoder trains alone


@specs.kind("autoencoder_kl", model="vaecli.models.autoencoder_kl:AutoencoderKL")
@dataclass
class AutoencoderKLSpec(specs.ModelSpec):
    kind: str = "autoencoder_kl"
    levels: Levels = field(default_factory=Levels)
    start: Start = field(default_factory=Start)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.levels, dict):
            self.levels = Levels(**self.levels)
        if isinstance(self.start, dict):
            self.start = Start(**self.start)

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

    pretrained: Optional[str] = None  # a diffusers AutoencoderKL folder to start from (its architecture wins)
    train_encoder: bool = MISSING

    conditional = False  # (a class attribute, not a key: no class-conditional form)
    latent_dim = 0  # (fixed by the image size: z_channels x H/f x W/f, set in model_spec)

    def check(self, run, need: Need) -> None:
        if self.pretrained:
            try:
                arch = diffusers_architecture(self.pretrained)
            except ValueError as e:
                need(False, f"model.pretrained: {e}")
                return
            need(run.likelihood.name in ("gaussian", "gaussian_learned") and not getattr(run.likelihood, "per_pixel",
                                                                                         False),
                 "model.pretrained decodes a mean image, as diffusers does: use likelihood=gaussian or gaussian_learned "
                 f"(got likelihood={run.likelihood.name})")
            self._apply(arch)
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

    def _apply(self, arch: dict) -> None:
        for key, value in arch.items():
            setattr(self, key, value)

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        if self.pretrained:
            self._apply(diffusers_architecture(self.pretrained))
        _, h, w = common["image_shape"]
        f = 2 ** (len(self.ch_mult) - 1)
        common = {**common, "latent_dim": self.z_channels * (h // f) * (w // f)}
        return AutoencoderKLSpec(**common, levels=Levels(self.ch, list(self.ch_mult), self.num_res_blocks,
                                                         self.z_channels, self.attention, self.norm_groups),
                                 start=Start(str(Path(self.pretrained).resolve()) if self.pretrained else None,
                                             self.train_encoder))


DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def diffusers_architecture(folder: str) -> dict:
    """The model.* keys of a diffusers AutoencoderKL folder (its config.json), or ValueError saying
    why it is not one this model can take. Torch-free (the card reads it when composing)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder (a diffusers AutoencoderKL folder holds {DIFFUSERS_CONFIG})")
    try:
        config = json.loads((path / DIFFUSERS_CONFIG).read_text())
    except OSError:
        raise ValueError(f"{path} has no readable {DIFFUSERS_CONFIG}: not a diffusers model folder") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / DIFFUSERS_CONFIG} is not JSON ({e.msg})") from None
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        kind = config.get("_class_name") if isinstance(config, dict) else None
        raise ValueError(f"{path} holds a {kind or 'model without _class_name'}, not an AutoencoderKL")
    widths = [int(w) for w in config.get("block_out_channels", [64])]
    if any(w % widths[0] for w in widths):
        raise ValueError(f"block_out_channels {widths} are not multiples of the first")
    blocks = set(config.get("down_block_types", ["DownEncoderBlock2D"])) | set(
        config.get("up_block_types", ["UpDecoderBlock2D"]))
    problems = [f"{blocks - {'DownEncoderBlock2D', 'UpDecoderBlock2D'}} blocks"
                if blocks - {"DownEncoderBlock2D", "UpDecoderBlock2D"} else None,
                f"act_fn {config.get('act_fn')}" if config.get("act_fn", "silu") != "silu" else None,
                "no quant_conv" if not config.get("use_quant_conv", True) else None,
                "no post_quant_conv" if not config.get("use_post_quant_conv", True) else None]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"{path}: an AutoencoderKL with {', '.join(problems)} is not the latent-diffusion "
                         "autoencoder this model is")
    if not (path / DIFFUSERS_WEIGHTS).is_file():
        raise ValueError(f"{path} has no {DIFFUSERS_WEIGHTS} (save it with safe_serialization=True)")
    return {"ch": widths[0], "ch_mult": [w // widths[0] for w in widths],
            "num_res_blocks": int(config.get("layers_per_block", 1)), "z_channels": int(config.get("latent_channels", 4)),
            "attention": bool(config.get("mid_block_add_attention", True)),
            "norm_groups": int(config.get("norm_num_groups", 32))}
