"""The Typer application and the options every command shares, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


from .. import __version__
from ..errors import UsageError

app = typer.Typer(
    name="vae",
    help="Train, sample and evaluate Variational Autoencoders.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"vaecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train, sample and evaluate Variational Autoencoders."""


def at_least(minimum: float, strict: bool = False):
    """An option callback: the value must be >= minimum (> with strict); None passes."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is not None and ((value <= minimum) if strict else (value < minimum)):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise UsageError(f"{param.opts[0]} must be {bound} (got {value})")
        return value

    return check


def one_of(*choices: str):
    """An option callback: the value must be one of `choices` (None, an optional option left out, passes)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is not None and value not in choices:
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
            raise UsageError(f"{param.opts[0]} must be {listed} (got {value!r})")
        return value

    return check


def picture_out(out: Optional[Path], gif: bool, run_dir: Path, name: str) -> Path:
    """--out for a command that writes a PNG or, with --gif (or an --out ending in .gif), a GIF."""
    if out is None:
        return run_dir / f"{name}.{'gif' if gif else 'png'}"
    if gif and out.suffix.lower() != ".gif":
        raise UsageError(f"--gif writes a GIF: give --out a .gif name (got {out})")
    return out


def out_option(default_name: str):
    return Annotated[Optional[Path], typer.Option("--out", help=f"PNG to write (default: RUN/{default_name}).")]


def label_option(help: str):
    return Annotated[Optional[str], typer.Option("--label", help=f"Conditional models: {help}")]


def complete_runs(incomplete: str):
    from .completion import run_folders

    return run_folders(incomplete)


def complete_overrides(incomplete: str):
    from .completion import overrides

    return overrides(incomplete)


Ckpt = Annotated[Optional[str], typer.Option(
    "--ckpt", help="Run folder or model.safetensors (default: the latest run under ./runs).",
    autocompletion=complete_runs)]
DataRoot = Annotated[Optional[str], typer.Option(
    "--data-root", help="Where the dataset lives (default: the checkpoint's, else $VAECLI_DATA or the cache dir).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the random draws.")]
Threads = Annotated[int, typer.Option("--threads", callback=at_least(0),
                                      help="CPU threads for the math (0: a fair share of the cores among running vae processes).")]
EvalPrecision = Annotated[str, typer.Option(
    "--precision", callback=one_of("auto", "fp32", "bf16"),
    help="Networks in bf16 (auto: where the hardware has bf16 matrix units and a check on the first images "
         "shows the bound unchanged), or fp32; log-likelihoods and the logsumexp stay fp32.")]
Zoom = Annotated[Optional[int], typer.Option(
    "--zoom", callback=at_least(1), help="Enlarge each pixel N times (nearest neighbour); default: about 112 px per image.")]
Gif = Annotated[bool, typer.Option("--gif", help="Write an animated GIF instead (default --out: RUN/NAME.gif).")]
Steps = Annotated[int, typer.Option("--steps", callback=at_least(2), help="Points per strip, endpoints included.")]
