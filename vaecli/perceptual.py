"""Image comparisons beyond the pixel-wise ones: SSIM and MS-SSIM (Wang et al. 2003/2004), LPIPS
(Zhang et al. 2018) and a high-frequency energy for sharpness. Losses for objective=perceptual and
figures for eval-recon.

SSIM/MS-SSIM follow pytorch-msssim's definitions (a Gaussian window of sigma 1.5, K1 0.01, K2 0.03,
'valid' filtering, cs and SSIM clipped at 0, MS-SSIM's five weights 0.0448 ... 0.1333; tests compare
with the package), with the window and the number of scales chosen for the image size
(`ms_ssim_settings`): the package asserts 160+ px for its four downsamplings, and our images are 28-64.
LPIPS is the `lpips` package's (its linear heads ship in its wheel) on VGG16, whose ImageNet
backbone comes from torchvision's download into torch's hub cache, or from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UsageError, VaeError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2, SIGMA = 0.01, 0.03, 1.5
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
RANDOM = "random"  # lpips weights: a randomly initialised backbone (tests only: no download)
NONE = "none"  # eval-recon --lpips-weights none: no LPIPS at all (no download tried)
DOWNLOAD_TIMEOUT = 60  # seconds without a byte before a download of VGG16's weights gives up
VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # lpips' vgg16 slices of torchvision's features


def gaussian_window(size: int, sigma: float = SIGMA) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-coords.square() / (2 * sigma * sigma))
    return g / g.sum()


def _filter(x: Tensor, win: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of each channel (a dimension shorter than the window is
    left unfiltered, as pytorch-msssim does)."""
    c = x.shape[1]
    out = x
    for dim in (2, 3):
        if out.shape[dim] >= win.numel():
            shape = [1, 1, 1, 1]
            shape[dim] = win.numel()
            out = F.conv2d(out, win.to(x).reshape(shape).repeat(c, 1, 1, 1), groups=c)
    return out


def _ssim_parts(x: Tensor, y: Tensor, win: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per image and channel (B, C): SSIM and its contrast-structure term cs."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu1, mu2 = _filter(x, win), _filter(y, win)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter(x * x, win) - mu1_sq
    s2 = _filter(y * y, win) - mu2_sq
    s12 = _filter(x * y, win) - mu12
    cs = (2 * s12 + c2) / (s1 + s2 + c2)
    ssim = (2 * mu12 + c1) / (mu1_sq + mu2_sq + c1) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int | None = None) -> Tensor:
    """SSIM per image (B,), the mean over channels; win_size: 11, or the largest odd window the image holds."""
    side = min(x.shape[-2:])
    win = win_size or (11 if side >= 11 else max(1, side - (1 - side % 2)))
    return _ssim_parts(x.float(), y.float(), gaussian_window(win), data_range)[0].mean(1)


