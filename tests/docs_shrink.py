"""Runs a command from the documentation at a tiny size: `python docs_shrink.py vae ARGS...` or
`python docs_shrink.py torchrun ARGS...`.

tests/test_docs.py runs each tutorial's ```bash blocks with `vae` and `torchrun` defined as shell
functions that call this script. It keeps the command as written (its subcommand, options, run
folders, overrides, the order of the steps) and changes only sizes: epochs, images, importance
samples, points. So a renamed option or config key, a changed run-folder layout, or a step that no
longer follows from the one before breaks a test, not a reader. Every command is appended, as
written and as run, to the JSON-lines file $DOCS_LOG.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

FLAGS = {"--slerp", "--gif", "--json", "-m", "--multirun", "--print-config", "--force", "--scaled", "--sample",
         "--quiet", "-q", "--help", "-h"}

# key=value overrides of a training, replacing the page's value of the same key
TRAIN = {"trainer.epochs": "1", "dataset.limit": "128", "trainer.batch_size": "32", "trainer.eval_batch_size": "64",
         "trainer.sample_every": "0"}
PHOTOS = {"dataset.crops": "64", "dataset.test_crops": "16"}
RESUME = {"trainer.epochs": "2"}


def _key(token: str) -> str | None:
    """The key of a Hydra override (`a.b=v`, `+a=v`, `++a=v`), or None for an option or a value."""
    if token.startswith("-") or "=" not in token:
        return None
    return token.split("=", 1)[0].lstrip("+")


def _with(tokens: list[str], values: dict[str, str]) -> list[str]:
    kept = [t for t in tokens if _key(t) not in values]
    return kept + [f"{k}={v}" for k, v in values.items()]


def _option(tokens: list[str], name: str, change, default: str | None = None) -> list[str]:
    """Replace the value of option `name` by change(value); add it with `default` when absent."""
    out = list(tokens)
    for i, t in enumerate(out):
        if t == name and i + 1 < len(out):
            out[i + 1] = change(out[i + 1])
            return out
        if t.startswith(name + "="):
            out[i] = f"{name}={change(t.split('=', 1)[1])}"
            return out
    if default is not None:
        out += [name, default]
    return out


def _add_flag(tokens: list[str], name: str, value: str) -> list[str]:
    return tokens if name in tokens else tokens + [name, value]


def _at_most(n: int):
    return lambda v: str(min(int(v), n))


def shrink_vae(args: list[str]) -> list[str]:
    if not args:
        return args
    command, rest = args[0], list(args[1:])
    if command == "train":
        if "--resume" in rest:
            return [command] + _with(rest, RESUME)
        values = dict(TRAIN)
        if any(t == "dataset=photos" or (t.startswith("experiment=") and "photos" in t) for t in rest):
            values.update(PHOTOS)
        if "model.decoder=pixelcnn" in rest:  # its sampling runs the network once per pixel
            values["model.ar_channels"] = "8"
        if any(_key(t) == "hydra.sweeper.n_trials" for t in rest):
            values["hydra.sweeper.n_trials"] = "2"
        return [command] + _with(rest, values)
    if command == "train-prior":
        return [command] + _with(rest, {"trainer.epochs": "1", "trainer.batch_size": "32"})
    if command == "fit-sampler":
        values = {"sampler.images": "128"}
        if any(t == "sampler=two_stage" for t in rest):
            values["sampler.epochs"] = "1"
        return [command] + _with(rest, values)
    if command == "eval-iwae":
        rest = _option(rest, "--k", lambda v: ",".join(str(min(int(k), 4)) for k in v.split(",")))
        return [command] + _option(rest, "--n", _at_most(32), "32")
    if command == "score":
        rest = _option(rest, "--k", lambda v: "4", "4")
        return [command] + _option(rest, "--n", _at_most(16), "16")
    if command == "eval-samples":
        rest = _option(rest, "--n", lambda v: "64", "64")
        return [command] + _add_flag(rest, "--features", "pixels")
    if command == "eval-recon":
        rest = _option(rest, "--n", lambda v: "16", "16")
        rest = _add_flag(rest, "--features", "pixels")
        return [command] + _add_flag(rest, "--lpips-weights", "none")
    if command == "eval-disentanglement":
        return [command] + _option(rest, "--points", lambda v: "200", "200")
    if command == "encode":
        if "--data" in rest:
            rest = _option(rest, "--n", _at_most(16), "16")
        return [command] + _option(rest, "--scale-images", lambda v: "16", "16")
    if command == "export":
        return [command] + _option(rest, "--scale-images", lambda v: "16", "16")
    if command == "traverse":
        return [command] + _option(rest, "--steps", _at_most(3))
    if command == "latent-plot":
        return [command] + _option(rest, "--n", _at_most(64), "64")
    if command == "sample":
        return [command] + _option(rest, "--n", _at_most(16))
    if command == "reconstruct":
        return [command] + _option(rest, "--n", _at_most(8))
    return args


def shrink_torchrun(args: list[str]) -> list[str]:
    """torchrun's own options (the process count capped at 2), then `-m vaecli` and vae's arguments."""
    i = args.index("vaecli")
    own = _option(args[:i], "--nproc-per-node", lambda v: "2")
    return own + ["vaecli"] + shrink_vae(args[i + 1:])


def main() -> None:
    program, args = sys.argv[1], sys.argv[2:]
    if program == "vae":
        run = [sys.executable, "-m", "vaecli", *shrink_vae(args)]
    elif program == "torchrun":
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
        run = [torchrun, *shrink_torchrun(args)]
    else:
        raise SystemExit(f"docs_shrink.py: unknown program {program!r}")
    log = os.environ.get("DOCS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"as_written": [program, *args], "as_run": run[1:] if program == "torchrun" else
                                ["vae", *run[3:]]}) + "\n")
    sys.stdout.flush()
    os.execv(run[0], run)


if __name__ == "__main__":
    main()
