"""Checkpoints: the model and trainer files of a run folder (runs.py has its layout), as
safetensors only (no pickle anywhere), each written atomically, the two committed as a pair.

  model.safetensors    weights; metadata: model spec, dataset config, seed, version, step
  trainer.safetensors  optimizer tensors, RNG states and the trainer callbacks' tensors (e.g. the
                       training weights when model.safetensors holds their EMA); scalars in metadata
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import __version__, bounds
from ..atomic import atomic_write
from ..config import DatasetConfig
from ..errors import UsageError, VaeError
from ..models import VAE, build
from ..models import spec as model_spec
from ..models.spec import ModelSpec
from .runs import MODEL, MODEL_FILE, PRIOR, TRAINER_FILE, TRAINER_NEXT, Stage, resolve  # noqa: F401 (file names re-exported)

FORMAT = "1"  # bump when the layout of the tensors or metadata changes incompatibly
MAX_METADATA_CHARS = 1_000_000  # a model spec is a few hundred bytes; refuse absurd headers


# ---------------------------------------------------------------------------------------------
# Files


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # Serialized in memory, written by Python: a full disk is then an OSError that atomic_write
    # turns into one clear line (safetensors' own writer reports it as a generic error).
    blob = save(tensors, metadata=metadata)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(blob))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the metadata of a safetensors file; bad files -> UsageError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise UsageError(f"no checkpoint at {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory without {MODEL_FILE}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: the file is not a readable checkpoint
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{path} is not a readable safetensors file ({reason})") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------------
# Model files


def save_model(path: Path, model: VAE, dataset: DatasetConfig, seed: int, step: int, epoch: int,
               extra: dict[str, str] | None = None) -> None:
    """Weights of the unwrapped module plus everything needed to rebuild it and its data."""
    metadata = {
        "vaecli.format": FORMAT,
        "vaecli.version": __version__,
        "vaecli.model": json.dumps(asdict(model.spec)),
        "vaecli.dataset": json.dumps(asdict(dataset)),
        "vaecli.seed": str(seed),
        "vaecli.step": str(step),
        "vaecli.epoch": str(epoch),
        **(extra or {}),
    }
    save_tensors(path, model.state_dict(), metadata)


@dataclass
class Loaded:
    model: VAE
    dataset: DatasetConfig
    seed: int
    step: int
    path: Path  # the model.safetensors file
    metadata: dict | None = None

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def _json_field(metadata: dict, key: str, path: Path) -> dict:
    text = metadata.get(key)
    if text is None:
        raise UsageError(f"{path} has no '{key}' metadata: not a vaecli checkpoint")
    if len(text) > MAX_METADATA_CHARS:
        raise UsageError(f"{path}: '{key}' metadata is implausibly large; refusing to parse it")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"{path}: '{key}' metadata is not valid JSON (corrupt checkpoint?)") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: '{key}' metadata is not a JSON object (corrupt checkpoint?)")
    return value


def _int_field(metadata: dict, key: str, path: Path) -> int:
    try:
        return int(metadata.get(key, "0"))
    except ValueError:
        raise UsageError(f"{path}: '{key}' metadata is not an integer (corrupt checkpoint?)") from None


def _rebuild(file: Path, spec_type, build_fn):
    """The module saved in `file` (built from its spec metadata), its metadata and dataset config."""
    tensors, metadata = read_tensors(file)
    if "vaecli.format" not in metadata:
        raise UsageError(f"{file} has no vaecli metadata: not a vaecli checkpoint")
    if metadata["vaecli.format"] != FORMAT:
        raise UsageError(
            f"{file} is checkpoint format {metadata['vaecli.format']!r} (vaecli "
            f"{metadata.get('vaecli.version', '?')}); this vaecli {__version__} reads format {FORMAT}"
        )
    spec_fields = _json_field(metadata, "vaecli.model", file)
    data_fields = _json_field(metadata, "vaecli.dataset", file)
    data_fields.setdefault("dequantize", False)  # saved before dataset.dequantize existed: trained without it
    if spec_type is ModelSpec and "body" not in spec_fields:  # the flat spec of releases before 2026-12-04:
        spec_fields.setdefault("levels", bounds.levels(data_fields.get("binarize")))  # the data's levels, which
        spec_fields.setdefault("logistic_tanh_means", spec_fields.get("likelihood") == "logistic")  # decide what its
        spec_fields.setdefault("norm", "none")  # likelihood measures; old squashing; resnets before GroupNorm
    try:
        dataset = DatasetConfig(**data_fields)
        spec = model_spec.from_json(spec_fields) if spec_type is ModelSpec else spec_type(**spec_fields)
        model = build_fn(spec)
        model.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0]
        raise UsageError(f"{file}: weights and metadata do not describe a model this vaecli can build ({reason})") from None
    return model, metadata, dataset


def _attach_prior(vqvae, file: Path, step: int, device) -> None:
    """Give a VQ-VAE the prior beside it (prior.safetensors) if it was trained on this model's
    codes (the codebook's fingerprint and step match); otherwise say why not."""
    if not (file.parent / PRIOR.model).is_file():
        return
    prior = load_model(file.parent, device, PRIOR)
    trained_step = _int_field(prior.metadata, "vaecli.vq_step", prior.path)
    if prior.metadata.get("vaecli.vq_codebook") == vqvae.codebook_fingerprint():
        vqvae.attach_prior(prior.model)
        return
    now = (f"at step {trained_step}, and the model is now at step {step}" if trained_step != step
           else "of another VQ-VAE (its codebook differs)")
    vqvae.attach_prior(None, f"{prior.path} was trained on the codes {now}; train it again with: "
                             f"vae train-prior --ckpt {file.parent}")


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu", stage: Stage = MODEL,
               with_prior: bool = True) -> Loaded:
    """Rebuild the model from a run folder or model.safetensors alone, on any device. A VQ-VAE
    gets the prior over its codes from prior.safetensors beside it, when there is one that was
    trained on its codes (with_prior). stage=PRIOR loads that prior itself."""
    if stage.kind == "prior":
        from ..models.code_prior import CodePrior, PriorSpec

        file = Path(path) / stage.model if Path(path).is_dir() else Path(path)
        model, metadata, dataset = _rebuild(file, PriorSpec, CodePrior)
    else:
        file = resolve(path)
        model, metadata, dataset = _rebuild(file, ModelSpec, build)
    step = _int_field(metadata, "vaecli.step", file)
    if with_prior and stage.kind == "model" and model.discrete:  # a VQ-VAE: its prior has its own file
        _attach_prior(model, file, step, device)
    model.to(device).eval()
    return Loaded(model, dataset, _int_field(metadata, "vaecli.seed", file), step, file, metadata)


