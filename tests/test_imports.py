"""The engine never loads torch: importing it in a fresh interpreter leaves torch out of sys.modules."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE_MODULES = sorted(f"fsmtrain.{p.stem}" for p in (ROOT / "fsmtrain").glob("*.py")
                        if p.stem not in ("__init__", "__main__")) + ["fsmtrain"] \
    + sorted(f"fsmtrain.cli.{p.stem}" for p in (ROOT / "fsmtrain" / "cli").glob("*.py")
             if p.stem not in ("__init__", "__main__")) + ["fsmtrain.cli"]


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_module_does_not_import_torch(module):
    """Importing an engine module does not load torch (sqlite-utils may load numpy; that is not ours)."""
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_cli_help_runs_without_torch():
    """`fsmtrain --help` works and never loads torch."""
    code = ("import sys; from click.testing import CliRunner; from fsmtrain.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_only_train_and_tune_import_torch():
    """Torch appears in no import line of the package outside fsmtrain/train/ and fsmtrain/tune/."""
    offenders = []
    for path in (ROOT / "fsmtrain").rglob("*.py"):
        rel = path.relative_to(ROOT / "fsmtrain").parts
        if rel[0] in ("train", "tune"):
            continue
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1 and words[1].split(".")[0] == "torch":
                offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []
