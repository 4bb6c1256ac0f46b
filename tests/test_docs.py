"""Every example in the README actually runs: its Python blocks and its fsmtrain commands."""

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL)


@pytest.mark.parametrize("code", blocks("python"))
def test_readme_python_blocks_run(tmp_path, code):
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    if "print(halt.reason" in code:
        assert p.stdout.splitlines()[0] == "waiting review"
        assert p.stdout.splitlines()[1].startswith("finished 0.333")


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    """The demo, then every `fsmtrain ...` line of the README's bash blocks, exit 0."""
    commands = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    commands = [c.split("&&")[-1].strip() for c in commands if "fsmtrain " in c]
    assert commands[0] == "fsmtrain demo --log runs.db" and len(commands) >= 6
    exe = [sys.executable, "-m", "fsmtrain"]
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == "fsmtrain"
        p = subprocess.run(exe + argv[1:], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0, (cmd, p.stderr)


def test_readme_test_command_is_what_ci_runs():
    """CI runs the README's test command as it is, then the long batteries it skips."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert blocks("bash")[0].strip().splitlines()[-1] == "python -m pytest"
    assert "python -m pytest" in lines
    assert any(line.startswith("python -m pytest --run-slow -m slow") for line in lines)
