"""Fuzz the command line: every subcommand x hostile log files x hostile arguments (tests/fuzzing.py).

    python benchmarks/fuzz.py [--cases 10000] [--seed 0]

Prints, per command and per kind of log, how many cases ran and how they ended, then one JSON line:
``{"cases", "tracebacks", "changed_or_created", "problems", "seconds"}``.  Every case must hold every
promise (no traceback; a refusal or a reader leaves every file as it was and creates none): the run
exits 1 and lists the first problems otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzzing import KINDS, Verdict, case_folder, commands, library, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()
    verdicts: list[Verdict] = []
    t0 = time.perf_counter()
    with library() as base, tempfile.TemporaryDirectory(prefix="fsmtrain-fuzz-cases-") as scratch:
        case = Path(scratch) / "files"

        @seed(opts.seed)
        @settings(max_examples=opts.cases, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            kind = data.draw(st.sampled_from(KINDS))
            log = case_folder(base, kind, case)
            args = data.draw(commands(str(log), str(case / "out")))
            verdicts.append(run_case(args, kind, case))

        one()
    seconds = time.perf_counter() - t0
    by_command: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_kind: collections.Counter[str] = collections.Counter()
    for v in verdicts:
        by_command[v.command]["exit 0" if v.exit_code == 0 else "refused"] += 1
        by_kind[v.kind] += 1
    print(f"{'command':10s} {'cases':>6s} {'exit 0':>7s} {'refused':>8s}")
    for name in sorted(by_command):
        c = by_command[name]
        print(f"{name:10s} {sum(c.values()):6d} {c['exit 0']:7d} {c['refused']:8d}")
    print("logs: " + ", ".join(f"{k} {by_kind[k]}" for k in KINDS))
    problems = [v for v in verdicts if v.problem]
    tracebacks = sum(1 for v in problems if v.problem.startswith(("raised", "printed")))
    changed = sum(1 for v in problems if "changed or created" in v.problem)
    for v in problems[:20]:
        print(f"PROBLEM {v.command} on {v.kind}: {v.problem}")
    print(json.dumps({"cases": len(verdicts), "tracebacks": tracebacks, "changed_or_created": changed,
                      "problems": len(problems), "seconds": round(seconds, 1)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
