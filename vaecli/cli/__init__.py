"""The `vae` command line: a thin layer. Each command parses its options, calls one library
function, and formats the result; only this package knows Typer and rich.

Output rules: results go to stdout (a rich table, or exactly one JSON object with --json);
progress and notes go to stderr. Errors are one line on stderr with the exit code the error
carries (errors.py: 2 usage, 1 runtime, 128 + signal when training is interrupted). torch is
imported inside the commands, so `vae --help` stays fast.
"""

from __future__ import annotations

import os

import typer

from ..runtime import distributed
from ..errors import Interrupted, VaeError
from . import train, pictures, samples, evaluate, latents, inspect, catalog  # noqa: F401,I001  (importing registers the commands, in this order)
from .app import app
from .help import attach
from .output import stderr

attach(app)  # the short lines of `vae --help`, and each command's examples and page (help.py)

__all__ = ["app", "main", "run"]


def _click_exceptions():
    try:  # typer >= 0.16 vendors click as typer._click
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(message: str, code: int) -> int:
    if distributed.quiet_rank():  # torchrun: rank 0 says it once
        return code
    # One line whatever the user typed: control characters echoed from the input are escaped.
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message.strip())
    stderr.print(f"vae: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return code


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map every failure to one line + exit code."""
    distributed.exit_process(run(argv))


def _bash_completion():
    """Typer's bash completion, told about KEY=VALUE: bash splits a word at '=' (COMP_WORDBREAKS),
    so `model=ml<TAB>` arrives as "model", "=", "ml". Rejoin it for the completion functions, and
    answer with the part after the '=' (the word readline replaces)."""
    from typer._completion_classes import BashComplete

    class KeyValueBash(BashComplete):
        prefix = ""

        def get_completion_args(self):
            args, incomplete = super().get_completion_args()
            if incomplete == "=" and args:  # the cursor right after the '='
                incomplete = args.pop() + "="
                self.prefix = incomplete
            elif len(args) >= 2 and args[-1] == "=":
                args.pop()
                self.prefix = args.pop() + "="
                incomplete = self.prefix + incomplete
            return args, incomplete

        def format_completion(self, item):
            value = item.value
            return value[len(self.prefix):] if self.prefix and value.startswith(self.prefix) else value

    return KeyValueBash


def run(argv: list[str] | None = None) -> int:
    cx = _click_exceptions()
    command = typer.main.get_command(app)
    if os.environ.get("_VAE_COMPLETE") == "complete_bash":
        from typer._click.shell_completion import add_completion_class

        add_completion_class(_bash_completion(), "bash")
    try:
        result = command.main(args=argv, prog_name="vae", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except cx.NoArgsIsHelpError as e:  # bare `vae`: show the help, not an error
        print(e.ctx.get_help() if getattr(e, "ctx", None) else e.format_message())
        return 0
    except cx.UsageError as e:
        where = f"{e.ctx.command_path} --help" if getattr(e, "ctx", None) else "vae --help"
        return _fail(f"{e.format_message()} (see '{where}')", 2)
    except cx.ClickException as e:
        return _fail(e.format_message(), e.exit_code)
    except typer.Abort:
        return _fail("aborted", 130)
    except Interrupted as e:  # the checkpoint is written; the message says how to resume
        if e.announce:
            stderr.print(str(e), markup=False, highlight=False, soft_wrap=True)
        return e.exit_code
    except VaeError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 1
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
            return _fail("out of memory; lower trainer.batch_size / --batch-size", 1)
        raise
