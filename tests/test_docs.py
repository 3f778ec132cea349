"""The documentation: its generated reference against the code, `--help`, the README as a landing
page, the strict site build (and that a broken link fails it), `make docs` without the docs extra,
and every tutorial's commands, run at a tiny size (slow)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_mnist_root, vae

DOCS = REPO / "docs"
TUTORIALS = ["getting-started.md", *(f"tutorials/{p.name}" for p in sorted((DOCS / "tutorials").glob("*.md"))
                                     if p.name != "index.md"), "guide/own-networks.md"]


# -- the generated reference -----------------------------------------------------------------------


def _sections(page: str, level: str = "## ") -> dict[str, str]:
    """A page's sections by heading."""
    parts = re.split(rf"^{level}(.+)$", page, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_cli_reference_lists_every_command_and_option():
    import typer

    from vaecli import reference

    page = reference.cli_page()
    sections = _sections(page)
    commands = reference.commands()
    assert len(commands) >= 18
    for name, cmd in commands.items():
        section = sections[f"vae {name}"]
        assert f"[`vae {name}`](#vae-{name})" in page
        for param in cmd.params:
            if param.name == "help":
                continue
            if param.param_type_name == "option":
                for opt in param.opts:
                    assert f"`{opt}" in section or f" {opt}" in section, (name, opt)
            else:
                names, _ = param.get_help_record(typer.Context(cmd, info_name=f"vae {name}"))
                assert f"| `{names}` |" in section, (name, param.name)
            if getattr(param, "help", None):  # its help, as --help prints it
                assert reference._md(" ".join(param.help.split()))[:30] in section, (name, param.name)


def _flat_keys(tree, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        if k == "defaults" and not prefix:
            continue
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys += _flat_keys(v, prefix + f"{k}.")
    return keys


def test_config_reference_lists_every_group_option_and_key():
    from vaecli import reference

    conf = REPO / "conf"
    page = reference.config_page(conf)
    sections = _sections(page)
    files = 0
    for path in sorted(conf.rglob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        if path.parent == conf:
            heading = "Top level (`conf/config.yaml`)" if path.name == "config.yaml" else f"`{path.name}`"
            section, prefix = sections[heading], ""
        else:
            group = path.parent.name
            section = _sections(sections[f"`{group}=`"], "### ")[f"{group}={path.stem} {{#{group}-{path.stem}}}"]
            prefix = "" if group == "experiment" else f"{group}."
            assert f"[`{path.stem}`](#{group}-{path.stem})" in sections[f"`{group}=`"]
        for default in tree.get("defaults", []) if isinstance(tree, dict) else []:
            name = default if isinstance(default, str) else next(iter(default))
            assert str(name) in section, (path, default)
        for key in _flat_keys(tree):
            assert f"| `{prefix}{key}` |" in section, (path, key)
        files += 1
    assert files >= 50


def test_config_reference_rows_carry_the_files_default_and_comment():
    from vaecli.reference import parse_yaml_file

    header, defaults, entries = parse_yaml_file(REPO / "conf" / "dataset" / "mnist.yaml")
    row = {e.key: e for e in entries}["limit"]
    assert (row.value, row.comment) == ("null", "use only the first N training images")
    assert header and not defaults


def test_every_json_command_has_a_declaration_and_the_page_lists_it():
    from vaecli import reference
    from vaecli.cli import json_keys

    page = _sections(reference.json_page())
    with_json = [name for name, cmd in reference.commands().items()
                 if any("--json" in p.opts for p in cmd.params if p.param_type_name == "option")]
    assert set(with_json) <= set(json_keys.schemas())
    assert "train -m" in json_keys.schemas()
    for schema in json_keys.schemas():
        keys = json_keys.declaration(schema)
        assert keys, schema
        for key, meaning in keys.items():
            assert meaning.strip(), (schema, key)
            assert f"| `{key}` |" in page[f"vae {schema}"], (schema, key)
    # a dataclass summary is declared by its fields, each with its comment
    assert "test_elbo" in json_keys.declaration("train")
    assert json_keys.undeclared("train", {"test_elbo": 1.0, "no_such_key": 2}) == ["no_such_key"]


def test_an_undeclared_json_key_fails_under_the_check(monkeypatch, capsys):
    from vaecli.cli import output

    monkeypatch.setenv("VAECLI_CHECK_JSON", "1")
    output.emit({"out": "x.png", "n": 1}, True, schema="sample")
    assert json.loads(capsys.readouterr().out) == {"out": "x.png", "n": 1}
    with pytest.raises(AssertionError, match="surprise"):
        output.emit({"out": "x.png", "surprise": 1}, True, schema="sample")


def test_the_generated_pages_are_written_by_the_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaecli.reference", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for page in ("reference/cli.md", "reference/config.md", "reference/json.md"):
        assert (tmp_path / page).read_text().startswith("# ")
    assert "torch" not in result.stderr


# -- --help ---------------------------------------------------------------------------------------


def test_help_lists_whole_short_lines():
    from vaecli import reference
    from vaecli.cli.help import SHORT

    result = vae("--help", env=dict(os.environ, COLUMNS="80"))
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for name, cmd in reference.commands().items():
        assert SHORT[name] == cmd.get_short_help_str(200), name
        assert len(SHORT[name]) <= 56 and SHORT[name].endswith("."), name
    # the line issue 34 quoted, cut at an abbreviation's period, is whole now
    assert "FID and KID (Heusel et al.\n" not in result.stdout
    assert SHORT["eval-samples"] in result.stdout


def test_every_example_parses_and_every_see_also_page_exists():
    from vaecli import reference
    from vaecli.cli.help import EXAMPLES, SEE_ALSO

    commands = reference.commands()
    assert set(EXAMPLES) == set(commands) == set(SEE_ALSO)
    for name, examples in EXAMPLES.items():
        for line in examples:
            words = shlex.split(line)
            assert words[:2] == ["vae", name], line
            commands[name].make_context(f"vae {name}", words[2:])  # raises on an unknown option
    for page, title in SEE_ALSO.values():
        text = (DOCS / page).read_text()
        assert text.startswith(f"# {title}"), (page, title)


def test_a_commands_help_ends_with_examples_and_its_page():
    result = vae("eval-iwae", "--help", env=dict(os.environ, COLUMNS="100"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Examples:" in text and "vae eval-iwae --k 5000" in text
    assert "See also: docs/tutorials/likelihood.md (The likelihood and its bound)." in text


# -- the README -----------------------------------------------------------------------------------


def test_readme_is_a_landing_page_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make test" in text  # CI runs the README's test command
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10
    for link in local:
        assert (REPO / link).exists(), link


# -- the site ------------------------------------------------------------------------------------


def _mkdocs(config: Path, site: Path, cwd: Path = REPO):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_the_strict_build_passes_and_holds_the_generated_reference(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    result = _mkdocs(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    cli = (tmp_path / "site" / "reference" / "cli.html").read_text()
    assert 'id="vae-eval-iwae"' in cli and "--k" in cli
    assert 'id="dataset-mnist"' in (tmp_path / "site" / "reference" / "config.html").read_text()
    for page in TUTORIALS + ["index.md", "results/index.md", "ARCHITECTURE.md"]:
        assert (tmp_path / "site" / page.replace(".md", ".html")).exists(), page


@pytest.mark.parametrize("broken", ["[the guide](guide/no-such-page.md)", "[an anchor](guide/commands.md#no-such-heading)"])
def test_a_broken_link_fails_the_strict_build(tmp_path, broken):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "getting-started.md"
    page.write_text(page.read_text() + f"\nSee {broken}.\n")
    result = _mkdocs(copy / "mkdocs.yml", tmp_path / "site", cwd=copy)
    assert result.returncode != 0
    target = broken.split("(")[1].rstrip(")")
    assert target.split("#")[0] in result.stdout + result.stderr, result.stderr


def test_make_docs_without_the_docs_extra_says_which_to_install(tmp_path):
    """A python on which mkdocs cannot be imported stands for a machine without the extra."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    shadow = tmp_path / "shadow" / "mkdocs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'shadow'} exec {sys.executable} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    result = subprocess.run(["make", "-s", "-o", "install", "docs", f"BIN={bin_dir}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    # make's own "make[N]: *** ... Error 2" line aside (N > 0 when make runs inside make)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not re.match(r"make(\[\d+\])?: ", line)]
    assert lines == [f"make docs: the docs extra is not installed; run: {bin_dir}/pip install -e '.[docs]'"], lines
    assert not (tmp_path / "site").exists()


# -- the tutorials, run -------------------------------------------------------------------------


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """A page's fenced code blocks as (language, code, reason it is not tested or None)."""
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        before = [line for line in lines[:i] if line.strip()]
        note = re.match(r"<!-- not tested: (.+) -->", before[-1]) if before else None
        end = lines.index("```", i + 1)
        found.append((m[1], "\n".join(lines[i + 1:end]), note[1] if note else None))
        i = end + 1
    return found


def commands_of(code: str) -> list[str]:
    """A bash block's commands: its logical lines (continuations joined), comments and blanks left out."""
    return [line for line in code.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _calls(command: str) -> int:
    return len(re.findall(r"(?:^|[;\s])(?:vae|torchrun)\s", command.split(" # ")[0]))


def test_every_tutorial_block_is_tested_or_says_why_not():
    """The inventory: each page's commands, and which are not run (with the reason beside them)."""
    total, skipped = 0, []
    for name in TUTORIALS:
        for language, code, reason in blocks(DOCS / name):
            assert language in ("bash", "python", "text", "yaml", "console"), (name, language)
            if language != "bash":
                continue
            n = len(commands_of(code))
            total += n
            if reason:
                skipped += [(name, reason, n)]
    assert total >= 60
    assert sum(n for *_, n in skipped) <= 3, skipped
    print(f"tutorial commands: {total}, not run: {sum(n for *_, n in skipped)} {skipped}")


def _photos(folder: Path, n: int = 6) -> None:
    from PIL import Image
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        ramp = np.linspace(0, 255, 64, dtype=np.float32)
        pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (64, 1)), rng.uniform(0, 255, (64, 64))], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"photo{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("page", TUTORIALS)
def test_tutorial_runs(page, tmp_path):
    """The page's bash blocks in order, in one folder, each command at a tiny size (docs_shrink.py),
    under `set -euo pipefail`; then its Python blocks in the same folder."""
    found = blocks(DOCS / page)
    bash = [code for language, code, reason in found if language == "bash" and reason is None]
    python = [code for language, code, reason in found if language == "python" and reason is None]
    if not bash and not python:
        pytest.skip("no commands")
    work = tmp_path / "work"
    work.mkdir()
    make_mnist_root(tmp_path / "data")
    make_mnist_root(tmp_path / "data", "FashionMNIST")
    _photos(work / "photos")
    shutil.copytree(DOCS / "examples", work / "docs" / "examples")
    log = tmp_path / "commands.jsonl"
    shrink = REPO / "tests" / "docs_shrink.py"
    script = "\n".join(["set -euo pipefail",
                        f'vae() {{ "{sys.executable}" "{shrink}" vae "$@"; }}',
                        f'torchrun() {{ "{sys.executable}" "{shrink}" torchrun "$@"; }}', *bash])
    env = dict(os.environ, VAECLI_DATA=str(tmp_path / "data"), DOCS_LOG=str(log), WANDB_MODE="offline",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    ran = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert result.returncode == 0, (ran[-1:] if ran else None, result.stderr[-3000:])
    expected = sum(_calls(c) for code in bash for c in commands_of(code))
    assert len(ran) >= expected, (len(ran), expected)
    for code in python:
        done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (code, done.stderr[-3000:])
    print(f"{page}: {len(ran)} commands run, {len(python)} python blocks")
