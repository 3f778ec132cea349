"""An autoregressive decoder: p(x|z) = prod_d p(x_d | x_<d, z), a gated PixelCNN over the image
conditioned on a feature map computed from z (van den Oord et al. 2016, "Conditional Image
Generation with PixelCNN Decoders"; the PixelVAE of Gulrajani et al. 2017 is this decoder in a
VAE). Pixels are in raster order; a pixel's channels are independent given the pixels before it
and z, so every per-pixel likelihood of likelihoods.py serves as the conditional, and the product
is a normalised distribution of the image (its `measure` is the per-pixel likelihood's).

The network has no blind spot: a vertical stack sees the rows above (its features enter the
horizontal stack shifted down by one row), a horizontal stack the pixels to the left in the row;
the first layer excludes the pixel itself, later ones include their own earlier features. Each layer
is gated, tanh(a) * sigmoid(b), with the conditioning added to both halves, and the horizontal
stack is residual. `layers` and `kernel` set the receptive field (a weak decoder: few layers, a
small kernel), so the same option reproduces posterior collapse and one of its cures.

`decode(z)` returns an `AutoregressiveImage`: log_prob(x) is one masked pass over x; a picture is
drawn pixel by pixel (H*W passes of the network), reproducibly from a generator.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

_progress = None  # a callable(done, total) while `reporting` is active (the CLI's progress bar)
_draws = False  # while `drawing` is active: pictures are draws x ~ p(x|z), not means


@contextlib.contextmanager
def reporting(callback):
    """Report pixel-by-pixel drawing to `callback(done, total)` inside the block."""
    global _progress
    previous, _progress = _progress, callback
    try:
        yield
    finally:
        _progress = previous


@contextlib.contextmanager
def drawing():
    """Inside the block, every picture of a factorized p(x|z) is a draw x ~ p(x|z) rather than its
    mean (eval-samples --draw: binary data compared with binary images, not with Bernoulli means).
    Draws come from the global RNG (the caller seeds it)."""
    global _draws
    previous, _draws = _draws, True
    try:
        yield
    finally:
        _draws = previous


class GatedLayer(nn.Module):
    """One gated layer of both stacks. v, h: (N, F, H, W) (the image itself for the first layer);
    cond: (N, F_c, H, W)."""

    def __init__(self, c_in: int, channels: int, kernel: int, cond: int, first: bool):
        super().__init__()
        p = kernel // 2
        self.first, self.p = first, p
        self.vertical = nn.Conv2d(c_in, 2 * channels, (p + 1, kernel), padding=(p, p))
        # the first layer sees the p pixels to the left (not the pixel itself); later ones p + 1
        self.horizontal = nn.Conv2d(c_in, 2 * channels, (1, p if first else p + 1), padding=(0, p))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.cond_v = nn.Conv2d(cond, 2 * channels, 1)
        self.cond_h = nn.Conv2d(cond, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: Tensor, h: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        height, width = v.shape[-2:]
        v_pre = self.vertical(v)[..., :height, :]  # row r sees input rows r - p .. r
        v_shift = F.pad(v_pre, (0, 0, 1, 0))[..., :height, :]  # ... and the horizontal stack rows < r
        h_pre = self.horizontal(h)[..., :width]  # column c sees c - p .. c - 1 (first layer), else c - p .. c
        h_pre = h_pre + self.v_to_h(v_shift) + self.cond_h(cond)
        v_pre = v_pre + self.cond_v(cond)
        v_out = _gate(v_pre)
        h_gated = self.h_out(_gate(h_pre))
        return v_out, h_gated if self.first else h + h_gated


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class PixelCNN(nn.Module):
    """The network: image (N, C, H, W) and conditioning (N, F_c, H, W) -> per-pixel parameters
    (N, P*C, H, W), each pixel's depending on the pixels before it in raster order only."""

    def __init__(self, image_channels: int, cond: int, out: int, layers: int, kernel: int, channels: int):
        super().__init__()
        self.layers = nn.ModuleList(
            GatedLayer(image_channels if i == 0 else channels, channels, kernel, cond, first=i == 0)
            for i in range(layers))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, out, 1))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        v = h = x * 2 - 1  # [0, 1] -> [-1, 1]
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.out(h)


class AutoregressiveLikelihood(nn.Module):
    """An autoregressive decoder as a likelihood: the model's decoder body outputs the conditioning
    map (params_per_pixel channels per image channel, like any likelihood's parameters), `network`
    maps (image, conditioning) to every pixel's parameters given the pixels before it, and this
    returns the distribution over images built on the per-pixel likelihood `inner`."""

    inner: nn.Module
    network: nn.Module
    image_channels: int
    params_per_pixel: int

    def forward(self, cond: Tensor) -> "AutoregressiveImage":
        return AutoregressiveImage(self, cond)


class PixelCNNLikelihood(AutoregressiveLikelihood):
    """model.decoder=pixelcnn: the gated PixelCNN above."""

    def __init__(self, inner: nn.Module, image_channels: int, layers: int, kernel: int, channels: int):
        super().__init__()
        self.inner, self.image_channels = inner, image_channels
        self.params_per_pixel = channels  # conditioning channels per image channel
        self.network = PixelCNN(image_channels, channels * image_channels, inner.params_per_pixel * image_channels,
                                layers, kernel, channels)


