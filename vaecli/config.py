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

from . import registry
from .bounds import DENSITIES
from .errors import UsageError
from .registry import FAMILIES

GROUPS = ("dataset", "model", "posterior", "likelihood", "prior", "objective", "trainer")
SELECT_ONLY = ("experiment",)  # groups that only preset other keys (`# @package _global_`)
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CHANNELS_LAST = ("auto", "true", "false")
LR_SCHEDULES = ("constant", "cosine", "burda")
LOGGERS = ("none", "tensorboard", "mlflow", "wandb")
KL_SCHEDULES = ("constant", "linear", "cyclic")


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
    crops: Optional[int] = None  # photos: training crops
    test_crops: Optional[int] = None  # photos: test crops (from the held-out photographs)
    dequantize: Optional[bool] = None  # None: on for the density likelihoods (resolved by load_config)


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
    weight_decay: float = MISSING
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
    """The run config. model, posterior, likelihood, prior and objective are the chosen members'
    cards (registry.py): `schema` makes the class whose fields have those types."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: Any = None
    posterior: Any = None
    likelihood: Any = None
    prior: Any = None
    objective: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    code_prior: CodePriorConfig = field(default_factory=CodePriorConfig)
    beta: float = MISSING
    seed: int = MISSING


def schema(raw: dict, families: tuple[str, ...] = FAMILIES, base: type = None) -> type:
    """The typed config class for a composed tree: `base` (Config) with each family's field typed
    by the chosen member's card."""
    from dataclasses import make_dataclass

    chosen = []
    for family in families:
        name = (raw.get(family) or {}).get("name") if isinstance(raw.get(family), dict) else None
        cls = registry.card(family, name)
        if cls is None:
            options = ", ".join(registry.members(family)) or "(none)"
            raise UsageError(f"unknown {family} {name!r}; choose one of: {options}")
        chosen.append((family, cls, field(default_factory=cls)))
    return make_dataclass((base or Config).__name__, chosen, bases=(base or Config,))


@dataclass
class SamplerRoot:
    sampler: Any = None  # the chosen sampler's card (samplers_config.py)


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
        if _under_open_node(reference, parts):
            continue
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


def _open_keys(family: str, name: Any) -> tuple[str, ...]:
    card = registry.card(family, name) if family in FAMILIES else None
    return getattr(card, "OPEN_KEYS", ()) if card is not None else ()


def _under_open_node(reference: dict, parts: list[str]) -> bool:
    """A key inside a node whose keys are the user's (a `_target_` node: model.encoder_net.*)."""
    if len(parts) < 3 or not isinstance(reference.get(parts[0]), dict):
        return False
    return parts[1] in _open_keys(parts[0], reference[parts[0]].get("name"))


def _hydra_override(text: str, reference: dict) -> str:
    """The override as Hydra takes it: a key inside an open node may be new there (`++`)."""
    key = text.split("=", 1)[0]
    return f"++{text}" if _under_open_node(reference, key.split(".")) else text


def _typed(raw: dict, typed_as: type = None) -> "Any":
    """Merge a plain dict onto the schema (by default the run config's, with the chosen members'
    cards); a wrong type becomes a UsageError naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    typed_as = typed_as or schema(raw)
    try:
        return OmegaConf.merge(OmegaConf.structured(typed_as), raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        value = getattr(e, "value", None)
        expected = _expected_type(key, typed_as)
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
            composed = compose("config", overrides=[_hydra_override(o, defaults) for o in overrides])
        except Exception as e:  # composition errors are usage errors; keep their first line
            raise UsageError(f"bad override: {str(e).splitlines()[0]}") from None
    raw = _resolve(composed)
    return _finish(raw, reference=raw, overrides=overrides)


def load_sampler_config(overrides: list[str] | tuple[str, ...] = ()) -> tuple[Any, dict]:
    """Compose conf/fit_sampler.yaml (sampler=gmm|two_stage and its keys) with `overrides`:
    the validated sampler card (samplers_config.py) and its plain tree (stored beside the fitted
    sampler)."""
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
    typed = _typed(raw, schema(raw, ("sampler",), SamplerRoot))
    try:
        cfg = OmegaConf.to_object(typed).sampler
    except MissingMandatoryValue as e:
        raise UsageError(f"config key {getattr(e, 'full_key', None) or '?'} has no value; set it") from None
    validate_sampler(cfg)
    return cfg, _prune(OmegaConf.to_container(typed), raw)["sampler"]


def validate_sampler(s) -> None:
    """The sampler card's own checks."""
    s.check(None, _need)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


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
        likelihood = registry.card("likelihood", typed.likelihood.name)
        typed.dataset.dequantize = "density" in likelihood(name=typed.likelihood.name).provides(None)
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

    need = _need
    d, t = cfg.dataset, cfg.trainer
    need(cfg.beta >= 0, f"beta must be >= 0 (got {cfg.beta})")
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
    if d.name == "photos":
        need(d.image_size is not None and d.image_size <= 128,
             f"dataset=photos crops at most 128 px: set dataset.image_size to 32 or 64 (got {d.image_size})")
        need((d.crops or 0) >= 1 and (d.test_crops or 0) >= 1,
             f"dataset.crops and dataset.test_crops must be >= 1 (got {d.crops}, {d.test_crops})")
    for key in ("scales", "rotations", "positions"):
        value = getattr(d, key)
        need(value is None or value >= 1, f"dataset.{key} must be >= 1 (got {value})")
    _validate_members(cfg, need)
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
    need(0 <= t.weight_decay < 1, f"trainer.weight_decay must be in [0, 1) (got {t.weight_decay}); e.g. 0.01")
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


