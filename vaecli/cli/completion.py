"""Shell completion of what is ours (Typer completes the commands and options): config
overrides for `vae train` (groups, sections, keys, the options of a group, the values of a key
with fixed choices) and run folders for --ckpt / --resume / `vae runs`. Plain functions of the
word being completed, returning (value, help) pairs; no torch, no Hydra.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from .. import config, registry
from ..runtime import runs
from ..experiments import sweep
from ..models.vae_config import ACTIVATIONS, NETWORKS


def _sections() -> dict[str, list[str] | None]:
    """Top-level config keys: a section's keys (a family's: those of all its members' cards), or
    None for a plain value (beta, seed)."""
    out: dict[str, list[str] | None] = {}
    for f in dataclasses.fields(config.Config):
        hint = typing.get_type_hints(config.Config)[f.name]
        if f.name in registry.FAMILIES:
            out[f.name] = sorted({k for card in registry.members(f.name).values() for k in card.keys()})
        else:
            out[f.name] = [g.name for g in dataclasses.fields(hint)] if dataclasses.is_dataclass(hint) else None
    return out


def _choices() -> dict[str, tuple[str, ...]]:
    """Keys whose values come from a fixed list."""
    booleans = ("true", "false")
    return {
        "trainer.device": config.DEVICES, "trainer.precision": config.PRECISIONS,
        "trainer.channels_last": config.CHANNELS_LAST, "trainer.lr_schedule": config.LR_SCHEDULES,
        "trainer.logger": config.LOGGERS, "trainer.compile": booleans, "kl.schedule": config.KL_SCHEDULES,
        "model.network": NETWORKS, "model.activation": ACTIVATIONS, "model.conditional": booleans,
        "model.kmeans_init": booleans, "likelihood.per_pixel": booleans, "dataset.binarize": ("dynamic", "static"),
        "dataset.dequantize": booleans,
    }


def overrides(incomplete: str) -> list[tuple[str, str]]:
    """Candidates for one `vae train` override being typed."""
    if "=" in incomplete:
        key, partial = incomplete.split("=", 1)
        if key in config.GROUPS + config.SELECT_ONLY:
            values = config.group_options(key)
        else:
            values = list(_choices().get(key, ()))
        return [(f"{key}={v}", "") for v in values if v.startswith(partial)]
    found = []
    sections = _sections()
    if "." in incomplete:
        section = incomplete.split(".", 1)[0]
        keys = sections.get(section)
        if keys is not None:
            found = [(f"{section}.{key}=", "") for key in keys if key != "name"]
    else:
        for name in config.GROUPS + config.SELECT_ONLY:
            found.append((f"{name}=", f"one of: {', '.join(config.group_options(name))}"))
        for name, keys in sections.items():
            if keys is not None:
                found.append((f"{name}.", f"{name} settings"))
            elif name not in config.GROUPS:
                found.append((f"{name}=", ""))
    return [(value, help) for value, help in found if value.startswith(incomplete)]


def run_folders(incomplete: str) -> list[tuple[str, str]]:
    """Run folders (and sweep folders) under ./runs, or under the folder being typed."""
    typed = Path(incomplete) if incomplete else None
    roots = {runs.RUNS_DIR}
    if typed is not None:
        roots.add(typed if incomplete.endswith("/") else typed.parent)
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if (path / runs.MODEL_FILE).is_file():
                found.append((str(path), "run"))
            elif sweep.is_sweep(path):
                found.append((str(path), "sweep"))
                found += [(str(job), "run") for job in sorted(path.iterdir()) if (job / runs.MODEL_FILE).is_file()]
    return [(value, help) for value, help in dict(found).items() if value.startswith(incomplete)]
