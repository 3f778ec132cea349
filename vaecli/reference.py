"""The reference pages of the documentation, written from the code so they cannot drift from it:
every command and option (from the Typer app), every config group, option, key, default and
comment (from conf/), and every key of each command's --json object (cli/json_keys.py).

`docs/hooks.py` hands these pages to mkdocs at build time; `python -m vaecli.reference DIR`
writes them as files. Nothing here imports torch.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

PAGES = {"reference/cli.md": "cli_page", "reference/config.md": "config_page", "reference/json.md": "json_page"}

# -- the command line -----------------------------------------------------------------------------


def _click_app():
    import typer

    from .cli import app

    return typer.main.get_command(app)


def commands() -> dict:
    """name -> click command, in the order `vae --help` lists them."""
    group = _click_app()
    return {name: group.commands[name] for name in group.list_commands(None)}


def _md(text: str) -> str:
    """Help text as Markdown: pipes escaped for tables, stars and underscores kept literal."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")


def _param_row(param, ctx) -> str | None:
    """A parameter as `--help` shows it: its names with the value's metavar, and its help with the default."""
    record = param.get_help_record(ctx)
    if record is None:
        return None
    names, text = record
    return f"| `{names}` | {_md(' '.join(text.split()))} |"


def cli_page() -> str:
    import typer

    from .cli.help import EXAMPLES, SEE_ALSO

    group = _click_app()
    lines = ["# Command reference", "",
             "Generated from the `vae` application itself (`vaecli/reference.py`), so it lists exactly the commands and "
             "options the installed version accepts. Every command also answers `--help`.", "",
             "| command | what it does |", "|---|---|"]
    cmds = commands()
    for name, cmd in cmds.items():
        lines.append(f"| [`vae {name}`](#vae-{name}) | {_md(cmd.get_short_help_str(200))} |")
    lines += ["", "Options every command shares: `--help` (`-h`). `vae --version` prints the version; "
              "`vae --install-completion` / `--show-completion` set up shell completion.", ""]
    for name, cmd in cmds.items():
        lines += [f"## vae {name}", "", "```", _usage(cmd, name), "```", "", " ".join((cmd.help or "").split()), ""]
        ctx = typer.Context(cmd, info_name=f"vae {name}")
        for kind in ("argument", "option"):
            rows = [_param_row(p, ctx) for p in cmd.params if p.param_type_name == kind and p.name != "help"]
            rows = [r for r in rows if r]
            if rows:
                lines += [f"| {kind} | help |", "|---|---|", *rows, ""]
        if name in EXAMPLES:
            lines += ["Examples:", "", "```bash", *EXAMPLES[name], "```", ""]
        if name in SEE_ALSO:
            page, title = SEE_ALSO[name]
            lines += [f"See also: [{title}](../{page}).", ""]
    return "\n".join(lines)


def _usage(cmd, name: str) -> str:
    import typer

    ctx = typer.Context(cmd, info_name=f"vae {name}")
    return " ".join(cmd.collect_usage_pieces(ctx)).join([f"vae {name} ", ""])


# -- the config tree ------------------------------------------------------------------------------


@dataclass
class Entry:
    key: str  # dotted
    value: str  # as written in the file ("" for a mapping)
    comment: str


_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w@/]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")


def parse_yaml_file(path: Path) -> tuple[str, list[str], list[Entry]]:
    """A conf file as (its header comment, its defaults list, its keys with value and comment).
    The conf files are plain mappings with scalar or flow-list values, one key a line."""
    header: list[str] = []
    defaults: list[str] = []
    entries: list[Entry] = []
    stack: list[tuple[int, str]] = []
    in_defaults = False
    started = False
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        if raw.lstrip().startswith("#"):
            if not started and not raw.startswith("# @package"):
                header.append(raw.lstrip("# ").rstrip())
            continue
        started = True
        if in_defaults and raw.lstrip().startswith("- "):
            defaults.append(raw.strip()[2:].split("#")[0].strip())
            continue
        m = _LINE.match(raw)
        if m is None:
            continue
        indent = len(m["indent"])
        in_defaults = m["key"] == "defaults" and indent == 0
        if in_defaults:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m["key"]])
        value = m["value"].strip()
        entries.append(Entry(key, value, (m["comment"] or "").strip()))
        if not value:
            stack.append((indent, m["key"]))
    return " ".join(header), defaults, entries


def _entry_rows(entries: list[Entry], prefix: str = "") -> list[str]:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for e in entries:
        value = f"`{e.value}`" if e.value else "*(a group of keys)*"
        rows.append(f"| `{prefix}{e.key}` | {_md(value) if e.value else value} | {_md(e.comment)} |")
    return rows


def config_page(conf: Path | None = None) -> str:
    if conf is None:
        from .config import config_dir

        conf = config_dir()
    header, defaults, entries = parse_yaml_file(conf / "config.yaml")
    lines = ["# Configuration reference", "",
             "Generated from `conf/` (`vaecli/reference.py`): every group, option, key, default and the comment "
             "beside it in the file. Set a key with `KEY=VALUE` and pick a group's option with `GROUP=OPTION` "
             "on the `vae train` command line ([Configuration](../guide/configuration.md) explains the syntax; "
             "`vae train --print-config` prints the composed result).", "",
             "## Top level (`conf/config.yaml`)", "", header, "",
             "The groups and their default options: " + ", ".join(f"`{d}`" for d in defaults), "",
             *_entry_rows(entries), ""]
    for group in sorted(p for p in conf.iterdir() if p.is_dir()):
        options = sorted(group.glob("*.yaml"))
        lines += [f"## `{group.name}=`", "", "Options: " + ", ".join(f"[`{o.stem}`](#{group.name}-{o.stem})"
                                                                     for o in options), ""]
        prefix = "" if group.name == "experiment" else f"{group.name}."
        for option in options:
            header, defaults, entries = parse_yaml_file(option)
            lines += [f"### {group.name}={option.stem} {{#{group.name}-{option.stem}}}", "", header, ""]
            if defaults:
                lines += ["Composes: " + ", ".join(f"`{d}`" for d in defaults), ""]
            if entries:
                lines += [*_entry_rows(entries, prefix), ""]
    for extra in sorted(p for p in conf.glob("*.yaml") if p.name != "config.yaml"):
        header, defaults, entries = parse_yaml_file(extra)
        lines += [f"## `{extra.name}`", "", header, ""]
        if defaults:
            lines += ["Composes: " + ", ".join(f"`{d}`" for d in defaults), ""]
        lines += [*_entry_rows(entries), ""]
    return "\n".join(lines)


# -- the --json objects ---------------------------------------------------------------------------


def json_page() -> str:
    from .cli import json_keys

    lines = ["# JSON output reference", "",
             "With `--json` a command prints exactly one JSON object on stdout (progress and notes go to stderr; "
             "NaN and infinity become `null`). Its keys are declared once, in `vaecli/cli/json_keys.py`, and this page "
             "is generated from there; the test suite runs every command with a check that refuses a key missing "
             "from the declaration. A key may be absent where it does not apply (the meaning says when).", ""]
    for schema in json_keys.schemas():
        keys = json_keys.declaration(schema)
        lines += [f"## vae {schema}", "", "| key | meaning |", "|---|---|"]
        lines += [f"| `{k}` | {_md(v)} |" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


def write(folder: Path) -> list[Path]:
    written = []
    for page, function in PAGES.items():
        path = Path(folder) / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(globals()[function]())
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs-generated")):
        print(p)
