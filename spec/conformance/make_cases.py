"""Writes the conformance cases of the fsmtrain event log (``spec/conformance/*.jsonl``).

Standalone on purpose: the hashes are computed here from the rules of ``spec/log.md`` (not with fsmtrain's
code), and every expected state, status and verdict below is written out by hand from the spec, so the
cases check an implementation instead of restating it.  Run ``python spec/conformance/make_cases.py`` to
write the files again (``--check`` says whether the files on disk are what this script writes).

The format of a case file is described in ``spec/log.md`` (*Conformance cases*).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
T0 = 1764633600.0  # 2025-12-02T00:00:00Z
F = "f" * 64


def canon(value: Any) -> str:
    """Canonical JSON text (spec/log.md, *JSON*): sorted keys, no spaces, UTF-8, NaN/Infinity tokens."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def run_hash(row: dict[str, Any]) -> str:
    doc = json.dumps([row["id"], row["machine"], row["fingerprint"], row["created"], row["parent_id"],
                      row["parent_seq"], row["tags"]], allow_nan=False)  # (ensure_ascii: Python's default, True)
    return hashlib.sha256(doc.encode()).hexdigest()


EVENT_FIELDS = ["run_id", "seq", "step", "time", "kind", "action", "attempt", "inputs", "updates", "next", "info",
                "snapshot", "error"]


