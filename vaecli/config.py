"""Config schema and composition.

The YAML tree under conf/ is composed with Hydra's Compose API, then merged onto the typed
dataclasses below, so a wrong type fails here and everything downstream gets plain dataclasses.
Only this module knows Hydra and OmegaConf.

One source of defaults: the YAML files (with a comment for every key). The dataclasses give
types only: a key every option sets is MISSING here, and the Optional keys that only some
options use default to None ("not used by this choice"). A run saved before a key existed is
resumed with that key's YAML default. Every cross-field rule lives in validate().
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from .bounds import DENSITIES
from .errors import UsageError

GROUPS = ("dataset", "model", "posterior", "likelihood", "prior", "objective", "trainer")
SELECT_ONLY = ("experiment",)  # groups that only preset other keys (`# @package _global_`)
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CHANNELS_LAST = ("auto", "true", "false")
NETWORKS = ("mlp", "conv", "resnet")
ACTIVATIONS = ("relu", "tanh", "elu")
LR_SCHEDULES = ("constant", "cosine", "burda")
LOGGERS = ("none", "tensorboard", "mlflow", "wandb")
KL_SCHEDULES = ("constant", "linear", "cyclic")
LATENTS = ("gaussian", "categorical")
DECODERS = ("factorized", "pixelcnn")
SAMPLERS = ("gmm", "two_stage")  # conf/sampler/: ex-post samplers (vae fit-sampler)
COVARIANCES = ("full", "diag")
FIT_ON = ("mean", "sample")


@dataclass
class DatasetConfig:
    """One schema for every dataset; each conf/dataset/*.yaml sets the keys that apply to it."""

    name: str = MISSING
    root: Optional[str] = None  # None: $VAECLI_DATA, else the user cache dir
    limit: Optional[int] = None  # first N training images only
    binarize: Optional[str] = None  # binarized_mnist, omniglot: dynamic | static; dsprites: stored (binary as stored)
    path: Optional[str] = None  # folder: directory of images
    image_size: Optional[int] = None  # folder, shapes, omniglot, celeba
    channels: Optional[int] = None  # folder: 1 or 3
    scales: Optional[int] = None  # shapes: factor grid sizes
    rotations: Optional[int] = None
    positions: Optional[int] = None
    dequantize: Optional[bool] = None  # None: on for the density likelihoods (resolved by load_config)


@dataclass
class ModelConfig:
    name: str = MISSING  # mlp | conv | resnet | ae | hvae | vqvae | ladder
    latent_dim: int = MISSING
    hidden: List[int] = MISSING
    activation: str = MISSING
    conditional: bool = MISSING
    network: Optional[str] = None  # ae, hvae: mlp | conv | resnet
    latent_dim2: Optional[int] = None  # hvae: z2
    hidden2: Optional[List[int]] = None  # hvae: z1 <-> z2 MLPs
    codebook_size: Optional[int] = None  # vqvae: K codes
    code_dim: Optional[int] = None  # vqvae: size of each code vector
    commitment: Optional[float] = None  # vqvae: commitment loss weight
    ema_decay: Optional[float] = None  # vqvae: codebook EMA decay (0: codebook loss)
    dead_after: Optional[int] = None  # vqvae: steps unused before a code is revived (0: never)
    kmeans_init: Optional[bool] = None  # vqvae: k-means initialisation of the codebook
    groups: Optional[int] = None  # ladder: latent groups (of latent_dim units each)
    decoder: Optional[str] = None  # mlp, conv, resnet, ladder: factorized | pixelcnn
    ar_layers: Optional[int] = None  # pixelcnn: gated layers
    ar_kernel: Optional[int] = None  # pixelcnn: mask size (odd, >= 3)
    ar_channels: Optional[int] = None  # pixelcnn: channels per layer
    latent: Optional[str] = None  # mlp, conv, resnet: gaussian | categorical
    categories: Optional[int] = None  # categorical: K classes per variable
    temperature: Optional[float] = None  # categorical: Gumbel-softmax temperature at the start
    temperature_min: Optional[float] = None  # categorical: its floor
    anneal_rate: Optional[float] = None  # categorical: tau = max(min, tau_0 exp(-rate * passes))


@dataclass
class PosteriorConfig:
    name: str = MISSING  # gaussian | iaf | planar
    flows: Optional[int] = None  # iaf, planar: steps
    hidden: Optional[int] = None  # iaf: MADE and context width


@dataclass
class LikelihoodConfig:
    name: str = MISSING
    sigma: Optional[float] = None  # gaussian: fixed sigma; gaussian_learned: initial sigma
    per_pixel: Optional[bool] = None  # gaussian_learned
    mixtures: Optional[int] = None  # logistic


@dataclass
class PriorConfig:
    name: str = MISSING
    components: Optional[int] = None  # mog, vamp


@dataclass
class ObjectiveConfig:
    name: str = MISSING
    k: Optional[int] = None  # iwae: importance samples
    alpha: Optional[float] = None  # btcvae: weight of the index-code mutual information; infovae: its alpha
    beta: Optional[float] = None  # btcvae: weight of the total correlation
    gamma: Optional[float] = None  # btcvae: weight of the dimension-wise KL; factorvae: weight of the TC
    type: Optional[str] = None  # dipvae: i (covariance of the posterior means) | ii (of the aggregate posterior)
    lambda_od: Optional[float] = None  # dipvae: weight of the off-diagonal entries
    lambda_d: Optional[float] = None  # dipvae: weight of the diagonal's distance to 1 (null: 10 x lambda_od for i, 1 x for ii)
    disc_width: Optional[int] = None  # factorvae: the critic's hidden units per layer
    disc_layers: Optional[int] = None  # factorvae: the critic's hidden layers
    disc_lr: Optional[float] = None  # factorvae: the critic's Adam learning rate
    lambda_mmd: Optional[float] = None  # infovae / wae: the MMD's weight
    kernel: Optional[str] = None  # infovae / wae: imq | rbf
    kernel_scale: Optional[float] = None  # infovae / wae: the kernel's bandwidth in prior variances


@dataclass
class KLConfig:
    """Types only: the defaults and their reasons are in conf/config.yaml."""

    schedule: str = MISSING
    warmup_steps: int = MISSING
    cycles: int = MISSING
    ratio: float = MISSING
    free_bits: float = MISSING
    delta: float = MISSING
    capacity: float = MISSING
    capacity_steps: int = MISSING
    capacity_gamma: float = MISSING


@dataclass
class CodePriorConfig:
    """Types only: the defaults are in conf/config.yaml (code_prior:)."""

    width: int = MISSING
    layers: int = MISSING
    heads: int = MISSING
    dropout: float = MISSING


@dataclass
class TrainerConfig:
    """Types only: the defaults and their reasons are in conf/trainer/default.yaml."""

    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    device: str = MISSING
    threads: int = MISSING
    num_workers: int = MISSING
    sample_every: int = MISSING
    checkpoint_every: int = MISSING
    log_every: int = MISSING
    eval_batch_size: int = MISSING
    adam_eps: float = MISSING
    lr_schedule: str = MISSING
    precision: str = MISSING
    max_bad_steps: int = MISSING
    checkpoint_every_steps: int = MISSING
    compile: bool = MISSING
    channels_last: str = MISSING
    warmup_steps: int = MISSING
    lr_min: float = MISSING
    ema: float = MISSING
    grad_clip: float = MISSING
    skip_threshold: float = MISSING
    logger: Any = MISSING  # none | tensorboard | mlflow | wandb, or a list of them


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    code_prior: CodePriorConfig = field(default_factory=CodePriorConfig)
    beta: float = MISSING
    seed: int = MISSING


@dataclass
class SamplerConfig:
    """vae fit-sampler: conf/sampler/*.yaml (each sets the keys that apply to it)."""

    name: str = MISSING  # gmm | two_stage
    fit_on: str = MISSING  # mean | sample
    images: Optional[int] = None  # the first N training images (None: all)
    seed: int = MISSING
    components: Any = None  # gmm: a number, or auto (chosen by held-out likelihood: samplers.GMM_CANDIDATES)
    covariance: Optional[str] = None
    max_iter: Optional[int] = None
    hidden: Optional[List[int]] = None  # two_stage
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None


@dataclass
class SamplerRoot:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def config_dir() -> Path:
    """conf/ inside an installed wheel (vaecli/conf), else the source checkout's conf/."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"vaecli's conf/ folder is missing from {package} (broken install?)")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# Overrides


def _parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """KEY=VALUE strings -> (key, python value), with Hydra's override grammar for values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        if "=" not in text:
            raise UsageError(f"override '{text}' is not KEY=VALUE (e.g. beta=4 or dataset=shapes)")
        try:
            (override,) = parser.parse_overrides([text])
        except Exception as e:  # hydra's OverrideParseException; its message spans several lines
            reason = str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else str(e)
            raise UsageError(f"cannot parse override '{text}': {reason.strip()}") from None
        if override.is_add() or override.is_delete() or override.package is not None:
            raise UsageError(f"override '{text}': only plain KEY=VALUE overrides are supported")
        if override.is_sweep_override():
            raise UsageError(f"'{text}' gives several values (a sweep); run them all with: vae train -m {text} ...")
        parsed.append((override.key_or_group, override.value()))
    return parsed


def _check_keys(reference: dict, parsed: list[tuple[str, Any]], groups: tuple[str, ...] = GROUPS) -> None:
    """Every overridden key must exist in `reference` (the config it will be applied to)."""
    for key, _ in parsed:
        if key in groups and groups is not GROUPS:
            continue
        if key in SELECT_ONLY:
            continue
        node: Any = reference
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth])
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(none: not a section)"
                scope = f"in '{where}'" if where else "at the top level"
                raise UsageError(f"unknown key '{key}'; valid keys {scope}: {valid}")
            node = node[part]
        if len(parts) == 2 and parts[0] in groups and parts[1] == "name":
            raise UsageError(f"choose the option with {parts[0]}=NAME, not {key}=")
        if isinstance(node, dict) and key not in groups:
            raise UsageError(f"'{key}' is a section; set one of its keys: {', '.join(sorted(node))}")


def _typed(raw: dict, schema: type = None) -> "Any":
    """Merge a plain dict onto the schema; a wrong type becomes a UsageError naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = schema or Config
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        value = getattr(e, "value", None)
        expected = _expected_type(key, schema)
        raise UsageError(f"invalid value for {key}: {value!r} is not {expected}") from None


def _expected_type(key: str, schema: type = None) -> str:
    import typing

    cls: Any = schema or Config
    hint: Any = None
    for part in re.sub(r"\[\d+\]", "", key).split("."):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return "valid here"
        hint = cls = hints[part]
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is typing.Union else hint
    if typing.get_origin(base) in (list, List):
        return "a list of integers, e.g. [400] or [512,256]"
    return names.get(base, "valid here")


def _prune(typed: dict, reference: dict) -> dict:
    """Drop schema keys that the chosen group option does not use (None and absent from YAML)."""
    out = {}
    for key, value in typed.items():
        ref = reference.get(key) if isinstance(reference, dict) else None
        if isinstance(value, dict):
            out[key] = _prune(value, ref or {})
        elif value is not None or (isinstance(reference, dict) and key in reference):
            out[key] = value
    return out


@dataclass
class Composed:
    """A validated config: `cfg` for the code, `tree` (plain dict) for YAML and run folders."""

    cfg: Config
    tree: dict
    overrides: list[str] = field(default_factory=list)  # as the user typed them (status.json keeps them)

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(self.tree))


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> Composed:
    """Compose conf/config.yaml with `overrides` (Hydra syntax) into a validated Config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    parsed = _parse_overrides(list(overrides))
    selections = []
    for key, value in parsed:
        if key in GROUPS + SELECT_ONLY:
            options = group_options(key)
            if value not in options:
                raise UsageError(f"unknown {key} '{value}'; choose one of: {', '.join(options)}")
            selections.append(f"{key}={value}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        defaults = OmegaConf.to_container(compose("config", overrides=selections), resolve=True)
        _check_keys(defaults, parsed)
        try:
            composed = compose("config", overrides=list(overrides))
        except Exception as e:  # composition errors are usage errors; keep their first line
            raise UsageError(f"bad override: {str(e).splitlines()[0]}") from None
    raw = _resolve(composed)
    return _finish(raw, reference=raw, overrides=overrides)


def load_sampler_config(overrides: list[str] | tuple[str, ...] = ()) -> tuple[SamplerConfig, dict]:
    """Compose conf/fit_sampler.yaml (sampler=gmm|two_stage and its keys) with `overrides`:
    the validated SamplerConfig and its plain tree (stored beside the fitted sampler)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    parsed = _parse_overrides(list(overrides))
    selections = []
    for key, value in parsed:
        if key == "sampler":
            if value not in group_options("sampler"):
                raise UsageError(f"unknown sampler '{value}'; choose one of: {', '.join(group_options('sampler'))}")
            selections.append(f"sampler={value}")
        elif not key.startswith("sampler."):
            raise UsageError(f"fit-sampler takes sampler=NAME and sampler.KEY=VALUE overrides (got '{key}=')")
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        defaults = OmegaConf.to_container(compose("fit_sampler", overrides=selections), resolve=True)
        _check_keys(defaults, parsed, groups=("sampler",))
        try:
            composed = compose("fit_sampler", overrides=list(overrides))
        except Exception as e:
            raise UsageError(f"bad override: {str(e).splitlines()[0]}") from None
    raw = _resolve(composed)
    typed = _typed(raw, SamplerRoot)
    try:
        cfg: SamplerConfig = OmegaConf.to_object(typed).sampler
    except MissingMandatoryValue as e:
        raise UsageError(f"config key {getattr(e, 'full_key', None) or '?'} has no value; set it") from None
    validate_sampler(cfg)
    return cfg, _prune(OmegaConf.to_container(typed), raw)["sampler"]


def validate_sampler(s: SamplerConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    need(s.fit_on in FIT_ON, f"sampler.fit_on must be one of {', '.join(FIT_ON)} (got {s.fit_on!r})")
    need(s.images is None or s.images >= 1, f"sampler.images must be >= 1 or null (got {s.images})")
    if s.name == "gmm":
        need(s.components == "auto" or (isinstance(s.components, int) and not isinstance(s.components, bool)
                                         and s.components >= 1),
             f"sampler.components must be a number >= 1 or auto (got {s.components!r})")
        need(s.covariance in COVARIANCES, f"sampler.covariance must be one of {', '.join(COVARIANCES)} (got {s.covariance!r})")
        need(s.max_iter >= 1, f"sampler.max_iter must be >= 1 (got {s.max_iter})")
    if s.name == "two_stage":
        need(len(s.hidden) >= 1 and all(h >= 1 for h in s.hidden),
             f"sampler.hidden must list positive widths, e.g. [512,512] (got {s.hidden})")
        need(s.epochs >= 1, f"sampler.epochs must be >= 1 (got {s.epochs})")
        need(s.lr > 0, f"sampler.lr must be > 0 (got {s.lr})")
        need(s.batch_size >= 1, f"sampler.batch_size must be >= 1 (got {s.batch_size})")


def _resolve(conf) -> dict:
    """Resolve ${...} interpolations; a broken one (unknown key, a cycle) is a usage error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as e:
        raise UsageError(f"bad override: {str(e).splitlines()[0]}") from None


def apply_overrides(saved: dict, overrides: list[str] | tuple[str, ...]) -> Composed:
    """Apply overrides to a saved run config (for --resume): no group changes, keys must exist."""
    from omegaconf import OmegaConf

    parsed = _parse_overrides(list(overrides))
    for key, _ in parsed:
        if key in GROUPS + SELECT_ONLY:
            raise UsageError(f"cannot switch {key} when resuming; start a new run instead")
    _check_keys(saved, parsed)
    conf = OmegaConf.create(saved)
    for key, value in parsed:
        OmegaConf.update(conf, key, value, merge=False)
    return _finish(_resolve(conf), reference=saved, overrides=overrides)


def _finish(raw: dict, reference: dict, overrides=()) -> Composed:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    typed = _typed(raw)
    if typed.dataset.dequantize is None:  # recorded as resolved, so config.yaml says what ran
        typed.dataset.dequantize = typed.likelihood.name in DENSITIES
    try:
        cfg: Config = OmegaConf.to_object(typed)
    except MissingMandatoryValue as e:
        raise UsageError(f"config key {getattr(e, 'full_key', None) or '?'} has no value; set it") from None
    validate(cfg)
    tree = _prune(OmegaConf.to_container(typed), reference)
    return Composed(cfg=cfg, tree=tree, overrides=list(overrides))


def check_device(name: str, key: str = "device") -> None:
    """The one check of a device name (trainer.device, and --device of every command)."""
    if name not in DEVICES:
        raise UsageError(f"{key} must be one of {', '.join(DEVICES)} (got {name!r})")


def validate(cfg: Config) -> None:
    """Range checks that types cannot express; each failure names the key and a valid value."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    d, m, t, lik = cfg.dataset, cfg.model, cfg.trainer, cfg.likelihood
    need(cfg.beta >= 0, f"beta must be >= 0 (got {cfg.beta})")
    need(m.latent_dim >= 1, f"model.latent_dim must be >= 1 (got {m.latent_dim})")
    need(len(m.hidden) >= 1 and all(h >= 1 for h in m.hidden),
         f"model.hidden must list positive widths, e.g. [400] (got {m.hidden})")
    need(t.epochs >= 1, f"trainer.epochs must be >= 1 (got {t.epochs})")
    need(t.batch_size >= 1, f"trainer.batch_size must be >= 1 (got {t.batch_size})")
    need(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1 (got {t.eval_batch_size})")
    need(t.lr > 0, f"trainer.lr must be > 0 (got {t.lr})")
    check_device(t.device, "trainer.device")
    need(t.num_workers >= 0, f"trainer.num_workers must be >= 0 (got {t.num_workers})")
    need(t.sample_every >= 0, f"trainer.sample_every must be >= 0 (got {t.sample_every})")
    need(t.checkpoint_every >= 0, f"trainer.checkpoint_every must be >= 0 (got {t.checkpoint_every})")
    need(t.log_every >= 1, f"trainer.log_every must be >= 1 (got {t.log_every})")
    need(d.limit is None or d.limit >= 1, f"dataset.limit must be >= 1 or null (got {d.limit})")
    if d.name in ("binarized_mnist", "omniglot"):
        need(d.binarize in ("dynamic", "static"),
             f"dataset.binarize must be dynamic or static (got {d.binarize!r})")
    if d.name == "dsprites":
        need(d.binarize == "stored", f"dataset=dsprites is binary as stored: leave dataset.binarize=stored (got {d.binarize!r})")
    if d.name in ("omniglot", "celeba"):
        need(d.image_size is not None, f"dataset={d.name} needs dataset.image_size (e.g. 28 or 64)")
    if d.name == "folder":
        need(bool(d.path), "dataset=folder needs dataset.path=DIR (a folder of PNG/JPEG images)")
        need(d.channels in (1, 3), f"dataset.channels must be 1 or 3 (got {d.channels})")
    if d.image_size is not None:
        need(4 <= d.image_size <= 1024, f"dataset.image_size must be in 4..1024 (got {d.image_size})")
    for key in ("scales", "rotations", "positions"):
        value = getattr(d, key)
        need(value is None or value >= 1, f"dataset.{key} must be >= 1 (got {value})")
    if d.dequantize:
        need(lik.name in DENSITIES, f"dataset.dequantize=true is for the density likelihoods ({', '.join(DENSITIES)}); "
             f"likelihood={lik.name} is a probability of the stored values already: drop dataset.dequantize")
    if lik.name in ("gaussian", "gaussian_learned"):
        need(lik.sigma is not None and lik.sigma > 0, f"likelihood.sigma must be > 0 (got {lik.sigma})")
    if lik.name == "logistic":
        need(lik.mixtures is not None and lik.mixtures >= 1, f"likelihood.mixtures must be >= 1 (got {lik.mixtures})")
    _validate_model(cfg, need)
    cp = cfg.code_prior
    need(cp.width >= 1 and cp.layers >= 1 and cp.heads >= 1,
         f"code_prior.width, .layers and .heads must be >= 1 (got {cp.width}, {cp.layers}, {cp.heads})")
    need(cp.width % cp.heads == 0, f"code_prior.width ({cp.width}) must be a multiple of code_prior.heads ({cp.heads})")
    need(0 <= cp.dropout < 1, f"code_prior.dropout must be in [0, 1) (got {cp.dropout})")
    need(t.max_bad_steps >= 1, f"trainer.max_bad_steps must be >= 1 (got {t.max_bad_steps})")
    need(t.checkpoint_every_steps >= 0,
         f"trainer.checkpoint_every_steps must be >= 0 (got {t.checkpoint_every_steps})")
    need(t.precision in PRECISIONS,
         f"trainer.precision must be one of {', '.join(PRECISIONS)} (got {t.precision!r})")
    need(str(t.channels_last).lower() in CHANNELS_LAST,
         f"trainer.channels_last must be one of {', '.join(CHANNELS_LAST)} (got {t.channels_last!r})")
    need(t.adam_eps > 0, f"trainer.adam_eps must be > 0 (got {t.adam_eps})")
    _validate_features(t, need)


def _validate_features(t: TrainerConfig, need) -> None:
    """The trainer features of callbacks.py: lr schedule, EMA, gradient guard."""
    need(t.lr_schedule in LR_SCHEDULES,
         f"trainer.lr_schedule must be one of {', '.join(LR_SCHEDULES)} (got {t.lr_schedule!r})")
    need(0 <= t.threads <= 1024, f"trainer.threads must be 0 (auto) or a count of threads (got {t.threads})")
    chosen = loggers(t)
    need(all(name in LOGGERS[1:] for name in chosen) and (chosen or t.logger in ("none", [], None)),
         f"trainer.logger must be one of {', '.join(LOGGERS)}, or a list of them like [tensorboard,mlflow] "
         f"(got {t.logger!r}); tensorboard writes RUN/tensorboard/, mlflow and wandb log to their trackers")
    need(t.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0 (got {t.warmup_steps})")
    need(0 <= t.lr_min <= t.lr, f"trainer.lr_min must be in [0, trainer.lr] (got {t.lr_min})")
    need(0 <= t.ema < 1, f"trainer.ema must be in [0, 1): the EMA decay, e.g. 0.999; 0 is off (got {t.ema})")
    need(t.grad_clip >= 0, f"trainer.grad_clip must be >= 0 (got {t.grad_clip}; 0 is off)")
    need(t.skip_threshold >= 0, f"trainer.skip_threshold must be >= 0 (got {t.skip_threshold}; 0 is off)")


def loggers(t) -> list[str]:
    """trainer.logger as a list of names: none -> [], a name -> [name], a list as given."""
    value = t.logger
    if value is None or value == "none":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if str(v) != "none"]


def _validate_model(cfg: Config, need) -> None:
    """Model, prior, objective and KL settings, and the combinations that make no sense."""
    m, p, o, kl = cfg.model, cfg.prior, cfg.objective, cfg.kl
    need(m.activation in ACTIVATIONS, f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {m.activation!r})")
    if m.name in ("ae", "hvae", "vqvae", "ladder"):
        need(m.network in NETWORKS, f"model.network must be one of {', '.join(NETWORKS)} (got {m.network!r})")
    if m.name == "hvae":
        need((m.latent_dim2 or 0) >= 1, f"model.latent_dim2 must be >= 1 (got {m.latent_dim2})")
        need(bool(m.hidden2) and all(h >= 1 for h in m.hidden2),
             f"model.hidden2 must list positive widths, e.g. [50,50] (got {m.hidden2})")
    if m.name == "ladder":
        need((m.groups or 0) >= 1, f"model.groups must be >= 1 (got {m.groups})")
        need(p.name == "normal", "model=ladder has its own hierarchical prior (N(0, I) on the top group); use prior=normal")
    if p.name in ("mog", "vamp"):
        need((p.components or 0) >= 1, f"prior.components must be >= 1 (got {p.components})")
    if o.name == "iwae":
        need((o.k or 0) >= 1, f"objective.k must be >= 1 (got {o.k})")
    need(kl.schedule in KL_SCHEDULES, f"kl.schedule must be one of {', '.join(KL_SCHEDULES)} (got {kl.schedule!r})")
    need(kl.warmup_steps >= 1, f"kl.warmup_steps must be >= 1 (got {kl.warmup_steps})")
    need(kl.cycles >= 1, f"kl.cycles must be >= 1 (got {kl.cycles})")
    need(0 < kl.ratio <= 1, f"kl.ratio must be in (0, 1] (got {kl.ratio})")
    need(kl.free_bits >= 0, f"kl.free_bits must be >= 0 (got {kl.free_bits})")
    need(kl.delta >= 0, f"kl.delta must be >= 0 nats per dimension (got {kl.delta})")
    if kl.delta > 0:
        need(m.name in NETWORKS and m.latent == "gaussian" and cfg.posterior.name == "gaussian" and p.name == "normal",
             "kl.delta commits the rate of a Gaussian posterior against N(0, I): model=mlp, conv or resnet with "
             "posterior=gaussian and prior=normal")
    # Combinations without a meaning: refuse them rather than train something else silently.
    if m.name == "ae":
        need(o.name in ("elbo", "wae"), f"model=ae has no posterior to importance-sample or KL to shape; use "
             f"objective=elbo or wae (got objective={o.name})")
        need(p.name == "normal", "model=ae has no KL term, so a prior is not trained; use prior=normal")
        need(kl.free_bits == 0, "model=ae has no KL term; drop kl.free_bits")
    if m.name == "hvae":
        need(p.name == "normal", "model=hvae uses a N(0, I) prior on its top layer z2; use prior=normal")
    if m.name == "vqvae":
        _validate_vqvae(cfg, need)
    _validate_posterior(cfg, need)
    _validate_categorical(cfg, need)
    _validate_decoder(cfg, need)
    if kl.free_bits > 0:
        need(p.name == "normal" and m.name != "hvae" and cfg.posterior.name == "gaussian",
             "kl.free_bits needs a KL per latent dimension or group: prior=normal and posterior=gaussian with "
             "model=mlp, conv, resnet or ladder")
    if o.name == "iwae":
        need(kl.schedule == "constant" and kl.free_bits == 0 and cfg.beta == 1.0,
             "objective=iwae trains the importance-weighted bound itself: drop beta, kl.schedule and kl.free_bits")
    if kl.capacity > 0:
        need(o.name == "elbo" and cfg.beta == 1.0 and kl.free_bits == 0 and kl.schedule == "constant",
             "kl.capacity replaces beta, kl.schedule and kl.free_bits (the loss is recon + kl.capacity_gamma |KL - C|): "
             "use it with objective=elbo and leave those at their defaults")
        need(kl.capacity_steps >= 1 and kl.capacity_gamma > 0,
             f"kl.capacity_steps must be >= 1 and kl.capacity_gamma > 0 (got {kl.capacity_steps}, {kl.capacity_gamma})")
    need(kl.capacity >= 0, f"kl.capacity must be >= 0 nats (got {kl.capacity})")
    _validate_objective(cfg, need)
    if p.name == "vamp":
        need(not m.conditional, "prior=vamp is not available for conditional models (its pseudo-inputs have no label)")


# Objectives that shape the code of one diagonal Gaussian posterior against N(0, I): what each does to it.
ON_ONE_GAUSSIAN = {"btcvae": "splits the KL of", "dipvae": "regularizes the covariance of",
                   "factorvae": "estimates the total correlation of", "infovae": "matches the aggregate of"}


def _validate_objective(cfg: Config, need) -> None:
    """The disentangling and MMD objectives: which models they apply to, and their settings."""
    m, p, o, kl = cfg.model, cfg.prior, cfg.objective, cfg.kl
    if o.name in ON_ONE_GAUSSIAN or (o.name == "wae" and m.name != "ae"):
        what = ON_ONE_GAUSSIAN.get(o.name, "matches the aggregate of")
        need(m.name in NETWORKS and m.latent == "gaussian" and cfg.posterior.name == "gaussian"
             and p.name == "normal" and kl.delta == 0,
             f"objective={o.name} {what} a diagonal Gaussian posterior against N(0, I): use model=mlp, conv or resnet"
             f"{' (or model=ae)' if o.name == 'wae' else ''} with posterior=gaussian and prior=normal "
             f"(got model={m.name}{', latent=' + m.latent if m.latent not in (None, 'gaussian') else ''}, prior={p.name})")
    if o.name in ("btcvae", "dipvae", "factorvae", "infovae", "wae"):
        need(kl.free_bits == 0, f"objective={o.name} shapes the code its own way; kl.free_bits is for "
             "objective=elbo: drop it")
    if o.name in ("btcvae", "infovae", "wae"):
        weights = {"btcvae": "weights its KL terms by objective.alpha, objective.beta and objective.gamma",
                   "infovae": "weights its KL by 1 - objective.alpha", "wae": "has no KL term"}[o.name]
        need(cfg.beta == 1.0, f"objective={o.name} {weights}: leave beta at 1")
    if o.name == "dipvae":
        need(o.type in ("i", "ii"), f"objective.type must be i or ii (got {o.type!r})")
        need(all(w is None or w >= 0 for w in (o.lambda_od, o.lambda_d)),
             "objective.lambda_od and objective.lambda_d must be >= 0")
    if o.name == "btcvae":
        need(all(w is None or w >= 0 for w in (o.alpha, o.beta, o.gamma)),
             "objective.alpha, objective.beta and objective.gamma must be >= 0")
    if o.name == "factorvae":
        need(o.gamma is None or o.gamma >= 0, f"objective.gamma must be >= 0 (got {o.gamma})")
        need((o.disc_width or 0) >= 1 and (o.disc_layers or 0) >= 1 and (o.disc_lr or 0) > 0,
             "objective.disc_width and objective.disc_layers must be >= 1 and objective.disc_lr > 0 "
             f"(got {o.disc_width}, {o.disc_layers}, {o.disc_lr})")
    if o.name in ("infovae", "wae"):
        need(o.kernel in ("imq", "rbf"), f"objective.kernel must be imq or rbf (got {o.kernel!r})")
        need((o.kernel_scale or 0) > 0 and (o.lambda_mmd or 0) >= 0,
             f"objective.kernel_scale must be > 0 and objective.lambda_mmd >= 0 (got {o.kernel_scale}, {o.lambda_mmd})")
    if o.name == "wae":
        need(kl.schedule == "constant", "objective=wae has no KL term to schedule: drop kl.schedule")


def _validate_posterior(cfg: Config, need) -> None:
    q, m = cfg.posterior, cfg.model
    if q.name == "gaussian":
        return
    need(m.name in NETWORKS, f"posterior={q.name} is for the flat VAEs (model=mlp, conv or resnet); model={m.name} "
         "has a posterior of its own: use posterior=gaussian")
    need((q.flows or 0) >= 1, f"posterior.flows must be >= 1 (got {q.flows})")
    if q.name == "iaf":
        need((q.hidden or 0) >= 1, f"posterior.hidden must be >= 1 (got {q.hidden})")


def _validate_decoder(cfg: Config, need) -> None:
    m = cfg.model
    if m.name not in (*NETWORKS, "ladder"):
        return
    need(m.decoder in DECODERS, f"model.decoder must be one of {', '.join(DECODERS)} (got {m.decoder!r})")
    if m.decoder != "pixelcnn":
        return
    need((m.ar_layers or 0) >= 1, f"model.ar_layers must be >= 1 (got {m.ar_layers})")
    need(m.ar_kernel is not None and m.ar_kernel >= 3 and m.ar_kernel % 2 == 1,
         f"model.ar_kernel must be odd and >= 3 (got {m.ar_kernel})")
    need((m.ar_channels or 0) >= 1, f"model.ar_channels must be >= 1 (got {m.ar_channels})")


def _validate_categorical(cfg: Config, need) -> None:
    m = cfg.model
    if m.name not in NETWORKS:
        return
    need(m.latent in LATENTS, f"model.latent must be one of {', '.join(LATENTS)} (got {m.latent!r})")
    if m.latent != "categorical":
        return
    need((m.categories or 0) >= 2, f"model.categories must be >= 2 classes per variable (got {m.categories})")
    need(m.temperature is not None and m.temperature > 0, f"model.temperature must be > 0 (got {m.temperature})")
    need(m.temperature_min is not None and 0 < m.temperature_min <= m.temperature,
         f"model.temperature_min must be in (0, model.temperature] (got {m.temperature_min})")
    need(m.anneal_rate is not None and m.anneal_rate >= 0, f"model.anneal_rate must be >= 0 (got {m.anneal_rate})")
    need(cfg.posterior.name == "gaussian", "model.latent=categorical has its own posterior (categorical): drop posterior=")
    need(cfg.prior.name == "normal", "model.latent=categorical has a uniform prior over codes: use prior=normal (the default)")
    need(cfg.objective.name == "elbo", "model.latent=categorical trains through the Gumbel-softmax relaxation: use "
         f"objective=elbo (got objective={cfg.objective.name}; eval-iwae still importance-samples hard codes)")


def _validate_vqvae(cfg: Config, need) -> None:
    m = cfg.model
    need(m.network in ("conv", "resnet"), f"model=vqvae needs a code grid: model.network=conv or resnet (got {m.network!r})")
    need((m.codebook_size or 0) >= 2, f"model.codebook_size must be >= 2 (got {m.codebook_size})")
    need((m.code_dim or 0) >= 1, f"model.code_dim must be >= 1 (got {m.code_dim})")
    need(m.commitment is not None and m.commitment >= 0, f"model.commitment must be >= 0 (got {m.commitment})")
    need(m.ema_decay is not None and 0 <= m.ema_decay < 1, f"model.ema_decay must be in [0, 1) (got {m.ema_decay})")
    need(m.dead_after is not None and m.dead_after >= 0, f"model.dead_after must be >= 0 (got {m.dead_after})")
    need(cfg.prior.name == "normal", "model=vqvae has its own prior over codes (uniform while training it); use prior=normal")
    need(cfg.objective.name == "elbo", f"model=vqvae has a point-mass posterior over codes: importance sampling and the KL-shaping objectives do "
         f"not apply; use objective=elbo (got objective={cfg.objective.name})")
    need(cfg.kl.schedule == "constant" and cfg.kl.free_bits == 0 and cfg.beta == 1.0,
         "model=vqvae's KL to the uniform code prior is a constant: beta, kl.schedule and kl.free_bits change nothing; drop them")


def data_root(cfg: DatasetConfig) -> Path:
    """Where datasets are downloaded: dataset.root, else $VAECLI_DATA, else the user cache dir."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    if os.environ.get("VAECLI_DATA"):
        return Path(os.environ["VAECLI_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vaecli" / "data"


# Keys that fix the model's shape or the data order; --resume refuses to change them.
FROZEN_ON_RESUME = ("dataset", "model", "posterior", "likelihood", "prior", "seed", "trainer.batch_size", "code_prior")
FROZEN_FOR_PRIOR = ("dataset", "model", "posterior", "likelihood", "prior", "seed")  # the VQ-VAE the prior is for


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    return prefix if a != b else None


def load_saved(path: Path) -> dict:
    """A run's config.yaml as a plain dict; a missing or broken file is a UsageError."""
    from omegaconf import OmegaConf

    if not path.is_file():
        raise UsageError(f"{path.parent} is not a vaecli run folder (no {path.name}); nothing to resume")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:
        raise UsageError(f"{path} is not a readable config ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{path} is not a vaecli config (not a mapping)")
    return saved


def _with_current_defaults(saved: dict) -> dict:
    """A saved run config completed with today's YAML defaults (for the same group options) for
    any key that vaecli did not have when the run was made."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    selections = []
    for group in GROUPS:
        section = saved.get(group)
        if isinstance(section, dict) and section.get("name") in group_options(group):
            selections.append(f"{group}={section['name']}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        defaults = compose("config", overrides=selections)
    OmegaConf.set_struct(defaults, False)  # a key vaecli no longer has is reported by _typed
    if isinstance(saved.get("dataset"), dict):  # runs from before dataset.dequantize were trained without it
        saved = {**saved, "dataset": {"dequantize": False, **saved["dataset"]}}
    merged = OmegaConf.merge(defaults, OmegaConf.create(saved))
    return _resolve(merged)


def resume_config(run_dir: Path, overrides: list[str] | tuple[str, ...], name: str = "config.yaml",
                  frozen: tuple[str, ...] = FROZEN_ON_RESUME) -> Composed:
    """The saved config `name` of `run_dir` with `overrides` applied; changes to the `frozen`
    keys (the model and the data order) are refused. vae train-prior starts from the VQ-VAE's
    config this way, with FROZEN_FOR_PRIOR."""
    saved = _with_current_defaults(load_saved(Path(run_dir) / name))
    before = _finish(saved, reference=saved).tree
    after = apply_overrides(saved, overrides)
    for key in frozen:
        changed = _first_difference(_get(before, key), _get(after.tree, key), key)
        if changed:
            raise UsageError(
                f"cannot change {changed} when resuming ({_get(before, changed)!r} -> "
                f"{_get(after.tree, changed)!r}): it changes the model or the data order; start a new run"
            )
    return after
