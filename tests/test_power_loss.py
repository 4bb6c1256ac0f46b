"""Power losses, simulated: the log's files as a power loss (or a restored backup) leaves them resume to the
bit-identical end of the uninterrupted run, and retention never deletes a file such a log still names.

A training process (tests/machines/powerloss.py) copies its log at every barrier — the least that survives a power
loss at any later moment — and, at random moments between steps, that image beside the artifacts folder as it was
then.  This test also copies the log's files (db and WAL as they are) at random moments while it runs.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsmtrain import EventLog
from fsmtrain.errors import CorruptLog
from fsmtrain.train import Trainer
from tests.conftest import ROOT
from tests.machines.powerloss import MACHINE, copy_log, summary
from tests.machines.training import tiny_build

pytestmark = pytest.mark.slow  # (a long battery: run with --run-slow)


def canonical(value) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def resume(folder: Path) -> tuple[str, dict]:
    """Resume the run in ``folder`` to its end; its summary and what its (first) restore recorded."""
    trainer = Trainer(MACHINE, tiny_build, log=folder / "runs.db")
    try:
        runner = trainer.fit()
        assert runner.status == "finished"
        result = canonical(summary(runner.state))
        named = {Path(r.path).name for r in runner.state["checkpoints"]} | {Path(runner.state["best"]["checkpoint"].path).name}
    finally:
        trainer.close()
    with EventLog(folder / "runs.db") as log:
        assert log.verify() == []
        notes = [e.info.get("restore", {}) for e in log.events(1) if e.kind == "resume"]
        on_disk = {p.name for p in (log.artifacts / "run1").iterdir()}
    assert on_disk == named  # what the final state names, and nothing else (orphans of lost steps swept)
    return result, (notes[0] if notes else {})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Run the training process once, copying its log at random moments; everything it and this left."""
    out = tmp_path_factory.mktemp("powerloss")
    live = out / "live" / "runs.db"
    proc = subprocess.Popen([sys.executable, "-m", "tests.machines.powerloss", str(out), "7"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(3)
    copies, last = [], 0
    try:
        while proc.poll() is None:
            try:
                conn = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=5)
                try:  # a read transaction: no checkpoint restarts the WAL while the files are copied
                    conn.execute("BEGIN")
                    seq = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                    if seq > last and rng.random() < 0.7:  # progress observed: copy now
                        dst = out / f"copy-{len(copies) + 1:03d}"
                        copy_log(live, dst)
                        copies.append(dst)
                    last = max(last, seq)
                finally:
                    conn.close()
            except sqlite3.Error:
                pass  # (not created yet)
            time.sleep(rng.uniform(0.0, 0.01))
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    final = out / "live" / "runs.db.artifacts"
    return {"out": out, "copies": copies, "final": final, "want": canonical(json.loads((out / "final.json").read_text())),
            "made": json.loads(stdout.splitlines()[-1])}


def test_the_final_witness_refuses_a_log_from_an_earlier_moment(images, tmp_path):
    """Beside the final folder *with its witness*, an earlier image is what a restored backup is: refused, and
    verify says what was lost."""
    src = sorted(images["out"].glob("barrier-*"))[2]
    case = tmp_path / "restored"
    shutil.copytree(src, case)
    shutil.copytree(images["final"], case / "runs.db.artifacts")
    with EventLog(case / "runs.db", readonly=True) as log:
        assert any(p.code == "witness" and "but the witness saw event" in p.message for p in log.check())
    with pytest.raises(CorruptLog, match="witness saw"):
        Trainer(MACHINE, tiny_build, log=case / "runs.db").fit()


def test_retention_never_deleted_a_file_a_possibly_lost_prefix_names(images):
    cases = [*images["out"].glob("barrier-*"), *images["out"].glob("loss-*"), *images["copies"]]
    assert len(cases) >= 50  # the power losses the tests below resume
    checks = json.loads((images["out"] / "checks.json").read_text())
    assert len(checks) > 40 and all(c["named"] for c in checks[3:])
    assert [c for c in checks if c["missing"]] == []


def test_the_log_left_by_a_power_loss_resumes_with_the_files_of_that_moment(images, tmp_path):
    """The last barrier's image of the log beside the folder as it was: a checkpoint the log names is there
    (no fallback), the lost steps are redone, and the run ends bit-identical."""
    losses = sorted(images["out"].glob("loss-*"))
    assert len(losses) >= 15
    for src in losses:
        case = tmp_path / src.name
        shutil.copytree(src, case)
        result, note = resume(case)
        assert result == images["want"], src.name
        assert "fallback" not in note and "skipped" not in note, (src.name, note)


@pytest.mark.parametrize("kind", ["barrier", "copy"])
def test_a_log_from_any_moment_resumes_beside_the_final_folder(images, tmp_path, kind):
    """Barrier images (everything after the last barrier dropped) and copies taken at random moments, each
    resumed beside the finished run's folder (a restored backup): the checkpoints they name are gone, so the
    resume falls back to the newest one that verifies, or the start, and still ends bit-identical."""
    sources = sorted(images["out"].glob("barrier-*")) if kind == "barrier" else images["copies"]
    assert len(sources) >= (12 if kind == "barrier" else 15)
    for src in sources:
        case = tmp_path / src.name
        shutil.copytree(src, case)
        shutil.copytree(images["final"], case / "runs.db.artifacts")
        # the witness as it was at that moment (the final one saw more than this log holds, and says so)
        (case / "runs.db.artifacts" / "witness.jsonl").unlink()
        if (case / "witness.jsonl").exists():
            shutil.copyfile(case / "witness.jsonl", case / "runs.db.artifacts" / "witness.jsonl")
        result, _ = resume(case)
        assert result == images["want"], src.name
