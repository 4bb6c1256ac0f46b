"""A run is not tied to one machine's disk: its home (a directory here; S3 in test_home_battery.py) receives
immutable segments, claims and checkpoints; a new machine pulls, verifies and continues bit for bit; one writer
across machines; a lost tail is recovered from the home or its loss accepted; network filesystems refused."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fsmtrain import EventLog
from fsmtrain.errors import CorruptLog, HomeBehind, HomeConflict, HomeError, LostTail, StorageError
from fsmtrain.log import _EVENT_COLS
from fsmtrain.log.segments import decode, first_of
from fsmtrain.log.store import DirStore, open_store
from fsmtrain.state import Ref
from fsmtrain.train import Trainer
from tests.conftest import ROOT, remount_read_only
from tests.machines.training import tiny_build, tiny_machine

CONFORMANCE = ROOT / "spec" / "conformance" / "02-set-and-append.jsonl"


def cli(*args, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FSMTRAIN_LOG_KEY", "FSMTRAIN_HOME"))}
    return subprocess.run([sys.executable, "-m", "fsmtrain", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


def counter(log: EventLog, n: int, run: int | None = None) -> None:
    """``n`` steps of a counter run (created when ``run`` is None), the last one ending it."""
    ev = log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick") if run is None else log.last_event(run)
    for i in range(n):
        ev = log.append(ev.run_id, ev.seq, kind="step", step=ev.step + 1, action="tick", updates={"set": {"n": i}},
                        next_action="tick" if i < n - 1 else None, prev_hash=ev.hash)


def home_rows(home: Path, run: int) -> list[tuple]:
    """Every event row the home holds of ``run``, from its segments (checked contiguous)."""
    folder = home / "runs" / str(run) / "events"
    rows: list[tuple] = []
    for name in sorted(os.listdir(folder)):
        first = first_of(name)
        assert first == len(rows) + 1, (name, len(rows))
        seg = decode((folder / name).read_bytes(), name, run, first)
        rows.extend(seg.rows)
    return rows


def local_rows(path: Path, run: int) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute(f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE run_id = ? ORDER BY seq", (run,)).fetchall()


def backup(src: Path, dst: Path) -> None:
    """A consistent copy of a live log (SQLite's online backup, as a backup job would take)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def metrics(state) -> dict:
    return {k: list(state[k]) for k in ("train_loss", "val_loss", "val_acc")} | {"w": state["weights_sha256"]}


class TestTheHome:
    def test_it_receives_the_runs_events_as_segments_and_the_files_they_name(self, tmp_path):
        home = tmp_path / "home"
        with Trainer(tiny_machine(3), tiny_build, log=tmp_path / "a.db", home=home) as t:
            runner = t.fit()
            state = runner.state
        assert home_rows(home, 1) == local_rows(tmp_path / "a.db", 1)  # every event, as stored
        for ref in (state["checkpoint"], state["best"]["checkpoint"]):
            assert isinstance(ref, Ref)
            assert (home / "artifacts" / ref.path).read_bytes() == (tmp_path / "a.db.artifacts" / ref.path).read_bytes()
        assert [p.name for p in home.rglob(".*")] == []  # no temp file left behind
        assert os.listdir(home / "runs" / "1" / "claims") == ["000001.json"]

    def test_segments_hold_the_conformance_row_format(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            counter(log, 3)
        lines = [json.loads(x) for x in (home / "runs/1/events/000000000001.jsonl").read_text().splitlines()]
        case = [json.loads(x) for x in CONFORMANCE.read_text().splitlines()]
        assert lines[0]["segment"] == {"format": 1, "run": 1, "first": 1, "last": 4, "claim": "000001.json"}
        assert set(lines[1]["run"]) == set(case[1]["run"])
        assert all(set(x["event"]) == set(case[2]["event"]) for x in lines[2:])

    def test_a_directory_home_is_made_and_a_file_is_not_a_home(self, tmp_path):
        with EventLog(tmp_path / "a.db", home=tmp_path / "x" / "y") as log:
            counter(log, 1)
        assert (tmp_path / "x" / "y" / "runs" / "1").is_dir()
        (tmp_path / "f").write_text("")
        with pytest.raises(HomeError, match="not a directory"):
            EventLog(tmp_path / "b.db", home=tmp_path / "f")
        with pytest.raises(HomeError, match="empty"):
            EventLog(tmp_path / "b.db", home=" ")
        with pytest.raises(HomeError, match="read-only"):
            EventLog(tmp_path / "a.db", home=tmp_path / "h", readonly=True)
        assert not (tmp_path / "b.db").exists()

    def test_create_if_absent_lets_exactly_one_of_many_threads_create_an_object(self, tmp_path):
        store = DirStore(tmp_path / "h")
        wins = []
        go = threading.Barrier(8)

        def race(i):
            go.wait()
            wins.append(store.create("k/claim.json", str(i).encode()))
        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins) == [False] * 7 + [True]
        assert store.get("k/claim.json") in {str(i).encode() for i in range(8)}

    def test_fsspec_urls_work_and_a_missing_fsspec_backend_is_named(self, tmp_path):
        pytest.importorskip("fsspec")
        with EventLog(tmp_path / "a.db", home="memory://fsmtrain-test/home") as log:
            counter(log, 2)
        with EventLog(tmp_path / "b.db", home="memory://fsmtrain-test/home") as log:
            assert local_rows(tmp_path / "b.db", 1) == local_rows(tmp_path / "a.db", 1)
        assert isinstance(open_store(f"file://{tmp_path}/h"), DirStore)
        with pytest.raises(HomeError, match="fsmtrain\\[cloud\\]|not a URL|needs"):
            open_store("nosuchprotocol://bucket/x")


class TestANewMachine:
    def test_a_run_continues_on_a_new_machine_bit_identically(self, tmp_path):
        want = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "ref.db").fit().state
        home = tmp_path / "home"
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with Trainer(tiny_machine(4), tiny_build, log=tmp_path / "a" / "r.db", home=home) as t:
            runner = t.start({})
            with runner:
                for _ in range(3):
                    runner.step()
        shutil.rmtree(tmp_path / "a")  # the node is gone, with its disk
        with Trainer(tiny_machine(4), tiny_build, log=tmp_path / "b" / "r.db", home=home) as t:
            got = t.fit()
            assert got.run_id == 1 and got.status == "finished"
            assert metrics(got.state) == metrics(want)
            assert t.log.verify() == []
            restored = [e.info["restore"] for e in t.log.events(1) if e.kind == "resume"]
            assert restored and "checkpoint" in restored[-1]  # fetched from the home, not redone from the start
        assert home_rows(home, 1) == local_rows(tmp_path / "b" / "r.db", 1)

    def test_pull_builds_a_verified_copy_with_the_checkpoints(self, tmp_path):
        home = tmp_path / "home"
        with Trainer(tiny_machine(2), tiny_build, log=tmp_path / "a.db", home=home) as t:
            state = t.fit().state
        p = cli("pull", home, tmp_path / "copy.db")
        assert p.returncode == 0, p.stderr
        assert "1 run(s)" in p.stdout
        assert local_rows(tmp_path / "copy.db", 1) == local_rows(tmp_path / "a.db", 1)
        best = state["best"]["checkpoint"]
        assert (tmp_path / "copy.db.artifacts" / best.path).read_bytes() == \
            (tmp_path / "a.db.artifacts" / best.path).read_bytes()
        assert cli("verify", tmp_path / "copy.db").returncode == 0
        assert cli("replay", tmp_path / "copy.db").returncode == 0

    def test_a_tampered_or_missing_segment_is_refused_and_nothing_is_taken(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home, barrier_every=3) as log:
            ev = log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick")
            for i in range(12):
                ev = log.append(1, ev.seq, kind="step", step=ev.step + 1, action="tick", updates={"set": {"n": i}},
                                next_action="tick" if i < 11 else None, prev_hash=ev.hash)
                if i == 5:
                    assert log.sync_home() == {}  # (shipped now: the rest goes in a later segment, however busy)
        names = sorted(os.listdir(home / "runs/1/events"))
        assert len(names) >= 2
        seg = home / "runs/1/events" / names[-1]
        lines = [json.loads(x) for x in seg.read_text().splitlines()]
        lines[-1]["event"]["updates"] = '{"set":{"n":12}}'  # (one value changed, every hash left as it was)
        seg.write_text("".join(json.dumps(x) + "\n" for x in lines))
        with pytest.raises(CorruptLog, match="does not match its hash"):
            EventLog(tmp_path / "b.db", home=home)
        assert local_rows(tmp_path / "b.db", 1) == local_rows(tmp_path / "a.db", 1)[:first_of(names[-1]) - 1]
        (home / "runs/1/events" / names[-1]).unlink()
        (home / "runs/1/events" / names[0]).unlink()
        with pytest.raises(CorruptLog, match="lacks run 1's events"):
            EventLog(tmp_path / "c.db", home=home)
        assert not (tmp_path / "c.db").exists()

    def test_a_log_that_went_on_without_the_home_is_not_mixed_with_it(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            counter(log, 2)
        backup(tmp_path / "a.db", tmp_path / "b.db")
        with EventLog(tmp_path / "b.db") as log:  # no home: it moves on alone
            ev = log.last_event(1)
            log.append(1, ev.seq, kind="stopped", step=ev.step, info={"by": "x", "at": 0, "reason": "r"})
        with EventLog(tmp_path / "a.db", home=home) as log:
            ev = log.last_event(1)
            log.append(1, ev.seq, kind="stopped", step=ev.step, info={"by": "y", "at": 1, "reason": "r"})
        with pytest.raises(HomeConflict, match="differ at event"):
            EventLog(tmp_path / "b.db", home=home)


class TestOneWriter:
    def test_a_later_claim_takes_the_run_and_the_earlier_writer_stops_naming_it(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            counter(log, 1)
            log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick")  # run 2 stays open
        a = EventLog(tmp_path / "a.db", home=home)
        b = EventLog(tmp_path / "b.db", home=home)
        try:
            a.take(2)
            b.take(2)  # (a requeued job on another node: the newest claim is the writer)
            ev = a.last_event(2)
            a.append(2, ev.seq, kind="step", step=1, action="tick", updates={"set": {"n": 1}}, next_action="tick",
                     barrier=True)
            a._ship.settle(30)
            assert isinstance(a._ship.lost, HomeConflict)
            with pytest.raises(HomeConflict, match=f"log {tmp_path / 'b.db'}"):
                a.append(2, ev.seq + 1, kind="step", step=2, action="tick", next_action="tick")
            ev = b.last_event(2)
            b.append(2, ev.seq, kind="step", step=1, action="tick", updates={"set": {"n": 7}}, next_action=None)
        finally:
            with pytest.raises(HomeConflict):
                a.close()
            b.close()
        assert [r[8] for r in home_rows(home, 2)] == [None, '{"set":{"n":7}}']

    def test_processes_sharing_one_log_are_one_writer(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            counter(log, 1)
            log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick")
        for i in range(3):  # (a worker, then an approve, then a worker...: the same log, one claim)
            with EventLog(tmp_path / "a.db", home=home) as log:
                ev = log.last_event(2)
                log.append(2, ev.seq, kind="step", step=i + 1, action="tick", next_action="tick")
        assert os.listdir(home / "runs/2/claims") == ["000001.json"]
        assert len(home_rows(home, 2)) == 4


class TestUnreachable:
    def test_training_goes_on_says_so_once_and_catches_up(self, tmp_path, small_disk, capfd):
        disk = small_disk("8m")
        home = disk / "home"
        want = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "ref.db").fit().state
        t = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "a.db", home=home)
        runner = t.start({})
        with runner:
            runner.step()
            t.log.barrier()
            t.log._ship.settle(30)
            remount_read_only(disk)
            for _ in range(4):
                runner.step()
                t.log.barrier()
            t.log._ship.settle(2)
            assert t.log._ship.failing
            err = capfd.readouterr().err
            assert err.count("cannot be reached") == 1 and "training goes on" in err
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            assert t.log._ship.settle(60)
            assert "is back" in capfd.readouterr().err
            runner.run()
        t.close()
        assert home_rows(home, 1) == local_rows(tmp_path / "a.db", 1)
        shutil.rmtree(tmp_path / "a.db.artifacts")
        os.unlink(tmp_path / "a.db")
        got = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "b.db", home=home).fit()
        assert metrics(got.state) == metrics(want)

    def test_close_waits_a_bounded_time_then_says_how_to_push_the_rest(self, tmp_path, small_disk):
        disk = small_disk("8m")
        home = disk / "home"
        log = EventLog(tmp_path / "a.db", home=home, home_timeout=0.5)
        counter(log, 1)
        remount_read_only(disk)
        log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick")
        with pytest.raises(HomeBehind, match="fsmtrain sync") as e:
            log.close()
        assert e.value.exit_code == 75
        p = cli("sync", tmp_path / "a.db", "--home", home, "--timeout", "0.5")
        assert p.returncode == 75 and "fsmtrain sync" in p.stderr and "Traceback" not in p.stderr
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        p = cli("sync", tmp_path / "a.db", "--home", home)
        assert p.returncode == 0 and "holds every event" in p.stdout, p.stderr
        assert home_rows(home, 2) == local_rows(tmp_path / "a.db", 2)


