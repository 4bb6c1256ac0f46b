"""The engine never loads torch: importing it in a fresh interpreter leaves torch out of sys.modules."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "fsmtrain").rglob("*.py")
    if p.stem != "__main__" and p.relative_to(ROOT / "fsmtrain").parts[0] not in ("train", "tune")
)


_IMPORT_EACH = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    out[name] = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
    if out[name]:
        break
print(json.dumps(out))
"""


def test_no_engine_module_imports_torch():
    """Importing each engine module in turn, in one fresh interpreter, never loads torch: the first module that
    did would be named with what it loaded (sqlite-utils may load numpy; that is not ours)."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *ENGINE_MODULES], capture_output=True, text=True,
                         check=True)
    loaded = json.loads(out.stdout)
    assert sorted(loaded) == ENGINE_MODULES
    assert {name: mods for name, mods in loaded.items() if mods} == {}


def test_cli_help_runs_without_torch():
    """`fsmtrain --help` works and never loads torch."""
    code = ("import sys; from click.testing import CliRunner; from fsmtrain.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_only_train_and_tune_import_torch():
    """Torch appears in no import line of the package outside fsmtrain/train/ and fsmtrain/tune/."""
    offenders = []
    for path in (ROOT / "fsmtrain").rglob("*.py"):
        rel = path.relative_to(ROOT / "fsmtrain").parts
        if rel[0] in ("train", "tune"):
            continue
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1 and words[1].split(".")[0] == "torch":
                offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []
