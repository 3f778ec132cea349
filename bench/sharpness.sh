#!/usr/bin/env bash
# docs/RESULTS.md "Sharp reconstructions": the same autoencoder_kl network trained three ways on
# dataset=photos (64 px colour) and dataset=shapes (32 px grey), then vae eval-recon on each.
#   vae   : objective=elbo, likelihood=gaussian_learned (the Gaussian VAE, L2 with a learned sigma, KL weight 1)
#   msssim: objective=perceptual, L1 + MS-SSIM, KL weight 1e-6
#   gan   : the same + the PatchGAN (hinge loss, adaptive weight), from step disc_start
# Usage: bash bench/sharpness.sh [OUT_DIR] [train|eval|all]   (about 40 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/sharpness}
WHAT=${2:-all}
VAE=${VAE:-vae}
mkdir -p "$OUT"
MODEL="model=autoencoder_kl model.ch=16 trainer.lr=5e-4 trainer.batch_size=32"
declare -A DATA=(
  [photos]="dataset=photos dataset.image_size=64 dataset.crops=8000 dataset.test_crops=1000 trainer.epochs=3"
  [shapes]="dataset=shapes trainer.epochs=8"
)
declare -A START=([photos]=250 [shapes]=500)
for data in photos shapes; do
  declare -A LOSS=(
    [vae]="objective=elbo likelihood=gaussian_learned"
    [msssim]="objective=perceptual objective.perceptual=msssim likelihood=gaussian"
    [gan]="objective=perceptual objective.perceptual=msssim objective.adversarial=true objective.disc_channels=32 objective.disc_start=${START[$data]} likelihood=gaussian"
  )
  for loss in vae msssim gan; do
    run="$OUT/$data-$loss"
    if [[ $WHAT != eval && ! -f $run/model.safetensors ]]; then
      $VAE train ${DATA[$data]} $MODEL ${LOSS[$loss]} --run-dir "$run" --json > "$run.train.json"
    fi
    if [[ $WHAT != train ]]; then
      $VAE eval-recon --ckpt "$run" --features pixels --json > "$run.recon.json"
    fi
  done
done
