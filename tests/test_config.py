"""Every config file composes, validates and builds; bad overrides are usage errors."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_fake_celeba, write_fake_dsprites, write_fake_omniglot, write_fake_shapes3d, write_fake_svhn
from vaecli import data, models
from vaecli.config import GROUPS, config_dir, group_options, load_config, resume_config
from vaecli.errors import UsageError


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_each_experiment_preset_composes_and_builds(experiment):
    from vaecli.models import spec_from_config

    cfg = load_config([f"experiment={experiment}"]).cfg
    size = cfg.dataset.image_size or 28
    model = models.build(spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, size, size), dataset_cfg=cfg.dataset))
    assert sum(p.numel() for p in model.parameters()) > 0 and model.spec.kind in ("vae", "hvae", "ladder", "autoencoder_kl")
    if experiment.startswith("bmnist"):
        t = cfg.trainer
        assert (cfg.dataset.name, model.groups) == ("binarized_mnist", cfg.model.groups) and model.groups >= 4
        assert t.ema > 0 and t.lr_schedule == "cosine" and t.warmup_steps > 0 and t.grad_clip > 0


@pytest.mark.parametrize("sampler", group_options("sampler"))
def test_each_sampler_option_composes_and_validates(sampler):
    from vaecli.config import load_sampler_config

    cfg, tree = load_sampler_config([f"sampler={sampler}"])
    assert cfg.name == sampler == tree["name"] and cfg.fit_on in ("mean", "sample") and cfg.seed == 0
    # each sampler's card holds its own keys only (samplers_config.py)
    assert (getattr(cfg, "components", None), getattr(cfg, "covariance", None)) == \
        ((10, "full") if sampler == "gmm" else (None, None))
    assert hasattr(cfg, "epochs") is (sampler == "two_stage")
    assert set(group_options("sampler")) == {"gmm", "two_stage"}


def test_every_group_option_has_a_file_and_the_defaults_are_the_documented_ones():
    assert set(group_options("dataset")) == {"mnist", "binarized_mnist", "fashion_mnist", "kmnist", "cifar10", "svhn",
                                             "omniglot", "celeba", "folder", "shapes", "dsprites", "shapes3d", "photos"}
    assert set(group_options("model")) == {"mlp", "conv", "resnet", "ae", "hvae", "vqvae", "ladder", "autoencoder_kl"}
    assert set(group_options("likelihood")) == {"bernoulli", "cbernoulli", "gaussian", "gaussian_learned", "logistic"}
    assert set(group_options("prior")) == {"normal", "mog", "vamp"}
    assert set(group_options("objective")) == {"elbo", "iwae", "btcvae", "dipvae", "factorvae", "infovae", "wae",
                                                "perceptual"}
    assert set(group_options("experiment")) == {"burda_vae", "burda_iwae", "burda_hvae", "beta_vae_shapes", "bmnist_fast",
                                                "bmnist_ladder", "bmnist_best", "burda_vae_omniglot", "btcvae_shapes",
                                                "factorvae_shapes", "dipvae_shapes", "capacity_shapes",
                                                "autoencoder_kl_photos"}
    cfg = load_config().cfg
    assert (cfg.dataset.name, cfg.model.name, cfg.likelihood.name) == ("mnist", "mlp", "bernoulli")
    assert (cfg.beta, cfg.seed, cfg.model.latent_dim, cfg.model.hidden) == (1.0, 0, 20, [400])


def write_fake_cifar(root):
    """CIFAR-10's python layout (pickled batches): the format torchvision's loader reads."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        (base / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def write_image_folder(path, n=12):
    path.mkdir(parents=True)
    for i in range(n):
        mode = ["RGB", "L", "RGBA"][i % 3]
        Image.new(mode, (40 + i, 30 + 2 * i), color=(i * 20) if mode == "L" else (i * 20, 50, 200, 255)[:len(mode)]).save(path / f"im{i}.png")
    return path


@pytest.mark.parametrize("dataset", group_options("dataset"))
@pytest.mark.parametrize("model", group_options("model"))
def test_each_dataset_and_model_composes_and_builds(dataset, model, data_root, tmp_path, fake_archives_pass_md5):
    overrides = [f"dataset={dataset}", f"model={model}", f"dataset.root={data_root}"]
    fakes = {"cifar10": write_fake_cifar, "svhn": write_fake_svhn, "omniglot": write_fake_omniglot,
             "celeba": write_fake_celeba, "dsprites": write_fake_dsprites, "shapes3d": write_fake_shapes3d}
    if dataset in fakes:
        fakes[dataset](tmp_path)
        overrides[-1] = f"dataset.root={tmp_path}"
    if dataset == "celeba":
        overrides.append("dataset.image_size=16")  # small networks for a fast test
    if dataset == "folder":
        overrides.append(f"dataset.path={write_image_folder(tmp_path / 'images')}")
        overrides.append("dataset.image_size=16")
    composed = load_config(overrides)
    cfg = composed.cfg
    train = data.build(cfg.dataset, "train", cfg.seed)
    test = data.build(cfg.dataset, "test", cfg.seed)
    assert train.images.dtype == torch.uint8 and len(train) > 0 and len(test) > 0
    spec = models.spec_from_config(cfg.model, cfg.likelihood, cfg.prior, train.image_shape, train.num_classes, cfg.dataset)
    model = models.build(spec)
    x = train.to_float(train.images[:4])
    y = train.labels[:4] if model.conditional else None
    assert model.decode(model.latent_mean(x, y), y).mean.shape == x.shape
    assert model.terms(x, y)["log_px"].shape == (4,)
    assert f"name: {dataset}" in composed.to_yaml()


