"""vae fit-sampler and vae eval-samples: ex-post samplers of the latents, and sample quality."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from . import inputs, output
from .app import Ckpt, DataRoot, Device, Json, Quiet, Threads, app, at_least, one_of

SamplerOption = Annotated[str, typer.Option(
    "--sampler", callback=one_of("prior", "gmm", "two_stage"),
    help="Where latents come from: prior (the model's p(z)), or a sampler fitted with vae fit-sampler "
         "(gmm, two_stage).")]


@app.command("fit-sampler", context_settings={"help_option_names": ["--help", "-h"]})
def fit_sampler(
    overrides: Optional[List[str]] = typer.Argument(
        None, metavar="OVERRIDES",
        help="sampler=gmm|two_stage and sampler.* keys, e.g. sampler.components=20 or sampler.components=auto (conf/sampler/)."),
    ckpt: Ckpt = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Fit an ex-post sampler to the latents of the training images (Ghosh et al. 2020): a Gaussian
    mixture (sampler=gmm) or a second-stage VAE (sampler=two_stage, Dai & Wipf 2019), into
    RUN/sampler.NAME.safetensors. Then: vae sample --sampler NAME, vae eval-samples --sampler NAME.

    Samples then land where the training images were encoded, not in the prior's holes; on
    model=ae it is what makes the autoencoder generative."""
    from ..config import load_sampler_config

    cfg, tree = load_sampler_config(overrides or [])
    import time

    import torch

    from ..evaluation import samplers

    loaded = inputs.load(ckpt, device, threads)
    model = loaded.model
    samplers.check_model(model)
    data = inputs.dataset(loaded, "train", data_root).head(cfg.images)
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    started = time.perf_counter()
    label, steps, unit = samplers.progress_steps(cfg)
    with output.Counter(label, steps, enabled=bool(steps) and not quiet and not as_json, unit=unit) as advance:
        fitted, stats = samplers.fit(model, data, cfg, generator,
                                     on_step=(lambda e, value: advance(1)) if advance else None)
    if cfg.name == "gmm" and not stats["converged"]:
        output.warn(f"EM did not converge in sampler.max_iter={cfg.max_iter} iterations; the mixture is usable, "
                    "but a larger sampler.max_iter fits it better")
    spec = {**tree, "latent_dim": model.latent_dim}
    if "components" in stats:  # the number fitted, also where sampler.components=auto chose it
        spec["components"] = stats["components"]
    path = samplers.save(loaded.run_dir, fitted, spec, loaded.path, loaded.step, {**stats, "images": len(data)})
    seconds = time.perf_counter() - started
    result = {"sampler": cfg.name, "out": str(path), "images": len(data), "latent_dim": model.latent_dim,
              "fit_on": cfg.fit_on, "seconds": seconds, "ckpt": str(loaded.path), "config": tree, **stats}
    output.emit(result, as_json, _fit_table(cfg, result, loaded.run_dir))


def _fit_table(cfg, r: dict, run_dir):
    from ..evaluation import samplers

    rows = [("sampler", cfg.name + (f", {r.get('components')} components ({cfg.covariance})" if cfg.name == "gmm" else
                                    f", hidden {cfg.hidden}, {cfg.epochs} epochs")),
            ("fitted on", f"{r['images']} training images' latents "
                          f"({'posterior means' if cfg.fit_on == 'mean' else 'draws of q(z|x)'})")]
    if cfg.name == "gmm":
        if r.get("held_out_log_q_z"):
            scores = r["held_out_log_q_z"]
            rows.append(("chosen by", f"held-out mean log q(z) (of up to {samplers.SELECT_ON:,} latents, a tenth kept out): "
                         + ", ".join(f"K={k}: {v:.2f}" for k, v in scores.items())))
        rows.append(("mean log q(z)", f"{r['log_q_z']:.3f} nats per latent vector ({r['iterations']} EM iterations"
                                      + (")" if r["converged"] else ", not converged)")))
    else:
        rows += [("final loss", f"{r['loss']:.3f} nats per latent vector"), ("gamma", f"{r['gamma']:.3g}")]
    rows += [("time", f"{r['seconds']:.1f} s"), ("file", r["out"]),
             ("use it", f"vae sample --ckpt {run_dir} --sampler {cfg.name}")]
    return output.table(f"vae fit-sampler: {run_dir}", rows)


