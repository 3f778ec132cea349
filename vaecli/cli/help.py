"""What `vae --help` lists for each command (a short first line), and what each command's `--help`
ends with (examples and the documentation page), declared once; `attach` hands them to Typer and
the generated command reference (reference.py) prints the same."""

from __future__ import annotations

SHORT = {
    "train": "Train a VAE (Hydra overrides; -m for a sweep).",
    "train-prior": "Train a VQ-VAE's prior over its codes (stage two).",
    "sample": "Draw images from the prior or a fitted sampler.",
    "reconstruct": "Test images above their reconstructions.",
    "interpolate": "Decode a path between two images' latents.",
    "fit-sampler": "Fit a sampler (GMM, two-stage) to the latents.",
    "eval-samples": "Sample quality: FID, KID, precision and recall.",
    "eval-recon": "Reconstruction quality: PSNR, SSIM, LPIPS, rFID.",
    "eval-iwae": "ELBO and IWAE bound, in nats and bits/dim.",
    "score": "Per-image bounds; OOD detection with --against.",
    "encode": "Latents of images or a split, to safetensors.",
    "decode": "Pictures of a latents file.",
    "export": "Export an autoencoder_kl run for diffusers.",
    "traverse": "Sweep each latent dimension around an image's code.",
    "latent-plot": "Scatter of test images' latents, coloured by label.",
    "plot-metrics": "Training curves from a run's metrics.jsonl.",
    "eval-disentanglement": "MIG, DCI, SAP, FactorVAE and β-VAE scores.",
    "runs": "The runs under a folder, with their figures.",
}

EXAMPLES = {
    "train": ["vae train dataset=mnist beta=4", "vae train dataset=shapes model=conv trainer.epochs=20 --run-dir runs/shapes",
              "vae train -m beta=1,4,8 seed=0,1,2", "vae train --resume runs/shapes trainer.epochs=40"],
    "train-prior": ["vae train-prior --ckpt runs/vq trainer.epochs=20"],
    "sample": ["vae sample --n 64 --out samples.png", "vae sample --ckpt runs/shapes --sampler gmm --temperature 0.8"],
    "reconstruct": ["vae reconstruct --n 16 --out recon.png"],
    "interpolate": ["vae interpolate test:3 test:2 --slerp --steps 10", "vae interpolate a.png b.png --gif"],
    "fit-sampler": ["vae fit-sampler --ckpt runs/shapes sampler=gmm sampler.components=auto",
                    "vae fit-sampler sampler=two_stage"],
    "eval-samples": ["vae eval-samples --n 10000", "vae eval-samples --features pixels --sampler gmm --n 2000",
                     "vae eval-samples --of reconstructions"],
    "eval-recon": ["vae eval-recon --n 1000", "vae eval-recon --features pixels --lpips-weights none"],
    "eval-iwae": ["vae eval-iwae --k 5000", "vae eval-iwae --k 1,50,5000 --n 1000 --json"],
    "score": ["vae score --out scores.csv", "vae score --against 'dataset=fashion_mnist' --k 100"],
    "encode": ["vae encode --data test --out latents.safetensors", "vae encode a.png b.png --out ab.safetensors"],
    "decode": ["vae decode latents.safetensors --out decoded/"],
    "export": ["vae export runs/kl exported/ --format diffusers"],
    "traverse": ["vae traverse --image test:0 --dims 10 --range 3"],
    "latent-plot": ["vae latent-plot --n 2000 --method tsne"],
    "plot-metrics": ["vae plot-metrics runs/shapes --out curves.png"],
    "eval-disentanglement": ["vae eval-disentanglement --ckpt runs/beta4"],
    "runs": ["vae runs", "vae runs runs/beta-sweep --sort mig"],
}

# command -> (page of the documentation site, its title)
SEE_ALSO = {
    "train": ("guide/configuration.md", "Configuration"),
    "train-prior": ("tutorials/vqvae.md", "VQ-VAE in two stages"),
    "sample": ("tutorials/samplers.md", "Prior holes, samplers and FID"),
    "reconstruct": ("getting-started.md", "Getting started"),
    "interpolate": ("getting-started.md", "Getting started"),
    "fit-sampler": ("tutorials/samplers.md", "Prior holes, samplers and FID"),
    "eval-samples": ("tutorials/samplers.md", "Prior holes, samplers and FID"),
    "eval-recon": ("tutorials/sharp.md", "Sharp reconstructions"),
    "eval-iwae": ("tutorials/likelihood.md", "The likelihood and its bound"),
    "score": ("tutorials/ood.md", "Out-of-distribution scoring"),
    "encode": ("tutorials/sharp.md", "Sharp reconstructions"),
    "decode": ("tutorials/sharp.md", "Sharp reconstructions"),
    "export": ("tutorials/sharp.md", "Sharp reconstructions"),
    "traverse": ("tutorials/disentanglement.md", "β-VAE and the disentanglement study"),
    "latent-plot": ("tutorials/collapse.md", "Posterior collapse and its cures"),
    "plot-metrics": ("tutorials/collapse.md", "Posterior collapse and its cures"),
    "eval-disentanglement": ("tutorials/disentanglement.md", "β-VAE and the disentanglement study"),
    "runs": ("tutorials/sweeps.md", "Sweeps and comparing runs"),
}


def epilog(name: str) -> str:
    """Click rewraps an epilog's paragraphs; a paragraph starting with \\b keeps its lines."""
    parts = []
    if name in EXAMPLES:
        parts.append("\b\nExamples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name]))
    if name in SEE_ALSO:
        page, title = SEE_ALSO[name]
        parts.append(f"\b\nSee also: docs/{page} ({title}).")
    return "\n\n".join(parts)


def attach(app) -> None:
    """Give every registered command its short line and epilog."""
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if name in SHORT:
            info.short_help = SHORT[name]
        info.epilog = epilog(name) or info.epilog
