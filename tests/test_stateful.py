"""The engine against a tiny reference interpreter, on random machines, with Hypothesis.

Invariants after every rule: the runner's state equals the reference model's;
replaying the log gives the current state; sequence numbers are gapless; every
earlier State object still holds what it held when it was made; the log verifies.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fsmtrain import Condition, EventLog, Input, Machine, Runner, action, append, give_input, state_at
from fsmtrain.state import dumps

MOD = 97


def make_action(i: int, k: int, gated: bool):
    """Action a{i}: x <- (x * (i + 2) + k [+ g]) % 97, and record i in the trace."""
    def body(state, g=0):
        return {"x": (state["x"] * (i + 2) + k + g) % MOD, "trace": append(i)}

    return action(body, name=f"a{i}", reads=["x"], writes=["x", "trace"],
                  inputs=[Input("g", type=int, min=0, max=9)] if gated else [])


@action(reads=["x"], writes=["final"])
def end(state):
    return {"final": state["x"]}


@st.composite
def machine_specs(draw):
    n = draw(st.integers(1, 4))
    acts = []
    for i in range(n):
        acts.append({
            "k": draw(st.integers(0, 20)),
            "gated": draw(st.booleans()) if i > 0 else False,
            "mod": draw(st.integers(2, 5)),
            "rem": draw(st.integers(0, 1)),
            "target": "end" if i == n - 1 else draw(st.sampled_from([f"a{j}" for j in range(n)] + ["end"])),
        })
    return acts


def build(spec) -> Machine:
    n = len(spec)
    actions = [make_action(i, a["k"], a["gated"]) for i, a in enumerate(spec)] + [end]
    transitions = []
    for i, a in enumerate(spec):
        cond = Condition(lambda s, m=a["mod"], r=a["rem"]: s["x"] % m == r, keys=["x"], name=f"x%{a['mod']}=={a['rem']}")
        transitions.append((f"a{i}", a["target"], cond))
        transitions.append((f"a{i}", f"a{(i + 1) % n}"))
    return Machine("random", actions, transitions, entry="a0", terminal=["end"], initial={"x": 1, "trace": []})


class Reference:
    """The obviously correct interpreter: a dict and the spec, nothing else."""

    def __init__(self, spec):
        self.spec, self.state, self.at, self.status, self.steps = spec, {"x": 1, "trace": []}, "a0", "running", 0

    def needs_input(self) -> bool:
        return self.at != "end" and self.spec[int(self.at[1:])]["gated"]

    def step(self, g: int | None) -> None:
        if self.at == "end":
            self.state["final"] = self.state["x"]
            self.at, self.status = None, "finished"
        else:
            i = int(self.at[1:])
            a = self.spec[i]
            self.state["x"] = (self.state["x"] * (i + 2) + a["k"] + (g or 0)) % MOD
            self.state["trace"] = self.state["trace"] + [i]
            self.at = a["target"] if self.state["x"] % a["mod"] == a["rem"] else f"a{(i + 1) % len(self.spec)}"
            self.status = "running"
        self.steps += 1


class EngineVsReference(RuleBasedStateMachine):
    @initialize(spec=machine_specs(), snapshot_every=st.integers(1, 6))
    def setup(self, spec, snapshot_every):
        self.dir = Path(tempfile.mkdtemp())
        self.machine = build(spec)
        self.snapshot_every = snapshot_every
        self.log = EventLog(self.dir / "log.db")
        self.runner = Runner.start(self.machine, log=self.log, snapshot_every=snapshot_every)
        self.model = Reference(spec)
        self.history = [(self.runner.state, self.runner.state.to_json())]

    def teardown(self):
        if hasattr(self, "log"):
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @precondition(lambda self: self.model.status == "running")
    @rule()
    def step_without_input(self):
        result = self.runner.step()
        if self.model.needs_input():
            assert result is None and self.runner.status == "waiting"
            self.model.status = "waiting"
        else:
            assert result is not None and result.action == (self.model.at or "end")
            self.model.step(None)
            self.history.append((result.state, result.state.to_json()))

    @precondition(lambda self: self.model.status in ("running", "waiting") and self.model.needs_input())
    @rule(g=st.integers(0, 9))
    def step_with_input(self, g):
        result = self.runner.step(inputs={"g": g})
        assert result is not None and result.inputs == {"g": g}
        self.model.step(g)
        self.history.append((result.state, result.state.to_json()))

    @precondition(lambda self: self.model.status == "waiting")
    @rule(g=st.integers(0, 9))
    def input_from_another_process(self, g):
        with EventLog(self.log.path) as other:
            give_input(other, self.runner.run_id, {"g": g})
        self.restart()
        self.model.step(g)
        self.runner.step()  # the recorded input is used
        self.history.append((self.runner.state, self.runner.state.to_json()))

    @rule()
    def restart(self):
        """A new process: a new connection, a runner resumed from the log alone."""
        run_id = self.runner.run_id
        self.log.close()
        self.log = EventLog(self.dir / "log.db")
        self.runner = Runner.resume(self.machine, self.log, run_id, snapshot_every=self.snapshot_every)

    @invariant()
    def runner_matches_reference(self):
        if not hasattr(self, "runner"):
            return
        assert self.runner.state.to_json() == dumps(self.model.state)
        assert self.runner.steps == self.model.steps
        assert self.runner.status == self.model.status

    @invariant()
    def replaying_the_log_gives_the_current_state(self):
        if not hasattr(self, "runner"):
            return
        assert state_at(self.log, self.runner.run_id).to_json() == self.runner.state.to_json()

    @invariant()
    def sequences_are_gapless_and_the_log_verifies(self):
        if not hasattr(self, "runner"):
            return
        seqs = [e.seq for e in self.log.events(self.runner.run_id)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert self.log.verify() == []

    @invariant()
    def earlier_states_are_never_mutated(self):
        for state, text in getattr(self, "history", []):
            assert state.to_json() == text


EngineVsReference.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestEngineVsReference = EngineVsReference.TestCase
