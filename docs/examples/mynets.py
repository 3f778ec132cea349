"""A small encoder and decoder of your own for vaecli (docs/guide/own-networks.md).

vae train dataset=shapes model.encoder_net._target_=mynets.Encoder model.encoder_net.width=64 \
    model.decoder_net._target_=mynets.Decoder model.decoder_net.width=64
(with this folder on PYTHONPATH). vaecli constructs the encoder with image_shape=(C, H, W) and the
decoder with image_shape, latent_dim and out_channels, plus the node's other keys (width here).
"""

import torch
from torch import nn


class Encoder(nn.Module):
    """(B, C, H, W) images -> (B, F) features: two stride-2 convolutions and a flatten. vaecli
    finds F by one dry run and adds the head that gives the posterior's parameters."""

    def __init__(self, image_shape, width=32):
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Flatten())

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent_dim) -> (B, out_channels, H, W): the likelihood's parameters per pixel."""

    def __init__(self, image_shape, latent_dim, out_channels, width=32):
        super().__init__()
        c, self.h, self.w = image_shape
        self.width = width
        self.fc = nn.Linear(latent_dim, 2 * width * (self.h // 4) * (self.w // 4))
        self.net = nn.Sequential(
            nn.SiLU(), nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.SiLU(), nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1))

    def forward(self, z):
        h = self.fc(z).view(-1, 2 * self.width, self.h // 4, self.w // 4)
        return self.net(h)