class MaskedLinear(nn.Module):
    """Every pixel's parameters: the conditioning (the decoder body's output for that pixel) plus a
    learned linear function of all the pixels before it in raster order, all channels of an earlier
    pixel included and none of its own (a dense layer under MADE's mask, Germain et al. 2015, with
    no hidden layer: the fully visible sigmoid belief net of Frey 1998 made conditional on z). One
    GEMM of the image's size: cheap on a CPU where a PixelCNN's small convolutions are not. The
    weights start at zero, so training starts from the factorized decoder."""

    def __init__(self, image_shape: tuple[int, int, int], params_per_pixel: int):
        super().__init__()
        channels, height, width = image_shape
        pixels = height * width
        inputs, outputs = channels * pixels, params_per_pixel * channels * pixels
        self.weight = nn.Parameter(torch.zeros(outputs, inputs))
        self.bias = nn.Parameter(torch.zeros(outputs))
        pixel_of_output = torch.arange(outputs) % pixels  # layout (P*C, H, W), as the other decoders
        pixel_of_input = torch.arange(inputs) % pixels  # layout (C, H, W)
        self.register_buffer("mask", (pixel_of_input[None, :] < pixel_of_output[:, None]).float(), persistent=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        flat = (x * 2 - 1).flatten(1)  # [0, 1] -> [-1, 1]
        out = torch.nn.functional.linear(flat, self.weight * self.mask.to(self.weight.dtype), self.bias)
        return cond + out.view(cond.shape)


class LinearARLikelihood(AutoregressiveLikelihood):
    """model.decoder=linear_ar: MaskedLinear on top of the decoder body's per-pixel parameters."""

    def __init__(self, inner: nn.Module, image_shape: tuple[int, int, int]):
        super().__init__()
        self.inner, self.image_channels = inner, image_shape[0]
        self.params_per_pixel = inner.params_per_pixel  # the body outputs the parameters themselves
        self.network = MaskedLinear(image_shape, inner.params_per_pixel)


class AutoregressiveImage(Distribution):
    """p(x | z) for conditioning maps cond (..., F_c, H, W): batch (...), event (C, H, W)."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, head: AutoregressiveLikelihood, cond: Tensor):
        self.head, self.cond = head, cond
        self.lead = cond.shape[:-3]
        super().__init__(self.lead, torch.Size([head.image_channels, *cond.shape[-2:]]), validate_args=False)

    def _conditionals(self, x: Tensor) -> Distribution:
        """The per-pixel likelihood of every pixel given the pixels of x before it."""
        flat_cond = self.cond.reshape(-1, *self.cond.shape[-3:])
        flat_x = x.expand(*self.lead, *x.shape[-3:]).reshape(-1, *x.shape[-3:]).to(flat_cond.dtype)
        params = self.head.network(flat_x, flat_cond).float()
        return self.head.inner(params.reshape(*self.lead, *params.shape[-3:]))

    def log_prob(self, value: Tensor) -> Tensor:
        """One masked pass; value (..., C, H, W) broadcasts over the batch (e.g. k samples)."""
        return self._conditionals(value).log_prob(value)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """Pixel by pixel in raster order: H * W passes of the network. Draws from the global RNG,
        or from one seeded by `generator` (so a seeded picture repeats)."""
        if sample_shape:
            raise ValueError("draw one image per conditioning map (expand the latents instead)")
        channels, height, width = self.event_shape
        x = torch.zeros(*self.lead, channels, height, width, device=self.cond.device)
        seed = None if generator is None else int(torch.randint(2**62, (1,), generator=generator))
        devices = [self.cond.device] if self.cond.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(height):
                for j in range(width):
                    x[..., i, j] = self._conditionals(x).sample()[..., i, j]
                if _progress is not None:
                    _progress((i + 1) * width, height * width)
        return x

    @property
    def mean(self) -> Tensor:
        raise ValueError("an autoregressive decoder has no closed-form mean: draw a picture (sample)")

    def picture(self, generator: torch.Generator | None = None, common: bool = False) -> Tensor:
        """What pictures show for this decoder: a draw, pixel by pixel. `common`: every image drawn
        with the same random numbers (common random numbers), so images differ only where their
        latents make p(x|z) differ: a traversal or interpolation then shows what z controls (a
        collapsed model's row is one image repeated), not the draws' noise. Costs one pass per
        image instead of one per batch."""
        count = self.lead.numel()
        if not common or count <= 1:
            return self.sample(generator=generator)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        flat = self.cond.reshape(-1, *self.cond.shape[-3:])
        outer, pixels = _progress, self.event_shape[-2] * self.event_shape[-1]
        images = []
        for b in range(count):
            report = None if outer is None else (lambda done, total, b=b: outer(b * pixels + done, count * pixels))
            with reporting(report):
                one = AutoregressiveImage(self.head, flat[b:b + 1])
                images.append(one.sample(generator=torch.Generator().manual_seed(seed)))
        return torch.cat(images).reshape(*self.lead, *self.event_shape)


def picture(dist: Distribution, generator: torch.Generator | None = None, common: bool = False) -> Tensor:
    """The image a picture shows of p(x|z): a draw for an autoregressive decoder (its mean has no
    closed form; `common`: every image of the batch with the same random numbers), the mean for a
    factorised one (a draw inside `drawing()`)."""
    draw = getattr(dist, "picture", None)
    if draw is not None:
        return draw(generator, common)
    return dist.sample() if _draws else dist.mean