def ms_ssim_settings(side: int) -> tuple[int, int]:
    """(window, scales) for images whose shorter side is `side`: the largest window (11, 7, 5 or 3)
    with which at least 3 scales keep the coarsest one no smaller than the window, then as many
    scales (<= 5) as that window allows: 28 and 32 px -> (7, 3), 64 -> (11, 3), 176+ -> (11, 5)."""
    for win in (11, 7, 5, 3):
        levels = max((n for n in range(1, 6) if side // 2 ** (n - 1) >= win), default=0)
        if levels >= 3:
            return win, levels
    return 3, max(1, max((n for n in range(1, 6) if side // 2 ** (n - 1) >= 3), default=1))


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int | None = None,
            levels: int | None = None) -> Tensor:
    """MS-SSIM per image (B,): SSIM at the coarsest of `levels` scales times cs at the others, each to
    its weight (the first `levels` of MS_SSIM_WEIGHTS, renormalized to sum 1 when fewer than five)."""
    auto_win, auto_levels = ms_ssim_settings(min(x.shape[-2:]))
    win, levels = gaussian_window(win_size or auto_win), levels or auto_levels
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], device=x.device)
    if levels < len(MS_SSIM_WEIGHTS):  # fewer scales: their weights renormalized (all five: as published)
        weights = weights / weights.sum()
    x, y = x.float(), y.float()
    terms = []
    for i in range(levels):
        s, cs = _ssim_parts(x, y, win, data_range)
        if i < levels - 1:
            terms.append(torch.relu(cs))
            padding = [n % 2 for n in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
    terms.append(torch.relu(s))
    return torch.prod(torch.stack(terms) ** weights.view(-1, 1, 1), dim=0).mean(1)


def laplacian_energy(x: Tensor) -> Tensor:
    """The mean squared response of the 3x3 Laplacian per image (B,): the high-frequency energy a
    blurry reconstruction lacks (its ratio to the originals' is the sharpness figure)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device)
    c = x.shape[1]
    response = F.conv2d(x.float(), kernel.expand(c, 1, 3, 3), groups=c)
    return response.square().flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image (B,) in dB for pixels in [0, 1]."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1).clamp(min=1e-12)
    return -10 * torch.log10(mse)


def vgg16_file(weights: str | None) -> Path:
    """Where VGG16's ImageNet weights are: `weights` (a file) or torch's hub cache."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"LPIPS weights {path}: no such file (VGG16's ImageNet weights, {VGG16_URL})")
        return path
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_URL.rsplit("/", 1)[-1]


class LPIPS(nn.Module):
    """LPIPS distance (B,) of images in [0, 1] (grey repeated to 3 channels): the lpips package's
    VGG variant (its linear heads from its wheel), frozen. weights: a VGG16 file, None (torch's hub
    cache, downloaded there if missing and possible) or "random" (an untrained backbone: tests)."""

    def __init__(self, weights: str | None = None):
        super().__init__()
        try:
            import lpips
        except ImportError:
            raise VaeError("LPIPS needs the lpips package: pip install 'vaecli[sharp]' (or pip install lpips)") from None
        import contextlib
        import io
        import warnings

        path = None if weights == RANDOM else self._fetch(vgg16_file(weights))  # before building: fails fast
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if path is not None:
            self._load_backbone(path)
        self.net.eval().requires_grad_(False)

    @staticmethod
    def _fetch(path: Path) -> Path:
        """The VGG16 file, downloaded into torch's hub cache first where it is missing."""
        if not path.is_file():
            import socket

            previous = socket.getdefaulttimeout()
            try:
                socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # a firewall that drops packets must not hang us
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(VGG16_URL, str(path), progress=False)
            except Exception as e:  # offline, a proxy, a full disk
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise VaeError(f"LPIPS needs VGG16's ImageNet weights {path.name} and they could not be downloaded "
                               f"({reason}): put {VGG16_URL} into {path.parent}/ or pass the file "
                               "(objective.lpips_weights=FILE, eval-recon --lpips-weights FILE)") from None
            finally:
                socket.setdefaulttimeout(previous)
        return path

    def _load_backbone(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or damaged
            raise VaeError(f"{path} is not torchvision's VGG16 checkpoint ({type(e).__name__}); use {VGG16_URL}") from None
        if not isinstance(state, dict):
            state = {}
        mapped = {}
        for k, (start, stop) in enumerate(VGG_SLICES, start=1):
            for i in range(start, stop):
                for what in ("weight", "bias"):
                    key = f"features.{i}.{what}"
                    if key in state:
                        mapped[f"slice{k}.{i}.{what}"] = state[key]
        missing = set(self.net.net.state_dict()) - set(mapped)
        if missing:
            raise VaeError(f"{path} is not torchvision's VGG16 checkpoint (no {sorted(missing)[0]}); use {VGG16_URL}")
        self.net.net.load_state_dict(mapped)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.net(x.float(), y.float(), normalize=True).flatten()