class TestRecover:
    def restored(self, tmp_path, home):
        """A run whose log was backed up early and its artifacts (with the witness) late, both restored."""
        with Trainer(tiny_machine(4), tiny_build, log=tmp_path / "a.db", home=home) as t:
            runner = t.start({})
            with runner:
                runner.step()
                runner.step()
                t.log.barrier()
                backup(tmp_path / "a.db", tmp_path / "backup.db")  # the nightly backup of the log...
                runner.run()
        shutil.copytree(tmp_path / "a.db.artifacts", tmp_path / "r" / "a.db.artifacts")
        (tmp_path / "r" / "a.db.artifacts" / "runs.lock").unlink(missing_ok=True)  # ...and later the rest
        shutil.copy(tmp_path / "backup.db", tmp_path / "r" / "a.db")
        return tmp_path / "r" / "a.db"

    def test_a_lost_tail_is_refused_naming_recover_then_taken_back_from_the_home(self, tmp_path):
        want = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "ref.db").fit().state
        log = self.restored(tmp_path, tmp_path / "home")
        with pytest.raises(LostTail, match="fsmtrain recover"):
            Trainer(tiny_machine(4), tiny_build, log=log).fit()
        p = cli("replay", log)
        assert p.returncode == 0
        p = cli("verify", log)
        assert p.returncode == 1 and "fsmtrain recover" in p.stderr
        p = cli("recover", log)
        assert p.returncode == 3 and "--accept-loss" in p.stderr and "Traceback" not in p.stderr
        p = cli("recover", log, "--home", tmp_path / "home")
        assert p.returncode == 0 and "nothing to recover" in p.stdout, p.stderr
        assert cli("verify", log).returncode == 0
        got = Trainer(tiny_machine(4), tiny_build, log=log).fit()
        assert metrics(got.state) == metrics(want)

    def test_without_a_home_an_accepted_loss_is_recorded_and_the_run_redoes_it(self, tmp_path):
        want = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "ref.db").fit().state
        log = self.restored(tmp_path, tmp_path / "home")
        shutil.rmtree(tmp_path / "home")
        p = cli("recover", log, "--accept-loss", "--comment", "restored the backup", env={"FSMTRAIN_USER": "ana"})
        assert p.returncode == 0 and "accepted" in p.stdout, p.stderr
        p = cli("verify", log)
        assert p.returncode == 0, p.stderr
        assert "accepted" in p.stdout and "ana" in p.stdout
        got = Trainer(tiny_machine(4), tiny_build, log=log).fit()
        assert metrics(got.state) == metrics(want)
        with EventLog(log, readonly=True) as lg:
            accepted = [e for e in lg.events(1) if e.kind == "resume" and "accepted_loss" in e.info]
            assert len(accepted) == 1
            note = accepted[0].info["accepted_loss"]
            assert note["by"] == "ana" and note["comment"] == "restored the backup" and note["lost"]["from"] > 1
            assert lg.verify() == []
        p = cli("recover", log, "--accept-loss")
        assert p.returncode == 0 and "nothing to recover" in p.stdout

    def test_recover_refuses_a_run_that_does_not_exist(self, tmp_path):
        with EventLog(tmp_path / "a.db") as log:
            counter(log, 1)
        p = cli("recover", tmp_path / "a.db", "--run", "5", "--accept-loss")
        assert p.returncode == 1 and "run 5" in p.stderr


