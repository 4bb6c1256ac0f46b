"""Schema versions: a log written by an older fsmtrain (version 1, kept as test data) is read as it is, and
upgraded, with the upgrade recorded, by its first write; a newer version is refused untouched."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from fsmtrain import EventLog, Runner, give_input, state_at
from fsmtrain.errors import SchemaVersionError
from fsmtrain.log import SCHEMA_VERSION
from tests.conftest import ROOT, file_digest
from tests.machines import counter, flaky_machine, gated

V1 = ROOT / "tests" / "data" / "log-v1.sqlite"


@pytest.fixture
def v1(tmp_path):
    path = tmp_path / "v1.db"
    shutil.copy(V1, path)
    return path


def versions(path):
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in c.execute("SELECT version FROM fsmtrain_schema ORDER BY version")]
    finally:
        c.close()


class TestVersionOne:
    def test_it_reads_as_it_was_written(self, v1):
        digest = file_digest(v1)
        with EventLog(v1, readonly=True) as log:
            assert log.schema_version == 1 and log.verify() == []
            assert [(r.id, r.machine, r.status) for r in log.runs()] == [
                (1, "counter", "finished"), (2, "gated", "waiting"), (3, "flaky", "failed"), (4, "counter", "running"),
                (5, "counter", "running"), (6, "gated", "running")]
            assert state_at(log, 1)["result"] == 40 and log.run(5).parent_id == 1
            assert next(e for e in log.events(6) if e.kind == "input").info["by"] == "alice"
        assert file_digest(v1) == digest and versions(v1) == [1]

    def test_its_first_write_upgrades_it_and_says_so(self, v1):
        with EventLog(v1) as log:
            assert log.schema_version == 1
            give_input(log, 2, {"decision": "go"}, by="bob")
            assert log.schema_version == SCHEMA_VERSION
        assert versions(v1) == [1, SCHEMA_VERSION]
        with EventLog(v1) as log:
            r = Runner.resume(gated(), log, 2)
            assert r.run().reason == "finished"
            assert Runner.resume(counter(6), log, 4).run().reason == "finished"
            assert log.verify() == []

    def test_a_failed_v1_run_is_retried_with_a_v2_event(self, v1):
        from fsmtrain.runner import retry

        with EventLog(v1) as log:
            retry(log, 3, by="carol")
            assert log.run(3).status == "running"
            assert Runner.resume(flaky_machine(), log, 3).run().reason == "finished"
            assert log.verify() == []
        assert versions(v1)[-1] == SCHEMA_VERSION

    def test_a_newer_version_is_refused_and_left_untouched(self, v1):
        c = sqlite3.connect(v1)
        c.execute("DROP TRIGGER fsmtrain_schema_no_update")
        c.execute("INSERT INTO fsmtrain_schema VALUES (?, 0, 'future')", (SCHEMA_VERSION + 1,))
        c.commit()
        c.close()
        digest = file_digest(v1)
        for readonly in (True, False):
            with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
                EventLog(v1, readonly=readonly)
        assert file_digest(v1) == digest
