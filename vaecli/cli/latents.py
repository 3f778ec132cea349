"""vae encode, vae decode and vae export: latents for downstream models, and the trained
autoencoder handed to diffusers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError, VaeError
from . import inputs, output
from .app import Ckpt, DataRoot, Device, Json, Quiet, Threads, app, at_least, one_of

ScaleImages = Annotated[int, typer.Option("--scale-images", callback=at_least(2),
                                          help="Training images whose latents give the scaling factor 1/std.")]


def _training_scale(loaded, data_root, n: int, batch_size: int, seed: int) -> float:
    import torch

    from ..evaluation import codes

    train = inputs.dataset(loaded, "train", data_root)
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    latents = codes.encode(loaded.model, train.to_float(train.images[picked], torch.Generator().manual_seed(seed)),
                           "sample", batch_size, generator=torch.Generator(device=loaded.model.device).manual_seed(seed))
    return codes.scaling_factor(latents)


@app.command("encode")
def encode(
    images: Optional[List[str]] = typer.Argument(None, metavar="[IMAGES...]",
                                                 help="Image files or dataset references (test:0); default: --data."),
    ckpt: Ckpt = None,
    out: Annotated[Path, typer.Option("--out", help="The latents file to write (.safetensors).")] = Path("latents.safetensors"),
    data: Annotated[Optional[str], typer.Option("--data", callback=one_of("train", "test"),
                                                help="Encode a split of the run's dataset instead of IMAGES.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", callback=at_least(1), help="The first N images of --data.")] = None,
    sample: Annotated[bool, typer.Option("--sample/--mean", help="A draw of q(z|x) per image, or its mean.")] = False,
    scale_images: ScaleImages = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least(1), help="Images per batch.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws and of the images the scale comes from.")] = 0,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Latents of images or a split, for a downstream model.

    (N, z_channels, H/f, W/f) for model=autoencoder_kl, (N, latent_dim) otherwise. The file holds `latents` (unscaled; multiply by the stored scaling_factor, 1/std over the
    training set, for a diffusion model) and, as metadata, the run, the mode and the names."""
    import torch

    from ..atomic import atomic_write
    from ..evaluation import codes

    if bool(images) == bool(data):
        raise UsageError("give IMAGES or --data train|test (one of them)")
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"--out must end in .safetensors (got {out})")
    loaded = inputs.load(ckpt, device, threads)
    if loaded.model.discrete or loaded.model.posterior != "gaussian":
        raise UsageError("vae encode writes Gaussian latents: this model's posterior is not a diagonal Gaussian "
                         "(VQ-VAE codes, a flow or a point mass)")
    if data:
        split = inputs.dataset(loaded, data, data_root).head(n)
        x, names = split.to_float(split.images, first=0), [f"{data}:{i}" for i in range(len(split))]
        y = split.labels if loaded.model.conditional else None
    else:
        x, names, y = inputs.images(images, loaded, data_root)
    generator = torch.Generator(device=loaded.model.device).manual_seed(seed)
    with output.Counter("encode", len(x), enabled=not quiet and not as_json) as advance:
        latents = codes.encode(loaded.model, x, "sample" if sample else "mean", batch_size, y, generator, advance)
    scale = _training_scale(loaded, data_root, scale_images, batch_size, seed)
    metadata = {"vaecli.run": str(loaded.run_dir), "vaecli.step": str(loaded.step), "vaecli.mode": "sample" if sample else "mean",
                "vaecli.scaling_factor": repr(scale), "vaecli.names": json.dumps(names)}
    from safetensors.torch import save_file

    atomic_write(out, lambda tmp: save_file({codes.LATENTS: latents.contiguous()}, str(tmp), metadata=metadata))
    result = {"out": str(out), "latents": len(latents), "shape": list(latents.shape[1:]), "mode": metadata["vaecli.mode"],
              "scaling_factor": scale, "ckpt": str(loaded.path)}
    output.emit(result, as_json, output.table(f"vae encode: {len(latents)} images", [
        ("latents", f"{out} ({len(latents)} x {tuple(latents.shape[1:])}, {result['mode']})"),
        ("scaling factor", f"{scale:.5f} (1/std over {scale_images} training images' latents)")]))


