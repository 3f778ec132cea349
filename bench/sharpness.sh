#!/usr/bin/env bash
# docs/RESULTS.md "Sharp reconstructions": the same autoencoder_kl network trained three ways on
# dataset=photos (64 px colour) and dataset=shapes (32 px grey), then vae eval-recon on each and one
# picture of the reconstructions side by side per dataset.
#   vae   : objective=elbo, likelihood=gaussian_learned (the Gaussian VAE: L2 with a learned sigma, KL weight 1)
#   msssim: objective=perceptual, L1 + MS-SSIM over a learned log-variance, KL weight 1e-6
#   gan   : the same + the PatchGAN (hinge loss, adaptive weight) from step disc_start
# Usage: [PROFILE=cpu|gpu] bash bench/sharpness.sh [OUT_DIR] [train|eval|all]
#   cpu: ch 16, 3 epochs of 8,000 crops / 8 epochs of shapes, one run at a time (about 50 min on 2 cores)
#   gpu: ch 32, 12 epochs of 20,000 crops / 40 epochs of shapes in bf16, the six runs at once (one GPU)
# VAE names the command (default: vae; e.g. VAE="python3 -m vaecli").
set -euo pipefail
OUT=${1:-runs/sharpness}
WHAT=${2:-all}
PROFILE=${PROFILE:-cpu}
VAE=${VAE:-vae}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
if [[ $PROFILE == gpu ]]; then
  MODEL="model=autoencoder_kl model.ch=32 trainer.lr=5e-4 trainer.batch_size=64 trainer.precision=bf16 trainer.threads=2"
  declare -A DATA=(
    [photos]="dataset=photos dataset.image_size=64 dataset.crops=20000 dataset.test_crops=1000 trainer.epochs=12"
    [shapes]="dataset=shapes trainer.epochs=40"
  )
  declare -A START=([photos]=1500 [shapes]=1000)
  PARALLEL=1
else
  MODEL="model=autoencoder_kl model.ch=16 trainer.lr=5e-4 trainer.batch_size=32"
  declare -A DATA=(
    [photos]="dataset=photos dataset.image_size=64 dataset.crops=8000 dataset.test_crops=1000 trainer.epochs=3"
    [shapes]="dataset=shapes trainer.epochs=8"
  )
  declare -A START=([photos]=250 [shapes]=500)
  PARALLEL=0
fi
jobs_for() {  # the commands of one step, each on a line
  local step=$1
  for data in photos shapes; do
    declare -A LOSS=(
      [vae]="objective=elbo likelihood=gaussian_learned"
      [msssim]="objective=perceptual objective.perceptual=msssim likelihood=gaussian"
      [gan]="objective=perceptual objective.perceptual=msssim objective.adversarial=true objective.disc_channels=32 objective.disc_start=${START[$data]} likelihood=gaussian"
    )
    for loss in vae msssim gan; do
      run="$OUT/$data-$loss"
      if [[ $step == train && ! -f $run/model.safetensors ]]; then
        echo "$VAE train ${DATA[$data]} $MODEL ${LOSS[$loss]} --run-dir $run --json > $run.train.json"
      elif [[ $step == eval ]]; then
        echo "$VAE eval-recon --ckpt $run --features pixels --json > $run.recon.json"
      fi
    done
  done
}
for step in train eval; do
  [[ $WHAT == all || $WHAT == "$step" ]] || continue
  if [[ $PARALLEL == 1 ]]; then
    while read -r cmd; do bash -c "$cmd" & done < <(jobs_for "$step")
    wait
  else
    while read -r cmd; do bash -c "$cmd"; done < <(jobs_for "$step")
  fi
done
if [[ $WHAT != train ]]; then
  for data in photos shapes; do
    $PYTHON "$HERE/side_by_side.py" "$OUT/$data-side-by-side.png" "$OUT/$data-vae" "$OUT/$data-msssim" "$OUT/$data-gan"
  done
fi