@pytest.mark.parametrize("likelihood", group_options("likelihood"))
def test_each_likelihood_composes_and_trains_one_step(likelihood):
    cfg = load_config(["dataset=shapes", f"likelihood={likelihood}"]).cfg
    spec = models.spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, 32, 32), dataset_cfg=cfg.dataset)
    model = models.build(spec)
    from vaecli import objectives
    loss, metrics = objectives.elbo(model, torch.rand(8, 1, 32, 32))
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"loss", "elbo", "recon", "kl"}


@pytest.mark.parametrize("overrides, message", [
    (["foo=1"], "unknown key 'foo'; valid keys at the top level: beta, code_prior, dataset, kl, likelihood"),
    (["trainer.foo=1"], "valid keys in 'trainer': adam_eps, batch_size"),
    (["dataset=nope"], "unknown dataset 'nope'; choose one of: binarized_mnist"),
    (["beta=abc"], "invalid value for beta: 'abc' is not a number"),
    (["trainer.epochs=1.5"], "trainer.epochs: 1.5 is not an integer"),
    (["model.hidden=abc"], "model.hidden"),
    (["beta"], "not KEY=VALUE"),
    (["beta=-1"], "beta must be >= 0"),
    (["model.latent_dim=0"], "model.latent_dim must be >= 1"),
    (["trainer.lr=0"], "trainer.lr must be > 0"),
    (["trainer.device=tpu"], "trainer.device must be one of"),
    (["dataset.binarize=static"], "unknown key 'dataset.binarize'"),  # mnist has no binarize key
    (["dataset=folder"], "needs dataset.path"),
    (["dataset.name=shapes"], "dataset=NAME"),
    (["+extra=1"], "only plain KEY=VALUE"),
])
def test_bad_overrides_are_usage_errors_that_say_what_is_valid(overrides, message):
    with pytest.raises(UsageError) as err:
        load_config(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_reach_the_typed_config():
    cfg = load_config(["dataset=binarized_mnist", "dataset.binarize=static", "beta=4",
                       "model.hidden=[64,32]", "trainer.lr=3e-4", "dataset.limit=100"]).cfg
    assert cfg.dataset.binarize == "static" and cfg.beta == 4.0 and isinstance(cfg.beta, float)
    assert cfg.model.hidden == [64, 32] and cfg.trainer.lr == 3e-4 and cfg.dataset.limit == 100


def test_printed_config_omits_keys_the_chosen_dataset_does_not_use():
    text = load_config(["dataset=mnist"]).to_yaml()
    assert "binarize" not in text and "path" not in text and "beta: 1.0" in text


def test_resume_config_allows_more_epochs_and_refuses_model_changes(tmp_path):
    (tmp_path / "config.yaml").write_text(load_config(["dataset=shapes"]).to_yaml())
    assert resume_config(tmp_path, ["trainer.epochs=20"]).cfg.trainer.epochs == 20
    for override in ("model.latent_dim=3", "model.hidden=[8]", "dataset.limit=5", "seed=1", "trainer.batch_size=7"):
        with pytest.raises(UsageError, match="when resuming"):
            resume_config(tmp_path, [override])
    with pytest.raises(UsageError, match="cannot switch model"):
        resume_config(tmp_path, ["model=conv"])


def test_config_dir_is_found_and_holds_every_group():
    root = config_dir()
    assert (root / "config.yaml").is_file()
    assert all((root / group).is_dir() for group in GROUPS)


def test_the_yaml_is_the_one_source_of_defaults():
    """The dataclasses carry types, not values: a key the YAML sets has no Python default, and
    the model spec takes the YAML's value (VampPrior: 50 pseudo-inputs, not a code fallback)."""
    import dataclasses

    from omegaconf import MISSING

    from vaecli.config import TrainerConfig

    assert all(f.default is MISSING for f in dataclasses.fields(TrainerConfig))
    cfg = load_config(["prior=vamp"]).cfg
    spec = models.spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, 28, 28))
    assert cfg.prior.components == spec.prior.components == 50


def test_a_run_saved_before_a_key_existed_resumes_with_that_keys_yaml_default(tmp_path):
    text = load_config(["dataset=shapes", "trainer.epochs=3"]).to_yaml()
    assert "max_bad_steps: 20" in text
    (tmp_path / "config.yaml").write_text(text.replace("  max_bad_steps: 20\n", ""))
    cfg = resume_config(tmp_path, []).cfg
    assert cfg.trainer.max_bad_steps == 20 and cfg.trainer.epochs == 3 and cfg.dataset.name == "shapes"
