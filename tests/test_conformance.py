"""The conformance cases of spec/conformance/ (event streams with the expected fold, status and verdict),
each built into a real log file and read back through fsmtrain's readers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fsmtrain import EventLog
from fsmtrain.replay import state_at

SPEC = Path(__file__).resolve().parent.parent / "spec" / "conformance"
CASES = sorted(SPEC.glob("*.jsonl"))
EVENT_COLUMNS = ["run_id", "seq", "step", "time", "kind", "action", "attempt", "inputs", "updates", "next", "info",
                 "snapshot", "error", "prev_hash", "hash"]


def build(case: Path, db: Path) -> list[dict]:
    """Write the case's rows into a new log (schema made by fsmtrain's writer); its expectations."""
    lines = [json.loads(line) for line in case.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["schema_version"] == 2
    with EventLog(db) as log, log.transaction():
        pass  # (the schema)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for line in lines[1:]:
            if "expect" in line:
                continue
            if "run" in line:
                row = line["run"]
                conn.execute("INSERT INTO runs (id, machine, fingerprint, created, parent_id, parent_seq, tags) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", [row[k] for k in ("id", "machine", "fingerprint",
                                                                               "created", "parent_id", "parent_seq",
                                                                               "tags")])
            elif "event" in line:
                row = line["event"]
                conn.execute(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * 15)})",
                             [row[k] for k in EVENT_COLUMNS])
            elif "drop_trigger" in line:
                conn.execute(f"DROP TRIGGER {line['drop_trigger']}")
    finally:
        conn.close()
    return [line for line in lines if "expect" in line]


def test_there_are_enough_cases_and_they_are_what_the_generator_writes():
    assert len(CASES) >= 10
    p = subprocess.run([sys.executable, str(SPEC / "make_cases.py"), "--check"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_case(case, tmp_path):
    db = tmp_path / "case.db"
    expectations = build(case, db)
    kinds = {e["expect"] for e in expectations}
    assert "verify" in kinds  # every case states its verdict
    with EventLog(db, readonly=True) as log:
        for e in expectations:
            if e["expect"] == "state":
                assert state_at(log, e["run"], e["seq"]).to_json() == e["state"], (e["run"], e["seq"])
            elif e["expect"] == "status":
                assert log.run(e["run"]).status == e["status"], e["run"]
            elif e["expect"] == "verify":
                got = sorted(((p.code, p.run, p.seq) for p in log.check()), key=lambda p: (p[1] or 0, p[2] or 0, p[0]))
                want = [(p["code"], p["run"], p["seq"]) for p in e["problems"]]
                assert got == want, log.verify()
            else:
                raise AssertionError(f"unknown expectation {e['expect']!r}")


def test_an_intact_case_fails_when_one_stored_value_changes(tmp_path):
    """The cases are not vacuous: flipping one byte of a value in an intact case is caught."""
    case = SPEC / "02-set-and-append.jsonl"
    text = case.read_text(encoding="utf-8").replace('"loss\\":[0.25,0.125]', '"loss\\":[0.25,0.126]', 1)
    assert text != case.read_text(encoding="utf-8")
    forged = tmp_path / "forged.jsonl"
    forged.write_text(text, encoding="utf-8")
    build(forged, tmp_path / "forged.db")
    with EventLog(tmp_path / "forged.db", readonly=True) as log:
        assert [(p.code, p.run, p.seq) for p in log.check()] == [("hash", 1, 3)]
