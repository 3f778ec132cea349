"""vae runs: the table of the runs under a folder (and the table a sweep ends with)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import output
from .app import Json, app, complete_runs


@app.command("runs")
def runs_table(
    folder: Optional[Path] = typer.Argument(None, metavar="[DIR]", autocompletion=complete_runs,
                                            help="A runs folder, a sweep folder or a run (default: ./runs)."),
    sort: Optional[str] = typer.Option(None, "--sort", help="started (default), name, elbo, iwae, mig, wall, steps or state."),
    as_json: Json = False,
) -> None:
    """The runs under DIR: dataset, model, overrides, progress, test ELBO, KL, active units, the
    last eval-iwae / eval-disentanglement / eval-samples result, wall time and state (finished, interrupted,
    running, crashed; broken for a folder that cannot be read)."""
    from ..experiments import catalog
    from ..runtime import runs

    root = folder if folder is not None else runs.RUNS_DIR
    if sort is not None:
        catalog.sort_rows([], sort)  # an unknown key is refused before anything is read
    rows = catalog.scan(root, sort)
    if not rows and not as_json:
        output.say(f"no runs under {root}", as_json)
        return
    output.emit({"root": str(root), "runs": [r.to_dict() for r in rows]}, as_json,
                table(f"runs under {root}: {len(rows)}", rows))


def table(title: str, rows):
    """The runs table. What every row shares (dataset, model, overrides) moves into the title, so
    a sweep's table shows what differs between its runs."""
    same = {key: len({getattr(r, key) for r in rows if getattr(r, key)}) == 1 and len(rows) > 1
            for key in ("dataset", "model")}  # a pending sweep job has neither yet
    common = [o for o in rows[0].overrides if all(o in r.overrides for r in rows)] if len(rows) > 1 else []
    shared = [f"{key}={getattr(rows[0], key)}" for key in ("dataset", "model") if same[key] and getattr(rows[0], key)]
    if shared or common:
        title += f"; every run: {' '.join(shared + common)}"
    if any(r.bound is False for r in rows):
        title += "; * not a bound on -log p(x) (a grey-pixel Bernoulli, a density without dequantization, or objective=perceptual)"
    names = ["run"] + [key for key in ("dataset", "model") if not same[key]] + ["overrides"]
    left = len(names)
    names += ["epochs", "test ELBO", "KL", "active", "eval", "wall time", "state"]
    cells = []
    for r in rows:
        own = [o for o in r.overrides if o not in common]
        cells.append([r.name] + [getattr(r, key) or "-" for key in ("dataset", "model") if not same[key]] + [
            " ".join(own) or "-", _progress(r), _nats(r.test_elbo) + (_mark(r) if r.test_elbo is not None else ""), _nats(r.test_kl),
            "-" if r.active_units is None else f"{r.active_units}" + (f"/{r.latent_dim}" if r.latent_dim else ""),
            _evals(r), _duration(r.wall_seconds), _state(r)])
    return output.columns(title, names, cells, left=left)


def _progress(r) -> str:
    if r.epochs is None:
        return "-"
    return f"{r.epoch if r.epoch is not None else 0}/{r.epochs}"


def _nats(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mark(r) -> str:
    """'*' beside a figure that is not a bound on -log p(x) (explained in the title)."""
    return "*" if r.bound is False else ""


def _evals(r) -> str:
    parts = []
    if r.iwae:
        n = r.iwae.get("n")
        parts.append(f"IWAE {r.iwae['bound']:.2f}{_mark(r)} (k={r.iwae.get('k')}{f', n={n}' if n else ''})")
    if r.mig is not None:
        parts.append(f"MIG {r.mig:.3f}")
    names = {"dci": "DCI", "sap": "SAP", "factor_vae": "FactorVAE", "beta_vae": "BetaVAE"}
    parts += [f"{names[key]} {value:.3f}" for key, value in (r.factor_metrics or {}).items()]
    if r.recon:
        parts.append(f"PSNR {r.recon['psnr']:.2f} dB, SSIM {r.recon['ssim']:.3f}"
                     + (f", LPIPS {r.recon['lpips']:.3f}" if r.recon.get("lpips") is not None else "")
                     + (f", rFID {r.recon['rfid']:.1f} ({r.recon.get('features')})" if r.recon.get("rfid") is not None
                        else ""))
    if r.fid:
        what = "recon" if r.fid.get("of") == "reconstructions" else r.fid.get("sampler")
        parts.append(f"FID {r.fid['fid']:.1f} ({what}, {r.fid.get('features')}, n={r.fid.get('n')})")
    return ", ".join(parts) or "-"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _state(r) -> str:
    if not (r.note and r.state in ("crashed", "broken")):
        return r.state
    note = r.note if len(r.note) <= 90 else r.note[:89] + "…"  # the whole of it is in --json and status.json
    return f"{r.state}: {note}"
