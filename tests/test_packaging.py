"""What a wheel holds: every package of the source tree and its data files (a module missing from the package list
would import from a checkout and fail after `pip install`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)


def source_packages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fsmtrain").rglob("__init__.py")}


def test_every_package_of_the_tree_is_listed_in_pyproject():
    """`[tool.setuptools] packages` names each folder of fsmtrain/ that holds an __init__.py, and nothing else."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["packages"]) == source_packages()


def test_every_package_data_file_exists():
    """Each file named in package-data is in the tree (a renamed file would silently leave the wheel)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package, files in config["tool"]["setuptools"]["package-data"].items():
        folder = ROOT.joinpath(*package.split("."))
        for name in files:
            assert (folder / name).is_file(), f"{package}: {name}"


@pytest.mark.slow
def test_a_built_wheel_holds_every_module_and_data_file(tmp_path):
    """`pip wheel .` builds a wheel with every .py file of fsmtrain/ and its data files."""
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    (wheel,) = tmp_path.glob("fsmtrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fsmtrain").rglob("*.py")}
    expected |= {"fsmtrain/py.typed", "fsmtrain/ui.js", "fsmtrain/ui.css", "fsmtrain/train/data/digits.bin.gz"}
    assert expected - names == set()
