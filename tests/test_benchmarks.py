"""The benchmark scripts run and end with one JSON line of figures (timings are not asserted)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_engine_benchmark_quick_run_prints_its_figures():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine.py"), "--quick"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("memory_us", "full_us", "normal_us", "floor_full_us", "floor_normal_us", "fold_1m_s", "list_10k_s",
                "append_10_us", "append_10k_us", "floor_full_busy_us"):
        assert isinstance(figures[key], float) and figures[key] > 0, key


def test_training_benchmark_quick_run_prints_its_figures():
    """It also asserts, inside, that fsmtrain and the raw loop end with bit-identical weights."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training.py"), "--quick"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("raw_epoch_s", "fsm_epoch_s", "raw_ckpt_epoch_s", "fsm_ckpt_epoch_s", "raw_ckpt_io_ms", "fsm_ckpt_io_ms"):
        assert isinstance(figures[key], float) and figures[key] > 0, key


def test_whatif_benchmark_quick_run_prints_its_figures():
    """It also asserts, inside, that whatif reports every recorded run stopped where max_epochs stopped it."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "whatif.py"), "--quick"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("whatif_s", "read_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, key


def test_tuning_benchmark_quick_run_prints_its_figures():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tuning.py"), "--quick"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("ms_per_trial", "ms_per_trial_normal", "speedup_2_workers"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
