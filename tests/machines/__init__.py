"""Named fixture machines shared by the tests (importable by subprocesses too)."""

from __future__ import annotations

import os
import time
from typing import Any

from fsmtrain import Condition, Input, Machine, action, append, when


@action(reads=["n", "delay"], writes=["n", "history"])
def tick(state):
    """Count up and record the count: a deterministic step."""
    if state["delay"]:
        time.sleep(state["delay"])
    return {"n": state["n"] + 1, "history": append(state["n"] * 1.5)}


@action(reads=["n"], writes=["result"])
def done(state):
    return {"result": state["n"] * 10}


def counter(limit: int = 5) -> Machine:
    """tick -> tick ... until n == limit, then done."""
    return Machine(
        "counter", [tick, done],
        [("tick", "done", Condition(lambda s: s["n"] >= s["limit"], keys=["n", "limit"], name="n>=limit")),
         ("tick", "tick")],
        entry="tick", terminal=["done"], initial={"n": 0, "limit": limit, "delay": 0.0},
    )


@action(reads=["n"], writes=["n"])
def work(state):
    return {"n": state["n"] + 1}


@action(reads=["n"], writes=["decision", "comment", "rounds"],
        inputs=[Input("decision", choices=["go", "no-go"]), Input("comment", required=False)])
def review(state, decision, comment=None):
    return {"decision": decision, "comment": comment, "rounds": state["n"]}


@action(reads=["n"], writes=["shipped"])
def ship(state):
    return {"shipped": True}


def gated() -> Machine:
    """work -> review (a gate needing `decision`) -> ship on go, back to work on no-go."""
    return Machine(
        "gated", [work, review, ship],
        [("work", "review"), ("review", "ship", when(decision="go")), ("review", "work")],
        entry="work", terminal=["ship"], initial={"n": 0},
    )


FAIL_FILE = "FSMTRAIN_TEST_FAIL_FILE"


@action(reads=["n"], writes=["n"])
def flaky(state, resources=None):
    """Raises while the file named by $FSMTRAIN_TEST_FAIL_FILE holds a positive count (decremented per call)."""
    path = os.environ.get(FAIL_FILE)
    if path and os.path.exists(path):
        left = int(open(path).read() or 0)
        if left > 0:
            with open(path, "w") as f:
                f.write(str(left - 1))
            raise RuntimeError(f"flaky failure ({left} left)")
    return {"n": state["n"] + 1}


@action(reads=["n"], writes=[])
def stop(state):
    return None


def flaky_machine() -> Machine:
    return Machine("flaky", [flaky, stop], [("flaky", "stop", when(n=2)), ("flaky", "flaky")],
                   entry="flaky", terminal=["stop"], initial={"n": 0})


def run_counter_to_end(log_path: str, limit: int, delay: float, max_attempts: int = 1000) -> dict[str, Any]:
    """Start or resume the newest counter run in ``log_path`` and run it to the end (subprocess entry)."""
    from fsmtrain import EventLog, Runner

    m = counter(limit)
    with EventLog(log_path) as log:
        r = Runner.latest(m, log, max_attempts=max_attempts)
        if r is None:
            done_runs = [x for x in log.runs(machine="counter") if x.status == "finished"]
            if done_runs:
                return {"run_id": done_runs[-1].id, "status": "finished"}
            r = Runner.start(m, log=log, state={"delay": delay}, max_attempts=max_attempts)
        r.run()
        return {"run_id": r.run_id, "status": r.status}

