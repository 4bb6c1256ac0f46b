"""Made once with fsmtrain at commit d1cafd5 (schema version 1): the test data of tests/test_schema.py."""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from fsmtrain import EventLog, Runner, fork
from tests.machines import counter, gated, flaky_machine, FAIL_FILE

path = sys.argv[1]
with EventLog(path) as log:
    Runner.start(counter(4), log=log, tags={"kind": "finished"}).run()           # run 1: finished
    r = Runner.start(gated(), log=log, tags={"kind": "waiting"}); r.run()       # run 2: waiting at review
    open("/tmp/fail", "w").write("9"); os.environ[FAIL_FILE] = "/tmp/fail"
    r = Runner.start(flaky_machine(), log=log, tags={"kind": "failed"}, max_attempts=2)
    try:
        r.run()
    except Exception as e:
        print("failed as planned:", type(e).__name__)                           # run 3: failed
    os.environ.pop(FAIL_FILE)
    r = Runner.start(counter(6), log=log, tags={"kind": "running"}); r.run(max_steps=3)   # run 4: running
    fork(log, 1, 3, updates={"limit": 7})                                          # run 5: fork of 1
    r = Runner.start(gated(), log=log, tags={"kind": "answered"}); r.run()
    from fsmtrain import give_input
    give_input(log, 6, {"decision": "go"}, by="alice", comment="v1 answer")        # run 6: answered gate
    print(log.verify())
