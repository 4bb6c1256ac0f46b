"""A torch-free gated machine for the gate and worker tests.

``work`` three times, then the ``review`` gate: go → ``polish`` five times → ``done``;
no-go → three more ``work`` steps and the gate again.  ``delay`` seconds of sleep per
work/polish step give a worker something to be killed in the middle of.
"""

from __future__ import annotations

import time

from fsmtrain import Condition, Input, Machine, action, append, gate, when


@action(reads=["n", "delay"], writes=["n", "history"])
def work(state):
    time.sleep(state["delay"])
    return {"n": state["n"] + 1, "history": append(state["n"] ** 2)}


@action(reads=["polished", "history", "delay", "scale"], writes=["polished", "history"])
def polish(state):
    time.sleep(state["delay"])
    return {"polished": state["polished"] + 1, "history": append(state["history"][-1] * state["scale"] + state["polished"])}


@action(reads=["history"], writes=["total"])
def done(state):
    return {"total": sum(state["history"])}


review = gate("review", inputs=[Input("scale", type="int", required=False, min=1, max=10)])

round_done = Condition(lambda s: s["n"] % 3 == 0, keys=["n"], name="n % 3 == 0")
polished = Condition(lambda s: s["polished"] >= 5, keys=["polished"], name="polished >= 5")


@action(reads=["scale"], writes=["scale"], inputs=[])
def settle(state):
    return {"scale": state["scale"] or 2}


machine = Machine(
    "reviewed",
    [work, review, settle, polish, done],
    [("work", "review", round_done), ("work", "work"),
     ("review", "settle", when(decision="go")), ("review", "work"),
     ("settle", "polish"),
     ("polish", "done", polished), ("polish", "polish")],
    entry="work", terminal=["done"],
    initial={"n": 0, "history": [], "polished": 0, "delay": 0.0, "decision": None, "comment": None, "scale": None},
)


def notify():
    """A hook for `fsmtrain worker --hook tests.machines.approval:notify`: lines to $GATES_FILE."""
    import os

    from fsmtrain import Notify

    return Notify(os.environ["GATES_FILE"])