# ---------------------------------------------------------------------------------------------
# Trainer state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten optimizer.state_dict() into tensors plus a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of optimizer_tensors: a dict for optimizer.load_state_dict."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in rest.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_trainer(path: Path, optimizer: torch.optim.Optimizer, rng: dict[str, torch.Tensor],
                 step: int, epoch: int, scaler: dict | None = None, world: int = 1,
                 callbacks: dict[str, torch.Tensor] | None = None) -> None:
    tensors, rest = optimizer_tensors(optimizer)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    tensors.update({f"callback.{k}": v for k, v in (callbacks or {}).items()})
    metadata = {"vaecli.format": FORMAT, "vaecli.step": str(step), "vaecli.epoch": str(epoch),
                "vaecli.optimizer": json.dumps(rest)}
    metadata["vaecli.world"] = str(world)  # torchrun processes: a step is world x batch_size images
    if scaler is not None:  # fp16 loss scale and its growth counter
        metadata["vaecli.scaler"] = json.dumps(scaler)
    save_tensors(path, tensors, metadata)


def load_trainer(path: Path) -> dict:
    """{'optimizer': state_dict, 'rng': {name: tensor}, 'callbacks': {name.key: tensor}, 'step',
    'epoch', 'scaler', 'world'}."""
    tensors, metadata = read_tensors(path)
    rest = _json_field(metadata, "vaecli.optimizer", path)
    return {
        "optimizer": optimizer_state(tensors, rest),
        "rng": {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")},
        "callbacks": {k[9:]: v for k, v in tensors.items() if k.startswith("callback.")},
        "step": _int_field(metadata, "vaecli.step", path),
        "epoch": _int_field(metadata, "vaecli.epoch", path),
        "scaler": _json_field(metadata, "vaecli.scaler", path) if "vaecli.scaler" in metadata else None,
        "world": _int_field(metadata, "vaecli.world", path) if "vaecli.world" in metadata else 1,
    }


# ---------------------------------------------------------------------------------------------
# A checkpoint is a model file and a trainer file at the same step.


def save_checkpoint(run_dir: Path, model: VAE, dataset: DatasetConfig, seed: int, optimizer: torch.optim.Optimizer,
                    rng: dict[str, torch.Tensor], step: int, epoch: int, scaler: dict | None = None,
                    world: int = 1, stage: Stage = MODEL, extra: dict[str, str] | None = None,
                    callbacks: dict[str, torch.Tensor] | None = None) -> None:
    """Write model and trainer state so that a crash at any moment (kill -9, power loss) leaves a
    matching pair: the new trainer state goes to trainer.next, then the model file is replaced
    (the commit point), then trainer.next replaces trainer. Each write is atomic
    (atomic_write); load_trainer_for picks whichever trainer file matches the model."""
    run_dir = Path(run_dir)
    save_trainer(run_dir / stage.trainer_next, optimizer, rng, step, epoch, scaler=scaler, world=world,
                 callbacks=callbacks)
    save_model(run_dir / stage.model, model, dataset, seed, step, epoch, extra)
    try:
        os.replace(run_dir / stage.trainer_next, run_dir / stage.trainer)
    except OSError as e:
        raise VaeError(f"cannot write {run_dir / stage.trainer}: {e.strerror or e}") from None


def load_trainer_for(run_dir: Path, step: int, promote: bool = True, stage: Stage = MODEL) -> dict:
    """The trainer state that belongs to the model at `step`: trainer.safetensors, or
    trainer.next.safetensors when a crash came between the model file and the final rename
    (which `promote` then finishes; under torchrun only rank 0 promotes, before the others read)."""
    run_dir = Path(run_dir)
    found = []
    for name in (stage.trainer, stage.trainer_next):
        if (run_dir / name).is_file():
            state = load_trainer(run_dir / name)
            if state["step"] == step:
                if name == stage.trainer_next and promote:  # finish the interrupted checkpoint
                    os.replace(run_dir / stage.trainer_next, run_dir / stage.trainer)
                return state
            found.append(f"{name} at step {state['step']}")
    raise VaeError(f"{run_dir}: the model is at step {step} but the trainer state is "
                   f"{', '.join(found) or 'missing'}; the run folder is inconsistent (start a new run)")


def saved_metadata(run_dir: Path, stage: Stage = MODEL) -> dict[str, str]:
    """The metadata of the run's model file ({} when there is none, or it cannot be read)."""
    path = Path(run_dir) / stage.model
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def saved_step(run_dir: Path, stage: Stage = MODEL) -> int | None:
    """The step of the run's model file, or None when there is none (yet)."""
    path = Path(run_dir) / stage.model
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("vaecli.step", ""))
    except Exception:
        return None
