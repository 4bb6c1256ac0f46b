"""``python -m tests.machines LOG LIMIT DELAY``: run the counter machine to the end (crash tests)."""

import json
import sys

from tests.machines import run_counter_to_end

print(json.dumps(run_counter_to_end(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))), flush=True)
