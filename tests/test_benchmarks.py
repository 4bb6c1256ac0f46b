"""The benchmark scripts run and end with one JSON line of figures (timings are not asserted)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # (a long battery: run with --run-slow)

FIGURES = {
    "engine.py": ("memory_us", "full_us", "default_us", "floor_full_us", "floor_normal_us", "fold_1m_s", "list_10k_s",
                  "append_10_us", "append_10k_us", "floor_full_busy_us"),
    # training.py also asserts, inside, that fsmtrain and the raw loop end with bit-identical weights
    "training.py": ("raw_epoch_s", "fsm_epoch_s", "raw_ckpt_epoch_s", "fsm_ckpt_epoch_s", "raw_ckpt_io_ms",
                    "fsm_ckpt_io_ms", "fsm_default_epoch_s", "fsm_default_ckpt_epoch_s", "fsm_default_hooks_epoch_s",
                    "chunk_10ms_ratio", "chunk_50ms_ratio", "fsm_home_epoch_s", "home_ratio", "home_lag_s"),
    # whatif.py also asserts that whatif reports every recorded run stopped where max_epochs stopped it
    "whatif.py": ("whatif_s", "read_s"),
    # checkpoints.py also asserts that none, sync and async end with the same weights (lightning_s: null without it)
    "checkpoints.py": ("params", "none_s", "sync_s", "async_s", "torch_save_s", "async_ratio", "sync_vs_torch_save",
                       "stall_s", "sync_save_s", "peak_rss_mb", "checkpoint_mb"),
    # sharded.py also asserts that none, sync and async (FSDP2 on 2 ranks) end with the same weights
    "sharded.py": ("params", "none_s", "sync_s", "async_s", "stall_s", "sync_save_s", "checkpoint_mb", "rank_mb"),
    "tuning.py": ("ms_per_trial", "ms_per_trial_step", "speedup_2_workers", "study_1_s", "study_2_s"),
    # distributed.py also asserts that fsmtrain's 2-rank run and the raw DDP loop end with the same weights
    "distributed.py": ("raw_ddp2_epoch_s", "fsm_ddp2_epoch_s", "fsm_1proc_epoch_s", "ddp_ratio"),
}


@pytest.mark.parametrize("script", sorted(FIGURES))
def test_a_quick_run_prints_its_figures(script):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    for key in FIGURES[script]:
        assert isinstance(figures[key], float) and figures[key] > 0, key
