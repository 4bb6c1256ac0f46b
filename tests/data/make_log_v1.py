"""How ``log-v1.sqlite`` was made, once, with fsmtrain at commit d1cafd5 (log schema version 1).

It is test data for tests/test_schema.py: later versions must keep reading it.  Kept for the
record; running it with today's code would write a newer schema.
"""

import os
import sys


def main(path: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from fsmtrain import EventLog, Runner, fork, give_input
    from tests.machines import FAIL_FILE, counter, flaky_machine, gated

    with EventLog(path) as log:
        Runner.start(counter(4), log=log, tags={"kind": "finished"}).run()             # run 1: finished
        Runner.start(gated(), log=log, tags={"kind": "waiting"}).run()                 # run 2: waiting at review
        with open("/tmp/fail", "w") as f:
            f.write("9")
        os.environ[FAIL_FILE] = "/tmp/fail"
        r = Runner.start(flaky_machine(), log=log, tags={"kind": "failed"}, max_attempts=2)
        try:
            r.run()                                                                    # run 3: failed
        except Exception as e:
            print("failed as planned:", type(e).__name__)
        os.environ.pop(FAIL_FILE)
        Runner.start(counter(6), log=log, tags={"kind": "running"}).run(max_steps=3)   # run 4: running
        fork(log, 1, 3, updates={"limit": 7})                                          # run 5: fork of run 1
        Runner.start(gated(), log=log, tags={"kind": "answered"}).run()
        give_input(log, 6, {"decision": "go"}, by="alice", comment="v1 answer")        # run 6: answered gate
        print(log.verify())


if __name__ == "__main__":
    main(sys.argv[1])
