set -e
export PYTHONPATH=/tmp/prev VAECLI_DATA=/tmp/legacy/data PYTHONUNBUFFERED=1
V="/work/main/.venv/bin/python -m vaecli"
S="dataset=shapes dataset.image_size=8 dataset.scales=1 dataset.rotations=2 dataset.positions=4 trainer.epochs=1 trainer.batch_size=32 trainer.log_every=1 trainer.sample_every=0 trainer.eval_batch_size=64 seed=3"
rm -rf runs; mkdir runs
$V train $S model.hidden=[16] model.latent_dim=3 --run-dir runs/mlp
$V train $S model=conv model.hidden=[4,8] model.latent_dim=3 posterior=iaf posterior.flows=2 posterior.hidden=8 likelihood=logistic likelihood.mixtures=2 --run-dir runs/conv_iaf_logistic
$V train $S model=vqvae model.hidden=[4,8] model.code_dim=3 model.codebook_size=8 model.dead_after=2 --run-dir runs/vqvae
$V train $S model=ladder model.hidden=[16] model.latent_dim=2 model.groups=2 model.decoder=pixelcnn model.ar_layers=1 model.ar_kernel=3 model.ar_channels=4 --run-dir runs/ladder_pixelcnn
$V train $S model.hidden=[16] model.latent_dim=3 model.latent=categorical model.categories=4 prior=normal --run-dir runs/categorical
$V train $S model=hvae model.hidden=[16] model.latent_dim=3 model.latent_dim2=2 model.hidden2=[8] model.conditional=true --run-dir runs/hvae_conditional
$V train $S model.hidden=[16] model.latent_dim=3 prior=vamp prior.components=3 --run-dir runs/vamp
$V train $S model.hidden=[16] model.latent_dim=3 objective=factorvae objective.disc_width=8 objective.disc_layers=1 --run-dir runs/factorvae
$V fit-sampler --ckpt runs/mlp sampler=gmm sampler.components=2
