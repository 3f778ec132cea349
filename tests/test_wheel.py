"""A non-editable wheel install carries conf/ and works from any directory."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_conf_and_composes_from_another_directory(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("vaecli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    conf_files = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert all(f"vaecli/conf/{name}" in names for name in conf_files)
    assert "vaecli/cli/__init__.py" in names and not any(name.startswith("tests/") for name in names)

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                              str(target), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))  # the installed copy shadows the checkout
    code = ("import vaecli, vaecli.config as c; print(vaecli.__file__); print(c.config_dir()); "
            "print(c.load_config(['dataset=shapes', 'model=conv']).cfg.model.name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    package_file, conf_dir, model = out.stdout.split()
    assert package_file.startswith(str(target)) and conf_dir == str(target / "vaecli" / "conf")
    assert model == "conv"
    cli = subprocess.run([sys.executable, "-m", "vaecli", "train", "dataset=shapes", "--print-config"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "name: shapes" in cli.stdout, cli.stderr
