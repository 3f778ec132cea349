"""vae sample, reconstruct, interpolate: each parses, calls vaecli.evaluation.pictures, writes the picture
and says where."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from . import inputs, output
from .app import (Ckpt, DataRoot, Device, Gif, Json, Seed, Steps, Threads, Zoom, app, at_least, label_option,
                  out_option, picture_out)

SampleLabel = label_option("a class, or 'all' for one row per class (default).")
SampleOut = Annotated[Optional[str], typer.Option(
    "--out", help="PNG grid to write (default: RUN/sample.png); a folder (DIR/) for one PNG per image at the model's "
                  "size; FILE.safetensors for the images as a tensor.")]
FileLabel = label_option("the class of the image files.")
ReconstructionOut = out_option("reconstruction.png")
PathLabel = label_option("the class to decode with (default: A's).")
InterpolationOut = out_option("interpolation.png")


@app.command()
def sample(
    ckpt: Ckpt = None,
    n: Annotated[int, typer.Option("--n", callback=at_least(1), help="Number of samples.")] = 64,
    temperature: Annotated[str, typer.Option(
        "--temperature", help="Scales the prior's sigma; for model=ladder also one value per latent group, "
                              "top first (1,0.8,0.6).")] = "1.0",
    seed: Seed = 0,
    label: SampleLabel = None,
    sampler: Annotated[str, typer.Option(
        "--sampler", help="Where latents come from: prior (the model's p(z)), or one fitted with vae fit-sampler: "
                          "gmm, two_stage.")] = "prior",
    nrow: Annotated[Optional[int], typer.Option("--nrow", callback=at_least(1),
                                                help="Images per row (default: a near-square grid; per class: n).")] = None,
    zoom: Zoom = None,
    out: SampleOut = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
) -> None:
    """Draw n images from the prior (or a fitted --sampler), decoded to the likelihood's mean (an autoregressive decoder
    draws them pixel by pixel: one network pass per pixel), as one PNG grid (or one file per image,
    or a tensor file).

    For a conditional model, n per class (one row each) unless --label picks one class."""
    import torch

    from ..evaluation import pictures, samplers
    from ..data.images import choose_zoom

    loaded = inputs.load(ckpt, device, threads)
    model = loaded.model
    temperature = inputs.temperatures(temperature, model)
    chosen = samplers.load(sampler, loaded)
    which = inputs.label(model, label, allow_all=True)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with output.Drawing(model, n, enabled=not as_json):
        images, rows = pictures.prior_samples(model, n, temperature, generator, which, chosen)
    nrow = nrow or rows
    written = inputs.write_images(images, out or str(loaded.run_dir / "sample.png"), nrow, zoom,
                                  {"ckpt": str(loaded.path), "seed": str(seed), "temperature": str(temperature),
                                   "sampler": sampler})
    output.say(f"wrote {len(images)} samples to {written}", as_json)
    output.emit({"out": str(written), "n": len(images), "temperature": temperature, "seed": seed, "sampler": sampler,
                 "zoom": choose_zoom(images, nrow, zoom) if written.suffix == ".png" else zoom or 1,
                 "ckpt": str(loaded.path), "label": "all" if model.conditional and which in (None, "all") else which},
                as_json)


@app.command()
def reconstruct(
    images: Optional[List[str]] = typer.Argument(
        None, metavar="IMAGES", help="Image files, or test:N / train:N for dataset images."),
    ckpt: Ckpt = None,
    n: Annotated[int, typer.Option("--n", callback=at_least(1), help="Test images to use when no IMAGES are given.")] = 16,
    samples: Annotated[int, typer.Option("--samples", callback=at_least(1),
                                         help="Posterior samples per image for the -ELBO estimate.")] = 64,
    label: FileLabel = None,
    zoom: Zoom = None,
    out: ReconstructionOut = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
) -> None:
    """Originals above their reconstructions in one PNG, with the -ELBO of each image
    (-log p(x|z) for an autoencoder). An autoregressive decoder draws its reconstructions pixel by
    pixel (its mean has no closed form)."""
    from ..evaluation import evaluate, pictures
    from ..data.images import choose_zoom, save_grid

    loaded = inputs.load(ckpt, device, threads)
    splits: dict = {}
    refs = list(images or [])
    if not refs:
        splits["test"] = inputs.dataset(loaded, "test", data_root)
        refs = [f"test:{i}" for i in range(min(n, len(splits["test"])))]
    x, names, y = inputs.images(refs, loaded, data_root, splits, inputs.label(loaded.model, label))
    with output.Drawing(loaded.model, len(x), enabled=not as_json):
        result = evaluate.reconstructions(loaded.model, x, y, samples)
    grid, nrow = pictures.above_below(x, result["images"])
    path = save_grid(grid, inputs.out_path(out, loaded, "reconstruction.png"), nrow=nrow, zoom=zoom)
    key, losses = result["measure"], result["loss"]
    per_image = [{"image": name, key: value} for name, value in zip(names, losses)]
    summary = {"out": str(path), "n": len(x), "images": per_image, f"mean_{key}": sum(losses) / len(losses),
               "zoom": choose_zoom(grid, nrow, zoom), "ckpt": str(loaded.path)}
    if not as_json:
        measure = "-ELBO" if key == "neg_elbo" else "-log p(x|z)"
        rows = [[row["image"], f"{row[key]:.2f}"] for row in per_image] + [["mean", f"{summary[f'mean_{key}']:.2f}"]]
        output.stdout.print(output.columns(f"reconstructions -> {path}", ["image", f"{measure} (nats)"], rows,
                                           bold_last=True))
    output.emit(summary, as_json)


@app.command()
def interpolate(
    a: str = typer.Argument(..., help="First image file (or test:N / train:N)."),
    b: str = typer.Argument(..., help="Second image file (or test:N / train:N)."),
    ckpt: Ckpt = None,
    steps: Steps = 10,
    slerp: bool = typer.Option(False, "--slerp", help="Spherical instead of linear interpolation."),
    label: PathLabel = None,
    zoom: Zoom = None,
    gif: Gif = False,
    out: InterpolationOut = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
) -> None:
    """Decode a path between the posterior means of two images, saved as a strip PNG (or, with
    --gif, an animation going there and back). An autoregressive decoder draws each frame pixel by
    pixel, every frame with the same random numbers (the path shows what z changes)."""
    from ..evaluation import pictures
    from ..data.images import choose_zoom, save_gif, save_grid

    loaded = inputs.load(ckpt, device, threads)
    target = picture_out(out, gif, loaded.run_dir, "interpolation")
    x, _, y = inputs.images([a, b], loaded, data_root, given_label=inputs.label(loaded.model, label))
    with output.Drawing(loaded.model, steps, enabled=not as_json, common=True):
        frames = pictures.interpolation(loaded.model, x, y, steps, slerp)
    if target.suffix.lower() == ".gif":
        there_and_back = [*frames, *frames.flip(0)[1:-1]]
        path, shown = save_gif([f[None] for f in there_and_back], target, nrow=1, zoom=zoom), choose_zoom(frames[:1], 1, zoom)
    else:
        path, shown = save_grid(frames, target, nrow=steps, zoom=zoom), choose_zoom(frames, steps, zoom)
    method = "slerp" if slerp else "lerp"
    output.say(f"wrote a {steps}-step {method} {'animation' if path.suffix == '.gif' else 'strip'} to {path}", as_json)
    output.emit({"out": str(path), "steps": steps, "method": method, "a": a, "b": b, "zoom": shown,
                 "ckpt": str(loaded.path)}, as_json)