class TestNetworkFilesystems:
    def test_a_writer_is_refused_naming_the_home_and_a_reader_reads(self, tmp_path, monkeypatch):
        from fsmtrain.log import files

        with EventLog(tmp_path / "a.db") as log:
            counter(log, 1)
        monkeypatch.setattr(files, "_filesystem_of", lambda path: "nfs4")
        monkeypatch.delenv("FSMTRAIN_ALLOW_NETWORK_FS", raising=False)
        with pytest.raises(StorageError, match="network filesystem.*--home"):
            EventLog(tmp_path / "b.db")
        assert not (tmp_path / "b.db").exists()
        with EventLog(tmp_path / "a.db", readonly=True) as log:
            assert log.last_event(1).seq == 2
        monkeypatch.setenv("FSMTRAIN_ALLOW_NETWORK_FS", "1")
        with pytest.warns(UserWarning, match="network filesystem"), EventLog(tmp_path / "b.db") as log:
            counter(log, 1)


class TestStudies:
    def test_a_study_and_its_trial_processes_ship_to_the_home(self, tmp_path):
        from fsmtrain.tune import LogUniform, Study

        home = tmp_path / "home"
        runner = Study(tmp_path / "s.db", "tests.machines.trials:trainer", {"lr": LogUniform(0.01, 0.5)}, n_trials=3,
                       max_concurrent=2, seed=1, config={"max_epochs": 2}, home=home).run()
        runner.log.close()
        assert runner.status == "finished"
        with EventLog(tmp_path / "s.db", readonly=True) as log:
            runs = [r.id for r in log.runs()]
        assert len(runs) == 4
        for r in runs:  # the study run and every trial, whole, from the processes that wrote them
            assert home_rows(home, r) == local_rows(tmp_path / "s.db", r)