def _validate_members(cfg: Config, need) -> None:
    """Each chosen member's own checks, the KL settings, then what the members need of each other
    (registry.check_requirements: capabilities, never names)."""
    chosen = [getattr(cfg, family) for family in FAMILIES]
    for member in chosen:
        member.check(cfg, need)
    kl = cfg.kl
    need(kl.schedule in KL_SCHEDULES, f"kl.schedule must be one of {', '.join(KL_SCHEDULES)} (got {kl.schedule!r})")
    need(kl.warmup_steps >= 1, f"kl.warmup_steps must be >= 1 (got {kl.warmup_steps})")
    need(kl.cycles >= 1, f"kl.cycles must be >= 1 (got {kl.cycles})")
    need(0 < kl.ratio <= 1, f"kl.ratio must be in (0, 1] (got {kl.ratio})")
    need(kl.free_bits >= 0, f"kl.free_bits must be >= 0 (got {kl.free_bits})")
    need(kl.delta >= 0, f"kl.delta must be >= 0 nats per dimension (got {kl.delta})")
    need(kl.capacity >= 0, f"kl.capacity must be >= 0 nats (got {kl.capacity})")
    if kl.capacity > 0:
        need(cfg.beta == 1.0 and kl.free_bits == 0 and kl.schedule == "constant",
             CAPACITY_ALONE)
        need(kl.capacity_steps >= 1 and kl.capacity_gamma > 0,
             f"kl.capacity_steps must be >= 1 and kl.capacity_gamma > 0 (got {kl.capacity_steps}, {kl.capacity_gamma})")
    registry.check_requirements(chosen, cfg, need, _kl_requirements(cfg))


CAPACITY_ALONE = ("kl.capacity replaces beta, kl.schedule and kl.free_bits (the loss is recon + kl.capacity_gamma "
                  "|KL - C|): use it with objective=elbo and leave those at their defaults")


def _kl_requirements(cfg: Config) -> list[registry.Requirement]:
    """What the run-wide KL settings and the data need of the chosen members."""
    kl, found = cfg.kl, []
    if kl.delta > 0:
        found.append(registry.needs("gaussian_code", "closed_form", "standard_normal", explain=False, message=(
            "kl.delta commits the rate of a Gaussian posterior against N(0, I): model=mlp, conv or resnet with "
            "posterior=gaussian and prior=normal")))
    if kl.free_bits > 0:
        found.append(registry.needs("kl_per_dim", "closed_form", "standard_normal", explain=False, message=(
            "kl.free_bits needs a KL per latent dimension or group: prior=normal and posterior=gaussian with "
            "model=mlp, conv, resnet or ladder")))
    if kl.capacity > 0:
        found.append(registry.needs("elbo_loss", message=CAPACITY_ALONE, explain=False))
    if cfg.dataset.dequantize:
        found.append(registry.needs("density", explain=False, message=(
            f"dataset.dequantize=true is for the density likelihoods ({', '.join(DENSITIES)}); likelihood={cfg.likelihood.name} is a probability of the stored values "
            "already: drop dataset.dequantize")))
    return found


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
