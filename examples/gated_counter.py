"""A small fsmtrain machine, top to bottom: count, ask a person, then finish or go again.

    python examples/gated_counter.py runs.db              # runs until the gate, then exits
    python examples/gated_counter.py runs.db go           # gives the decision and finishes
    python examples/gated_counter.py runs.db no-go        # ... or counts another round

Every invocation resumes the newest unfinished run in the log, so killing it at
any moment loses nothing: run it again.
"""

import sys

from fsmtrain import Condition, EventLog, Input, Machine, Runner, action, append, when

# -- config -------------------------------------------------------------------------
LOG = sys.argv[1] if len(sys.argv) > 1 else "gated_counter.db"
DECISION = sys.argv[2] if len(sys.argv) > 2 else None
ROUND = 3  # ticks per round


# -- actions: each reads and writes only what it declares -----------------------------
@action(reads=["n"], writes=["n", "history"])
def tick(state):
    return {"n": state["n"] + 1, "history": append(state["n"] ** 2)}


@action(reads=["n"], writes=["decision", "rounds"], inputs=[Input("decision", choices=["go", "no-go"])])
def review(state, decision):
    return {"decision": decision, "rounds": state["n"] // ROUND}


@action(reads=["history"], writes=["total"])
def finish(state):
    return {"total": sum(state["history"])}


# -- the machine: transitions are tried in order, the first that fires wins ----------
round_done = Condition(lambda s: s["n"] % ROUND == 0, keys=["n"], name=f"n % {ROUND} == 0")
machine = Machine(
    "gated_counter",
    [tick, review, finish],
    [("tick", "review", round_done), ("tick", "tick"),
     ("review", "finish", when(decision="go")), ("review", "tick")],
    entry="tick", terminal=["finish"], initial={"n": 0, "history": []},
)

# -- the run: resume the unfinished one, or start anew --------------------------------
if __name__ == "__main__":
    with EventLog(LOG) as log:
        runner = Runner.latest(machine, log) or Runner.start(machine, log=log)
        inputs = {"decision": DECISION} if DECISION and runner.status == "waiting" else None
        try:
            halt = runner.run(inputs=inputs)
        except KeyboardInterrupt:
            print(f"\ninterrupted: run {runner.run_id} keeps its {runner.steps} committed steps in {LOG}; run this "
                  "script again to continue it", file=sys.stderr)
            sys.exit(130)
        print(f"run {runner.run_id}: {halt.reason} after {runner.steps} steps; n={runner.state['n']}"
              + (f", total={runner.state['total']}" if runner.status == "finished" else ""))
        if halt.reason == "waiting":
            print(f"  waiting at `{halt.action}`: run again with `go` or `no-go`")