def event_hash(prev_hash: str, row: dict[str, Any]) -> str:
    doc = json.dumps([prev_hash, *(row[k] for k in EVENT_FIELDS)], ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


DESCRIPTION = {"name": "counter", "entry": "tick", "terminal": ["done"],
               "actions": {"tick": {"reads": ["n"], "writes": ["n", "loss"], "inputs": []},
                           "done": {"reads": ["n"], "writes": ["final"], "inputs": []}},
               "transitions": [["tick", "done", "n_is_3"], ["tick", "tick", "default"]]}


class Case:
    def __init__(self, name: str, about: str) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = [{"case": name, "about": about, "schema_version": 2}]
        self.last: dict[int, tuple[int, int, str]] = {}  # run -> (seq, steps, hash)
        self.clock = T0

    def run(self, run_id: int, machine: str = "counter", *, parent: tuple[int, int] | None = None,
            tags: dict[str, Any] | None = None, created: float | None = None) -> None:
        self.clock += 1.0
        row = {"id": run_id, "machine": machine, "fingerprint": F,
               "created": self.clock if created is None else created,
               "parent_id": parent[0] if parent else None, "parent_seq": parent[1] if parent else None,
               "tags": canon(tags or {})}
        self.lines.append({"run": row})
        self.last[run_id] = (0, 0, run_hash(row))

    def event(self, run_id: int, kind: str, *, action: str | None = None, attempt: int | None = None,
              inputs: Any = None, updates: Any = None, next: str | None = None, info: Any = None,
              snapshot: Any = None, error: str | None = None, time: float | None = None,
              raw: dict[str, str] | None = None, prev_hash: str | None = None, emit: bool = True,
              edit: dict[str, Any] | None = None) -> str:
        """Append an event to the case (``raw``: column texts written as given instead of canonical JSON;
        ``prev_hash``: a chain broken on purpose; ``emit=False``: hashed into the chain but left out of the
        file (a lost event); ``edit``: columns changed after the hash was computed (a tampered event))."""
        seq, steps, prev = self.last[run_id]
        seq += 1
        steps += kind == "step"
        self.clock += 0.25
        texts = {k: (None if v is None else canon(v)) for k, v in
                 (("inputs", inputs), ("updates", updates), ("info", info), ("snapshot", snapshot))}
        texts.update(raw or {})
        row = {"run_id": run_id, "seq": seq, "step": steps, "time": self.clock if time is None else time,
               "kind": kind, "action": action, "attempt": attempt, "inputs": texts["inputs"],
               "updates": texts["updates"], "next": next, "info": texts["info"], "snapshot": texts["snapshot"],
               "error": error}
        row["prev_hash"] = prev if prev_hash is None else prev_hash
        row["hash"] = event_hash(row["prev_hash"], row)
        self.last[run_id] = (seq, steps, row["hash"])
        if edit:
            row.update(edit)
        if emit:
            self.lines.append({"event": row})
        return row["hash"]

    def step(self, run_id: int, action: str, updates: dict[str, Any] | None, next: str | None, **kw: Any) -> str:
        reason = {"condition": "default", "reason": "always"} if next is not None else None
        return self.event(run_id, "step", action=action, attempt=1, updates=updates, next=next,
                          info=kw.pop("info", reason), **kw)

    def start(self, run_id: int, state: dict[str, Any], next: str = "tick", **kw: Any) -> str:
        return self.event(run_id, "start", next=next, snapshot=state,
                          info=kw.pop("info", {"machine": DESCRIPTION}), **kw)

    def drop_trigger(self, name: str) -> None:
        self.lines.append({"drop_trigger": name})

    def state(self, run_id: int, seq: int, state: dict[str, Any]) -> None:
        self.lines.append({"expect": "state", "run": run_id, "seq": seq, "state": canon(state)})

    def status(self, run_id: int, status: str) -> None:
        self.lines.append({"expect": "status", "run": run_id, "status": status})

    def verify(self, *problems: tuple[str, int | None, int | None]) -> None:
        self.lines.append({"expect": "verify", "problems": [
            {"code": c, "run": r, "seq": s} for c, r, s in sorted(problems, key=lambda p: (p[1] or 0, p[2] or 0, p[0]))]})

    def text(self) -> str:
        return "".join(json.dumps(line, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"
                       for line in self.lines)


def cases() -> list[Case]:
    out = []

    c = Case("01-start", "A run with only its start event: its state is the start's snapshot; it is running.")
    c.run(1)
    c.start(1, {"n": 0, "loss": []})
    c.state(1, 1, {"n": 0, "loss": []})
    c.status(1, "running")
    c.verify()
    out.append(c)

    c = Case("02-set-and-append", "Updates fold in order: set replaces a key's value, append extends its list "
                                  "(creating a key that is missing); a step with null next ends the run.")
    c.run(1)
    c.start(1, {"n": 0, "loss": []})
    c.step(1, "tick", {"set": {"n": 1}, "append": {"loss": [0.5]}}, "tick")
    c.step(1, "tick", {"set": {"n": 2}, "append": {"loss": [0.25, 0.125]}}, "tick")
    c.step(1, "tick", {"set": {"n": 3}, "append": {"seen": ["a"]}}, "done")
    c.step(1, "done", {"set": {"final": 3, "n": None}}, None)
    c.state(1, 2, {"n": 1, "loss": [0.5]})
    c.state(1, 3, {"n": 2, "loss": [0.5, 0.25, 0.125]})
    c.state(1, 4, {"n": 3, "loss": [0.5, 0.25, 0.125], "seen": ["a"]})
    c.state(1, 5, {"n": None, "loss": [0.5, 0.25, 0.125], "seen": ["a"], "final": 3})
    c.status(1, "finished")
    c.verify()
    out.append(c)

    c = Case("03-snapshots", "The state after an event is the newest snapshot at or before it plus the updates "
                             "after that snapshot; a snapshot is the state after its event (its own updates are "
                             "already in it) and is taken as written, never recomputed from earlier events.")
    c.run(1)
    c.start(1, {"n": 0, "loss": []})
    c.step(1, "tick", {"set": {"n": 1}, "append": {"loss": [1.0]}}, "tick")
    c.step(1, "tick", {"set": {"n": 2}, "append": {"loss": [2.0]}}, "tick",
           snapshot={"n": 2, "loss": [1.0, 2.0], "note": "in the snapshot only"})
    c.step(1, "tick", {"set": {"n": 3}, "append": {"loss": [3.0]}}, "tick")
    c.step(1, "tick", {"append": {"loss": [4.0]}}, "tick")
    c.state(1, 2, {"n": 1, "loss": [1.0]})
    c.state(1, 3, {"n": 2, "loss": [1.0, 2.0], "note": "in the snapshot only"})
    c.state(1, 5, {"n": 3, "loss": [1.0, 2.0, 3.0, 4.0], "note": "in the snapshot only"})
    c.status(1, "running")
    c.verify()
    out.append(c)

    c = Case("04-values", "JSON values a state may hold: NaN and the infinities (as NaN, Infinity, -Infinity), "
                          "non-ASCII text (UTF-8, hashed unescaped), nested objects, null, a Ref; a machine "
                          "name and tags that are not ASCII (the run hash escapes them: Python's json.dumps "
                          "defaults); times that are not round numbers (hashed as the shortest repr).")
    c.run(1, "zähler ✓", tags={"owner": "José", "config": "a" * 64}, created=1764633601.1234567)
    ref = {"$ref": {"path": "run1/e00001-0123456789ab.pt", "sha256": "0123456789ab" + "0" * 52, "size": 1234}}
    c.start(1, {"n": 0, "loss": [], "text": "über"}, time=1764633601.7654321)
    c.step(1, "tick", {"set": {"n": 1, "checkpoint": ref, "nested": {"b": [1, {"c": None}], "a": True}},
                       "append": {"loss": [float("nan"), float("inf"), float("-inf"), -0.0, 1e-300]}}, "tick",
           time=1764633602.1)
    c.step(1, "tick", {"set": {"text": "naïve — 学習 🚀"}}, "tick", time=1764633602.2000000477)
    c.state(1, 2, {"n": 1, "loss": [float("nan"), float("inf"), float("-inf"), -0.0, 1e-300], "text": "über",
                   "checkpoint": ref, "nested": {"a": True, "b": [1, {"c": None}]}})
    c.state(1, 3, {"n": 1, "loss": [float("nan"), float("inf"), float("-inf"), -0.0, 1e-300],
                   "text": "naïve — 学習 🚀", "checkpoint": ref, "nested": {"a": True, "b": [1, {"c": None}]}})
    c.status(1, "running")
    c.verify()
    out.append(c)

    c = Case("05-gate", "A run waits at a gate, an input is given, the gated step takes it: waiting and input "
                        "events change no state; the run then finishes.")
    c.run(1)
    c.start(1, {"n": 0, "loss": []}, next="train")
    c.step(1, "train", {"set": {"n": 1}, "append": {"loss": [0.5]}}, "review")
    needs = [{"name": "decision", "type": "str", "required": True, "choices": ["go", "no-go"], "min": None,
              "max": None, "help": ""}]
    c.event(1, "waiting", action="review", info={"needs": needs, "missing": ["decision"],
                                                 "summary": {"epoch": None, "steps": 1, "metrics": {}}})
    c.event(1, "input", action="review", inputs={"decision": "go"}, info={"by": "ann", "at": T0 + 100})
    c.step(1, "review", {"set": {"decision": "go"}}, "export", inputs={"decision": "go"})
    c.step(1, "export", {"set": {"final_loss": 0.5}}, None)
    c.state(1, 3, {"n": 1, "loss": [0.5]})
    c.state(1, 4, {"n": 1, "loss": [0.5]})
    c.state(1, 5, {"n": 1, "loss": [0.5], "decision": "go"})
    c.state(1, 6, {"n": 1, "loss": [0.5], "decision": "go", "final_loss": 0.5})
    c.status(1, "finished")
    c.verify()
    out.append(c)

    c = Case("06-statuses", "A run's status is read from its last event.")
    s = {"n": 0}
    for r in range(1, 11):
        c.run(r)
        c.start(r, s)
    c.step(2, "tick", {"set": {"n": 1}}, None)                                   # finished
    c.event(3, "waiting", action="tick", info={"needs": [], "missing": ["x"], "summary": {}})   # waiting
    c.event(4, "error", action="tick", attempt=1, error="Traceback ...\nValueError: boom\n")     # running
    c.event(5, "error", action="tick", attempt=1, error="ValueError: boom")
    c.event(5, "failed", action="tick", attempt=2, error="ValueError: boom")     # failed
    c.event(6, "failed", action="tick", attempt=3, error="ValueError: boom")
    c.event(6, "retry", action="tick", info={"by": "ann", "at": T0 + 50})        # running again
    c.event(7, "stopped", action="tick", info={"by": "ann", "at": T0 + 60, "reason": "looks wrong"})
    c.event(8, "pruned", action="tick", info={"by": "study 1", "at": T0 + 70, "reason": "pruned by asha",
                                              "rule": "asha", "rung": 1, "value": 0.5})
    c.event(9, "resume", action="tick", attempt=1, info={"fingerprint": F, "pid": 4242, "interrupted": 0})
    c.step(10, "tick", {"set": {"n": 1}}, "tick")                                # running
    for r, st in enumerate(["running", "finished", "waiting", "running", "failed", "running", "stopped",
                            "pruned", "running", "running"], start=1):
        c.status(r, st)
    c.state(7, 2, {"n": 0})
    c.state(10, 2, {"n": 1})
    c.verify()
    out.append(c)

    c = Case("07-fork", "A fork is a new run whose row names its parent run and event; its start event's "
                        "snapshot is its whole initial state.")
    c.run(1)
    c.start(1, {"n": 0, "lr": 0.1})
    c.step(1, "tick", {"set": {"n": 1}}, "tick")
    c.step(1, "tick", {"set": {"n": 2}}, "tick")
    c.run(2, parent=(1, 2), tags={"forked": True})
    c.start(2, {"n": 1, "lr": 0.01}, info={"forked_from": {"run": 1, "seq": 2}, "updates": {"lr": 0.01}})
    c.step(2, "tick", {"set": {"n": 2}}, "tick")
    c.state(1, 3, {"n": 2, "lr": 0.1})
    c.state(2, 1, {"n": 1, "lr": 0.01})
    c.state(2, 2, {"n": 2, "lr": 0.01})
    c.status(1, "running")
    c.status(2, "running")
    c.verify()
    out.append(c)

    c = Case("08-tampered-value", "An event's updates were edited after it was written (0.5 became 0.05): its "
                                  "hash no longer matches its contents. Readers fold what is stored.")
    c.run(1)
    c.start(1, {"n": 0, "loss": []})
    c.step(1, "tick", {"set": {"n": 1}, "append": {"loss": [0.7]}}, "tick")
    c.step(1, "tick", {"set": {"n": 2}, "append": {"loss": [0.5]}}, "tick",
           edit={"updates": canon({"set": {"n": 2}, "append": {"loss": [0.05]}})})
    c.step(1, "tick", {"set": {"n": 3}, "append": {"loss": [0.4]}}, "done")
    c.state(1, 4, {"n": 3, "loss": [0.7, 0.05, 0.4]})
    c.status(1, "running")
    c.verify(("hash", 1, 3))
    out.append(c)

    c = Case("09-broken-chain", "Event 3 was replaced by another, self-consistent event whose prev_hash does not "
                                "name event 2; run 2 is intact.")
    c.run(1)
    first = c.start(1, {"n": 0})
    c.step(1, "tick", {"set": {"n": 1}}, "tick")
    c.step(1, "tick", {"set": {"n": 2}}, "tick", prev_hash=first)
    c.step(1, "tick", {"set": {"n": 3}}, "tick")
    c.run(2)
    c.start(2, {"n": 0})
    c.state(1, 4, {"n": 3})
    c.verify(("chain", 1, 3))
    out.append(c)

    c = Case("10-gap", "Event 3 was lost (written without the gapless trigger, which was dropped): the gap and "
                       "the broken link at event 4 are reported, and so is the missing trigger.")
    c.drop_trigger("events_gapless")
    c.run(1)
    c.start(1, {"n": 0})
    c.step(1, "tick", {"set": {"n": 1}}, "tick")
    c.step(1, "tick", {"set": {"n": 2}}, "tick", emit=False)
    c.step(1, "tick", {"set": {"n": 3}}, "tick")
    c.verify(("trigger", None, None), ("missing", 1, 3), ("chain", 1, 4))
    c.status(1, "running")
    out.append(c)

    c = Case("11-kinds", "A run whose first event is not a start, and an event of a kind no writer makes.")
    c.run(1)
    c.event(1, "step", action="tick", attempt=1, updates={"set": {"n": 1}}, next="tick")
    c.run(2)
    c.start(2, {"n": 0})
    c.event(2, "teleport", action="tick")
    c.verify(("not-start", 1, 1), ("kind", 2, 2))
    c.status(2, "running")
    out.append(c)

    c = Case("12-bad-json", "JSON columns that are not what writers make (with hashes that match them): "
                            "updates of another shape, info that is not an object, text that is not JSON.")
    c.run(1)
    c.start(1, {"n": 0})
    c.event(1, "step", action="tick", attempt=1, next="tick", raw={"updates": '{"set":{"n":1},"bump":{}}'})
    c.event(1, "step", action="tick", attempt=1, next="tick", raw={"updates": '{"set":{"n":2}}', "info": "[1,2]"})
    c.event(1, "step", action="tick", attempt=1, next="tick", raw={"updates": '{"set":'})
    c.verify(("json", 1, 2), ("json", 1, 3), ("json", 1, 4))
    out.append(c)

    c = Case("13-orphans", "A run without events, events of a run that does not exist, a parent that does not "
                           "exist (insert rows without enforcing foreign keys).")
    c.run(1)
    c.run(2, parent=(5, 1))
    c.start(2, {"n": 0})
    c.run(7)
    c.start(7, {"n": 0})
    c.lines = [line for line in c.lines if line.get("run", {}).get("id") != 7]
    c.verify(("no-events", 1, None), ("parent-missing", 2, None), ("orphan", 7, None))
    c.status(2, "running")
    out.append(c)
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for case in cases():
        path = HERE / f"{case.name}.jsonl"
        text = case.text()
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run python spec/conformance/make_cases.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
