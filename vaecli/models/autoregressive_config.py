"""The decoder family's keys (model.decoder on mlp, conv, resnet and ladder; the code is
autoregressive.py): factorized pixels, a gated PixelCNN (van den Oord et al. 2016) in which
each pixel is conditioned on those before it, or linear_ar, where a masked dense layer adds a linear
function of the pixels before it to each pixel's parameters."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import MISSING, Need

DECODERS = ("factorized", "pixelcnn", "linear_ar")


@dataclass
class DecoderKeys:
    decoder: str = MISSING  # factorized | pixelcnn | linear_ar
    ar_layers: int = MISSING  # pixelcnn: gated layers
    ar_kernel: int = MISSING  # pixelcnn: mask size (odd, >= 3)
    ar_channels: int = MISSING  # pixelcnn: channels per layer

    def check_decoder(self, need: Need) -> None:
        need(self.decoder in DECODERS, f"model.decoder must be one of {', '.join(DECODERS)} (got {self.decoder!r})")
        if self.decoder != "pixelcnn":
            return
        need(self.ar_layers >= 1, f"model.ar_layers must be >= 1 (got {self.ar_layers})")
        need(self.ar_kernel >= 3 and self.ar_kernel % 2 == 1, f"model.ar_kernel must be odd and >= 3 (got {self.ar_kernel})")
        need(self.ar_channels >= 1, f"model.ar_channels must be >= 1 (got {self.ar_channels})")
