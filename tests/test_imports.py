"""The engine never loads torch: importing it in a fresh interpreter leaves torch out of sys.modules."""

import json
import subprocess
import sys

import pytest

ENGINE_MODULES = ["fsmtrain", "fsmtrain.cli", "fsmtrain.demo", "fsmtrain.log", "fsmtrain.replay", "fsmtrain.runner"]


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