@app.command("eval-samples")
def eval_samples(
    ckpt: Ckpt = None,
    n: Annotated[int, typer.Option("--n", callback=at_least(2),
                                   help="Model images, and reference images of the split (a fixed random subset).")] = 10000,
    sampler: SamplerOption = "prior",
    of: Annotated[str, typer.Option("--of", callback=one_of("samples", "reconstructions"),
                                    help="samples (from --sampler) or reconstructions of the reference images "
                                         "(the decoder's blur alone, without the prior's holes).")] = "samples",
    temperature: Annotated[str, typer.Option("--temperature", help="Scales the sampler's sigma (ladder: one per group, "
                                                                  "top first).")] = "1.0",
    split: Annotated[str, typer.Option("--split", callback=one_of("test", "train"), help="The reference split.")] = "test",
    features: Annotated[str, typer.Option("--features", callback=one_of("inception", "pixels"),
                                          help="inception: Inception-v3 pool features (torch-fidelity; downloads its "
                                               "weights once); pixels: the pixels themselves (offline).")] = "inception",
    inception_weights: Annotated[Optional[str], typer.Option(
        "--inception-weights", help="torch-fidelity's Inception-v3 weights file (default: its download, cached "
                                    "under $TORCH_HOME/hub/checkpoints).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least(1), help="Images per batch.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the samples and the KID subsets.")] = 0,
    draw: Annotated[Optional[bool], typer.Option(
        "--draw/--mean", help="The model's images: draws x ~ p(x|z), or the likelihood's mean (default: draws where "
                              "the data are binary, so binary images meet binary images; means otherwise).",
        show_default=False)] = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """FID and KID (Heusel et al. 2017; Binkowski et al. 2018) and improved precision/recall
    (Kynkaanniemi et al. 2019) of the model's samples (or reconstructions) against the split.

    Lower FID/KID is better; precision is the share of samples that look like data (fidelity),
    recall the share of the data the samples cover (diversity). Figures depend on n and on the
    feature space: compare them only at equal n and --features."""
    from ..evaluation import sample_quality, samplers
    from ..training import tracking

    loaded = inputs.load(ckpt, device, threads)
    model = loaded.model
    temperature = inputs.temperatures(temperature, model)
    if of == "reconstructions" and sampler != "prior":
        raise UsageError("--sampler is for --of samples: reconstructions decode the images' own latents")
    chosen = samplers.load(sampler, loaded) if of == "samples" else samplers.Prior()
    data = inputs.dataset(loaded, split, data_root)
    sample_quality.reference_indices(len(data), n, split)  # refuses n > the split before any features are loaded
    talk = not quiet and not as_json and output.stderr.is_terminal
    extractor = sample_quality.extractor(features, model.device, inception_weights,
                                         notice=(lambda text: output.stderr.print(f"note: {text}", markup=False,
                                                                                  highlight=False)) if talk else None)
    if model.draws_pixel_by_pixel and of == "samples" and not as_json and not quiet:
        output.note_pixel_by_pixel(model, f"per batch of {batch_size}")
    with output.Counter(f"eval-samples ({features})", 2 * n, enabled=not quiet and not as_json) as advance:
        result = sample_quality.evaluate(model, chosen, data, loaded.dataset, split, n, of, extractor, temperature,
                                         seed, batch_size, loaded.seed, on_batch=advance, draw=draw)
    result.update({"ckpt": str(loaded.path), "dataset": loaded.dataset.name, "step": loaded.step})
    tracking.append_eval(loaded.run_dir, {"kind": "samples", **{k: result[k] for k in (
        "fid", "kid", "kid_std", "precision", "recall", "n", "split", "of", "images", "sampler", "temperature",
        "features", "seed")}, "step": loaded.step})
    output.emit(result, as_json, _samples_table(result, temperature, loaded.dataset.name))


def _samples_table(r: dict, temperature, dataset: str):
    what = (f"{r['sampler']} samples" + (f" at T={temperature}" if temperature != 1.0 else "")
            if r["of"] == "samples" else "reconstructions")
    rows = [("FID", f"{r['fid']:.3f}"),
            ("KID", f"{r['kid']:.5f} ± {r['kid_std']:.5f} ({r['kid_subsets']} subsets of {r['kid_subset_size']})"
                    if r["kid_subset_size"] < r["n"] else  # every subset is the whole set: no spread to show
                    f"{r['kid']:.5f} (one subset: all {r['n']} images of each set, so no spread over subsets)"),
            ("precision", f"{r['precision']:.3f} (samples inside the data's manifold, k={r['pr_neighbours']})"),
            ("recall", f"{r['recall']:.3f} (data inside the samples' manifold)"),
            ("model images", "draws x ~ p(x|z)" if r["images"] == "draws" else "the likelihood's means"),
            ("features", f"{r['features']} ({r['feature_dims']}-d)"),
            ("time", f"{r['seconds']:.1f} s")]
    return output.table(f"eval-samples: {what} vs {r['n']} {dataset} {r['split']} images", rows)


@app.command("eval-recon")
def eval_recon(
    ckpt: Ckpt = None,
    n: Annotated[Optional[int], typer.Option("--n", callback=at_least(1),
                                             help="Images of the split to reconstruct, a fixed random subset "
                                                  "(default: 1000, or the whole split if smaller).")] = None,
    split: Annotated[str, typer.Option("--split", callback=one_of("test", "train"), help="test or train.")] = "test",
    features: Annotated[str, typer.Option("--features", callback=one_of("inception", "pixels"),
                                          help="rFID's features: inception (downloads its weights once) or pixels "
                                               "(offline).")] = "inception",
    inception_weights: Annotated[Optional[str], typer.Option(
        "--inception-weights", help="torch-fidelity's Inception-v3 weights file.")] = None,
    lpips_weights: Annotated[Optional[str], typer.Option(
        "--lpips-weights", help="VGG16's ImageNet weights file for LPIPS (default: torch's hub cache, downloaded "
                                "once; offline and missing: lpips is null, with the reason); none: no LPIPS.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least(1), help="Images per batch.")] = 100,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Reconstruction figures: PSNR, SSIM, LPIPS, rFID, sharpness.

    Of reconstructions against their images. Reconstructions are the decoder's mean image at the posterior mean, as vae reconstruct shows
    them; sharpness is their high-frequency energy (mean squared Laplacian) over the originals'."""
    from ..evaluation import reconstruction, sample_quality
    from ..training import tracking

    loaded = inputs.load(ckpt, device, threads)
    model = loaded.model
    if model.draws_pixel_by_pixel:
        raise UsageError("eval-recon compares the decoder's mean image, and a PixelCNN decoder draws pixel by pixel: "
                         "use eval-iwae or eval-samples --of reconstructions for it")
    data = inputs.dataset(loaded, split, data_root)
    n = n if n is not None else min(1000, len(data))
    sample_quality.reference_indices(len(data), n, split)  # refuses n > the split before loading anything
    talk = not quiet and not as_json and output.stderr.is_terminal
    extractor = sample_quality.extractor(features, model.device, inception_weights,
                                         notice=(lambda text: output.stderr.print(f"note: {text}", markup=False,
                                                                                  highlight=False)) if talk else None)
    with output.Counter("eval-recon", n, enabled=not quiet and not as_json) as advance:
        result = reconstruction.evaluate(model, data, split, n, extractor, batch_size, loaded.seed, lpips_weights,
                                         on_batch=advance)
    result.update({"ckpt": str(loaded.path), "dataset": loaded.dataset.name, "step": loaded.step})
    tracking.append_eval(loaded.run_dir, {"kind": "recon", **{k: result[k] for k in (
        "psnr", "ssim", "lpips", "rfid", "sharpness", "features", "n", "split")}, "step": loaded.step})
    if result["lpips"] is None and lpips_weights != "none" and not as_json and not quiet:
        output.warn(f"lpips: {result['lpips_missing']}")
    rows = [("PSNR", f"{result['psnr']:.2f} dB"), ("SSIM", f"{result['ssim']:.4f}"),
            ("LPIPS", f"{result['lpips']:.4f}" if result["lpips"] is not None else "n/a (no VGG16 weights: see the note)"),
            (f"rFID ({result['features']})", f"{result['rfid']:.3f}" if result["rfid"] is not None else "n/a (n < 2)"),
            ("sharpness", f"{result['sharpness']:.3f} (high-frequency energy of reconstructions / originals)"),
            ("time", f"{result['seconds']:.1f} s")]
    output.emit(result, as_json, output.table(f"eval-recon: {result['n']} {loaded.dataset.name} {split} images", rows))
