"""Each example runs, and rerunning it resumes rather than restarts."""

import subprocess
import sys

from fsmtrain import EventLog
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "gated_counter.py"


def run(*args, cwd):
    p = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_gated_counter_waits_then_takes_a_decision(tmp_path):
    log = tmp_path / "g.db"
    assert run(str(log), cwd=tmp_path).startswith("run 1: waiting after 3 steps; n=3")
    assert run(str(log), "no-go", cwd=tmp_path).startswith("run 1: waiting after 7 steps; n=6")
    assert run(str(log), "go", cwd=tmp_path).strip() == "run 1: finished after 9 steps; n=6, total=55"
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == [] and [r.status for r in lg.runs()] == ["finished"]
