"""The command line against hostile log files and hostile arguments (see tests/fuzzing.py): no traceback,
a refusal changes no file and creates none, a reader never writes.  ``benchmarks/fuzz.py`` runs >= 10,000 cases."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import KINDS, case_folder, commands, library, run_case


@pytest.fixture(scope="module")
def hostile_logs():
    with library() as base:
        yield base


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_command_on_every_hostile_log_fails_well(hostile_logs, tmp_path_factory, data):
    kind = data.draw(st.sampled_from(KINDS), label="log")
    folder = tmp_path_factory.mktemp("case")
    log = case_folder(hostile_logs, kind, folder / "files")
    args = data.draw(commands(str(log), str(folder / "files" / "out")), label="command")
    verdict = run_case(args, kind, folder / "files")
    assert verdict.problem is None, (kind, args, verdict)
