"""What the commands print: results on stdout (a rich table, or exactly one JSON object with
--json), progress and notes on stderr."""

from __future__ import annotations

import json
import math
import os
import sys
from rich.console import Console
from rich.table import Table

# soft_wrap: never break a path across lines; piped into a file, a wide table keeps its rows whole
stdout = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)
stderr = Console(stderr=True, highlight=False)


def emit(result: dict, as_json: bool, table: Table | None = None, schema: str | None = None) -> None:
    """Exactly one JSON object on stdout with --json, else the human table. `schema` names the
    declaration of its keys (json_keys.py; default: the running command's name)."""
    if os.environ.get("VAECLI_CHECK_JSON"):
        _check_keys(result, schema)
    if as_json:
        sys.stdout.write(json.dumps(_finite(result), allow_nan=False) + "\n")
        sys.stdout.flush()
    elif table is not None:
        stdout.print(table)


def _check_keys(result: dict, schema: str | None) -> None:
    """VAECLI_CHECK_JSON=1 (the test suite sets it): a key the declaration lacks is an error, so the
    generated --json reference cannot fall behind the output."""
    from .json_keys import undeclared

    if schema is None:
        ctx = _click_context()
        schema = ctx.command.name if ctx is not None else "?"
    missing = undeclared(schema, result)
    if os.environ["VAECLI_CHECK_JSON"] == "log":
        with open(os.environ.get("VAECLI_JSON_LOG", "/tmp/vaecli-json.log"), "a") as f:
            f.write(json.dumps({"schema": schema, "keys": sorted(result), "missing": missing}) + "\n")
    elif missing:
        raise AssertionError(f"--json of {schema!r} has keys its declaration (vaecli/cli/json_keys.py) lacks: {missing}")


def _click_context():
    try:  # typer >= 0.16 vendors click as typer._click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    return get_current_context(silent=True)


def say(text: str, as_json: bool) -> None:
    """A human line on stdout, unless --json."""
    if not as_json:
        stdout.print(text)


def warn(text: str) -> None:
    stderr.print("warning: " + text, markup=False, highlight=False, soft_wrap=True)