class TestHostileInput:
    def test_every_mistake_is_one_line_and_a_non_zero_exit_and_nothing_is_written(self, tmp_path):
        (tmp_path / "file").write_text("x")
        cases = [
            (["pull", tmp_path / "nohome", tmp_path / "p.db"], 1, "holds no runs"),
            (["sync", tmp_path / "missing.db"], 2, "--home"),
            (["recover", tmp_path / "missing.db"], 2, "does not exist"),
            (["demo", "--log", tmp_path / "d.db", "--home", ""], 2, "empty"),
            (["demo", "--log", tmp_path / "d.db", "--home", tmp_path / "file"], 1, "not a directory"),
            (["approve", tmp_path / "missing.db", "1", "--home", tmp_path / "nohome"], 1, "does not exist"),
        ]
        for args, code, says in cases:
            p = cli(*args)
            assert p.returncode == code and says in p.stderr, (args, p.returncode, p.stderr)
            assert "Traceback" not in p.stderr + p.stdout
        assert sorted(x.name for x in tmp_path.iterdir()) == ["file"]  # no log, no home made by a refusal

    def test_a_segment_of_random_bytes_is_refused_in_one_line(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            counter(log, 2)
        (home / "runs/1/events/000000000001.jsonl").write_bytes(os.urandom(300))
        p = cli("pull", home, tmp_path / "b.db")
        assert p.returncode == 1 and "damaged" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (tmp_path / "b.db").exists()


class TestSharedHomes:
    def test_a_log_that_only_pulled_a_run_never_claims_it(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick")
        a = EventLog(tmp_path / "a.db", home=home)
        try:
            a.take(1)
            with EventLog(tmp_path / "c.db", home=home) as c:  # another machine pulls run 1 and makes run 2
                counter(c, 2)
            assert sorted(os.listdir(home / "runs/1/claims")) == ["000001.json"]
            ev = a.last_event(1)
            a.append(1, ev.seq, kind="step", step=1, action="tick", next_action=None)  # (a run's end: it waits)
            assert a._ship.lost is None
        finally:
            a.close()
        assert home_rows(home, 1) == local_rows(tmp_path / "a.db", 1)
        assert home_rows(home, 2) == local_rows(tmp_path / "c.db", 2)

    def test_two_processes_of_one_log_take_turns_without_a_false_conflict(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db", home=home) as log:
            log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="tick")
        one, two = EventLog(tmp_path / "a.db", home=home), EventLog(tmp_path / "a.db", home=home)
        try:
            for i in range(6):  # (a worker and an approve, say: the same log, turns under the run's lock)
                w = (one, two)[i % 2]
                ev = w.last_event(1)
                w.append(1, ev.seq, kind="step", step=i + 1, action="tick", next_action="tick", barrier=True)
                w._ship.settle(30)
            assert one._ship.lost is None and two._ship.lost is None
        finally:
            one.close()
            two.close()
        assert home_rows(home, 1) == local_rows(tmp_path / "a.db", 1)

    def test_a_log_ahead_of_its_home_ships_its_tail_when_opened_and_closed_without_writing(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db") as log:  # (written before it had a home, or while the home was away)
            counter(log, 5)
        with EventLog(tmp_path / "a.db", home=home):
            pass
        assert home_rows(home, 1) == local_rows(tmp_path / "a.db", 1)

    def test_recover_from_the_home_when_the_lost_tail_is_inside_the_first_segment(self, tmp_path):
        home = tmp_path / "home"
        with EventLog(tmp_path / "a.db") as log:
            counter(log, 3)
            backup(tmp_path / "a.db", tmp_path / "old.db")
        with EventLog(tmp_path / "a.db", home=home) as log:  # the whole run, one segment
            ev = log.last_event(1)
            assert ev.seq == 4
        assert len(os.listdir(home / "runs/1/events")) == 1
        os.replace(tmp_path / "old.db", tmp_path / "r.db")
        shutil.copytree(tmp_path / "a.db.artifacts", tmp_path / "r.db.artifacts")
        with EventLog(tmp_path / "r.db", readonly=True) as log:
            assert log.lost_tails() == {}  # (the backup was whole: take some of it away)
        with sqlite3.connect(tmp_path / "r.db") as c:
            c.execute("DROP TRIGGER events_no_delete")
            c.execute("DELETE FROM events WHERE seq > 2")
        with sqlite3.connect(tmp_path / "r.db") as c, sqlite3.connect(tmp_path / "a.db") as src:
            sql = src.execute("SELECT sql FROM sqlite_master WHERE name = 'events_no_delete'").fetchone()[0]
            c.execute(sql)
        p = cli("recover", tmp_path / "r.db", "--home", home)
        assert p.returncode == 0 and "nothing to recover" in p.stdout, p.stderr
        assert local_rows(tmp_path / "r.db", 1) == local_rows(tmp_path / "a.db", 1)

    def test_recover_with_a_home_that_cannot_be_reached_records_nothing(self, tmp_path):
        with EventLog(tmp_path / "a.db") as log:
            counter(log, 1)
        (tmp_path / "file").write_text("")
        p = cli("recover", tmp_path / "a.db", "--home", "s3://no-such-bucket-fsmtrain/x", "--accept-loss",
                env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                     "AWS_MAX_ATTEMPTS": "1"})
        if "fsspec" in p.stderr and "cloud" in p.stderr:
            pytest.skip("fsspec/s3fs not installed")
        assert p.returncode == 1 and "cannot be reached" in p.stderr and "nothing was recorded" in p.stderr, p.stderr


# -- a manifest (a sharded checkpoint) travels with the files it lists -------------------------------------------
def _bundle(root: Path, files: dict[str, bytes]) -> str:
    import hashlib

    (root / "run1" / "e1-abc.dcp").mkdir(parents=True)
    listed = []
    for name, data in files.items():
        (root / "run1" / "e1-abc.dcp" / name).write_bytes(data)
        listed.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    (root / "run1" / "e1-abc.dcp" / "manifest.json").write_text(json.dumps({"files": listed}))
    return "run1/e1-abc.dcp/manifest.json"


def test_a_manifest_is_shipped_after_its_files_and_fetched_before_them(tmp_path):
    import hashlib

    from fsmtrain.log.home import Home

    here, there = tmp_path / "here", tmp_path / "there"
    rel = _bundle(here, {".metadata": b"m" * 10, "__0_0.distcp": b"a" * 1000, "rank0.pt": b"r" * 7})
    home = Home.open(str(tmp_path / "home"))
    assert home.upload(here, rel) == 1017 + (here / rel).stat().st_size
    data = (here / rel).read_bytes()
    assert home.fetch(there, rel, hashlib.sha256(data).hexdigest(), len(data))
    for name in (".metadata", "__0_0.distcp", "rank0.pt", "manifest.json"):
        assert (there / "run1/e1-abc.dcp" / name).read_bytes() == (here / "run1/e1-abc.dcp" / name).read_bytes()

    # a home that lost a listed file gives nothing that looks complete: no manifest here
    shutil.rmtree(there)
    (tmp_path / "home" / "artifacts/run1/e1-abc.dcp/__0_0.distcp").unlink()
    with pytest.raises(CorruptLog, match="not run1/e1-abc.dcp/__0_0.distcp"):
        home.fetch(there, rel, hashlib.sha256(data).hexdigest(), len(data))
    assert not (there / rel).exists() and not list((there / "run1/e1-abc.dcp").glob("*.fetching"))


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path):
    from fsmtrain.log.home import manifest_files

    for bad in ("../../etc/passwd", "/etc/passwd", ""):
        (tmp_path / "x.dcp").mkdir(exist_ok=True)
        (tmp_path / "x.dcp/manifest.json").write_text(json.dumps({"files": [{"path": bad, "sha256": "0", "size": 1}]}))
        with pytest.raises(CorruptLog, match="outside its folder"):
            manifest_files(tmp_path, "x.dcp/manifest.json")
    (tmp_path / "x.dcp/manifest.json").write_text("[1, 2]")
    with pytest.raises(CorruptLog, match="not a manifest"):
        manifest_files(tmp_path, "x.dcp/manifest.json")