def read_latents(path: Path, model) -> tuple:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from ..evaluation import codes

    if not path.is_file():
        raise UsageError(f"{path}: no such latents file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a safetensors latents file ({str(e).splitlines()[0]})") from None
    if codes.LATENTS not in tensors:
        raise UsageError(f"{path} has no '{codes.LATENTS}' tensor (write one with vae encode)")
    latents = tensors[codes.LATENTS]
    want = codes.latent_shape(model)
    if tuple(latents.shape[1:]) != want or latents.dim() != len(want) + 1:
        raise UsageError(f"{path} holds latents of shape {tuple(latents.shape)}, and this model's are (N, "
                         f"{', '.join(map(str, want))}): encode them with the same run")
    if not latents.is_floating_point():
        raise UsageError(f"{path}: latents must be floating point (got {latents.dtype})")
    return latents, metadata


@app.command("decode")
def decode(
    latents_file: Annotated[Path, typer.Argument(metavar="LATENTS", help="A latents file (vae encode).")],
    ckpt: Ckpt = None,
    out: Annotated[str, typer.Option("--out", help="A folder (one PNG per latent) or a grid .png.")] = "decoded/",
    scaled: Annotated[bool, typer.Option("--scaled", help="The file's latents are multiplied by the scaling factor "
                                                          "(a diffusion model's output): divide it out first.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least(1), help="Latents per batch.")] = 100,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Pictures of a latents file (the inverse of vae encode).

    One PNG each in a folder, or a grid."""
    from ..data.images import grid_rows, save_each, save_grid
    from ..evaluation import codes

    loaded = inputs.load(ckpt, device, threads)
    latents, metadata = read_latents(latents_file, loaded.model)
    if scaled:
        if "vaecli.scaling_factor" not in metadata:
            raise UsageError(f"--scaled: {latents_file} stores no scaling factor")
        latents = latents / float(metadata["vaecli.scaling_factor"])
    if loaded.model.conditional:
        raise UsageError("this is a conditional model: vae decode has no labels for it; use vae sample --label N")
    with output.Counter("decode", len(latents), enabled=not quiet and not as_json) as advance:
        images = codes.decode(loaded.model, latents, batch_size, on_batch=advance)
    if out.endswith(("/", "\\")) or Path(out).is_dir():
        save_each(images, Path(out), "decoded")
    elif Path(out).suffix.lower() == ".png":
        save_grid(images, Path(out), nrow=grid_rows(len(images)))
    else:
        raise UsageError(f"--out must be a folder (ending in /) or a .png file (got {out})")
    output.emit({"out": out, "images": len(images), "ckpt": str(loaded.path)}, as_json,
                output.table(f"vae decode: {len(images)} images", [("out", out)]))


@app.command("export")
def export(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run folder (or its model.safetensors).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The folder to write.")],
    format: Annotated[str, typer.Option("--format", callback=one_of("diffusers"),
                                        help="diffusers: a folder AutoencoderKL.from_pretrained reads.")] = "diffusers",
    scaling_factor: Annotated[Optional[float], typer.Option(
        "--scaling-factor", help="The config's scaling_factor (default: 1/std of the latents of --scale-images "
                                 "training images).")] = None,
    scale_images: ScaleImages = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the images the scale comes from.")] = 0,
    data_root: DataRoot = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    as_json: Json = False,
) -> None:
    """Export a model=autoencoder_kl run for diffusers.

    `AutoencoderKL.from_pretrained(OUT)` loads it, and its encode/decode give vaecli's on the same
    images (on diffusers' [-1, 1] pixel scale)."""
    import shutil
    import tempfile

    loaded = inputs.load(run, "cpu")
    model = loaded.model
    if model.spec.kind != "autoencoder_kl":
        raise UsageError(f"--format diffusers exports model=autoencoder_kl runs (this is {model.spec.kind})")
    if out.exists() and not force:
        raise UsageError(f"{out} exists: choose another folder or pass --force")
    from ..models import autoencoder_kl

    try:
        autoencoder_kl.diffusers_config(model, 1.0)
        autoencoder_kl.diffusers_state(model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    scale = scaling_factor if scaling_factor is not None else _training_scale(loaded, data_root, scale_images, 100, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        autoencoder_kl.export_diffusers(model, staging, scale)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as e:
        raise VaeError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = {"out": str(out), "format": format, "scaling_factor": scale, "ckpt": str(loaded.path)}
    output.emit(result, as_json, output.table(f"vae export: {out}", [
        ("format", "diffusers AutoencoderKL (config.json, diffusion_pytorch_model.safetensors)"),
        ("scaling factor", f"{scale:.5f}"), ("load it", f"AutoencoderKL.from_pretrained({str(out)!r})")]))