def _finite(value):
    """NaN/inf -> null, so --json output is strict JSON (jq and JSON.parse reject NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def se(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a (one image)"


def table(title: str, rows: list[tuple[str, str]]) -> Table:
    """A two-column key/value table."""
    from rich.markup import escape

    out = Table(title=title, show_header=False, title_justify="left", min_width=len(title))
    out.add_column(style="bold")
    out.add_column(justify="right")
    for key, value in rows:
        out.add_row(escape(key), escape(value))  # "[z_u]" is text, not rich markup
    return out


def columns(title: str, names: list[str], rows: list[list[str]], bold_last: bool = False, left: int = 1) -> Table:
    """A table with a header row; the first `left` columns left-aligned, the rest right-aligned."""
    out = Table(title=title, title_justify="left", min_width=min(len(title), 100))  # a longer title wraps
    for i, name in enumerate(names):
        out.add_column(name, justify="left" if i < left else "right")
    for i, row in enumerate(rows):
        out.add_row(*row, style="bold" if bold_last and i == len(rows) - 1 else None)
    return out


def kl_dims(values: list[float]) -> str:
    """KL per dimension, largest first, as 'z3 4.21, z0 3.90, ...' (at most 8 shown)."""
    order = sorted(range(len(values)), key=lambda d: -values[d])
    shown = ", ".join(f"z{d} {values[d]:.2f}" for d in order[:8])
    return shown + (f", … ({len(values) - 8} more)" if len(values) > 8 else "")


def groups(kls: list[float], active: list[int] | None) -> str:
    """KL per latent group, top first, as 'top 12.31 (14 active), 2: 8.02 (9), ...'."""
    parts = []
    for t, kl in enumerate(kls):
        units = "" if active is None else f" ({active[t]}{' active' if t == 0 else ''})"
        parts.append(f"{'top' if t == 0 else t + 1}: {kl:.2f}{units}")
    return ", ".join(parts)


def _maybe(values: dict, key: str) -> str:
    return f"{values[key]:.2f}" if key in values else "-"


class TrainProgress:
    """A trainer callback (train.Callback's hooks) drawing a rich progress bar on stderr; the
    per-epoch notes still print when the bar is off."""

    def __init__(self, enabled: bool, quiet: bool, label: str = "train"):
        self.enabled, self.quiet, self.label = enabled, quiet, label
        self.progress = None

    def on_train_start(self, trainer) -> None:
        if not self.enabled:
            return
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn(f"[bold]{escape(self.label)}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  ELBO {task.fields[elbo]}  "
                       "KL {task.fields[kl]}{task.fields[codes]}  {task.fields[ips]} img/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=stderr, transient=False,
        )
        self.task = self.progress.add_task("train", total=trainer.total_steps, completed=trainer.state.step,
                                           epoch="-", loss="-", elbo="-", kl="-", codes="", ips="-")
        self.progress.start()

    def on_epoch_start(self, trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=trainer.state.step)

    def on_log(self, trainer, epoch: int, values: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=trainer.state.step, epoch=epoch, loss=f"{values['loss']:.2f}",
                                 elbo=_maybe(values, "elbo"), kl=_maybe(values, "kl"),
                                 codes=(f"  perplexity {values['perplexity']:.0f}, {values['dead_codes']:.0f} dead, "
                                        f"{values['revived']:.0f} revived" if "perplexity" in values else ""),
                                 ips=f"{values.get('img_per_s', 0):,.0f}")

    def on_eval(self, trainer, epoch: int, test: dict) -> None:
        if self.quiet:
            return
        if "nll" in test:  # a VQ-VAE's prior
            text = (f"epoch {epoch}/{trainer.settings.epochs}: test NLL of the codes {test['nll']:.2f} nats "
                    f"({test['bits_per_code']:.3f} bits/code), "
                    + ("bound on log p(x)" if test.get("bits_per_dim") is not None else "ELBO (not a bound)")
                    + f" {test['elbo']:.2f} nats")
        else:
            text = (f"epoch {epoch}/{trainer.settings.epochs}: test ELBO {test['elbo']:.2f}, "
                    f"KL {test['kl']:.2f}, recon {test['recon']:.2f} nats"
                    + (f", codebook perplexity {test['perplexity']:.1f}" if "perplexity" in test else ""))
        (self.progress.console if self.progress is not None else stderr).print(text)

    def on_train_end(self, trainer=None) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def note_pixel_by_pixel(model, what: str) -> None:
    """The cost note of an autoregressive decoder's pictures: H x W passes of the network `what`."""
    c, h, w = model.spec.image_shape
    stderr.print(f"note: the autoregressive decoder draws pixel by pixel: {h * w} passes of the network {what}",
                 markup=False, highlight=False, soft_wrap=True)


class Drawing:
    """For a model that draws pictures pixel by pixel (an autoregressive decoder): a note of the cost
    and a progress bar over the pixels while the block runs; nothing otherwise."""

    def __init__(self, model, images: int, enabled: bool = True, common: bool = False):
        """`common`: the pictures are a path through latent space, drawn one image at a time with
        the same random numbers (decode_images(common=True)): images times the passes."""
        self.active = bool(getattr(model, "draws_pixel_by_pixel", False))
        self.progress = None
        if not self.active:
            return
        c, h, w = model.spec.image_shape
        passes = h * w * (images if common and images > 1 else 1)
        if enabled:
            how = ", one image at a time with the same random numbers" if common and images > 1 else ""
            stderr.print(f"note: the autoregressive decoder draws pixel by pixel: {passes} passes of the network for "
                         f"{images} image(s){how}", markup=False, highlight=False, soft_wrap=True)
        self.counter = Counter("drawing", passes, enabled, unit="pixels")

    def __enter__(self):
        if not self.active:
            return None
        from ..models import autoregressive

        advance = self.counter.__enter__()
        done = {"n": 0}

        def report(pixels: int, total: int) -> None:
            if advance is not None:
                advance(pixels - done["n"])
            done["n"] = pixels % total  # the next picture starts again

        self._context = autoregressive.reporting(report)
        self._context.__enter__()
        return None

    def __exit__(self, *exc) -> None:
        if self.active:
            self._context.__exit__(*exc)
            self.counter.__exit__(*exc)


class Counter:
    """A progress bar over images (eval-iwae) on an interactive stderr; `advance` is its callback."""

    def __init__(self, label: str, total: int, enabled: bool, unit: str = "images"):
        self.progress = None
        if enabled and stderr.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(f"{unit}  ETA"), TimeRemainingColumn(), console=stderr)
            self.task = self.progress.add_task("eval", total=total)

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self.advance if self.progress is not None else None

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
