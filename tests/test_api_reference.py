"""The API reference: every public name (the names in the public modules' ``__all__``) and each of its public
methods has a docstring, so the reference generated from them (``pdoc``, built in CI) leaves nothing blank."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PUBLIC = ["fsmtrain", "fsmtrain.train", "fsmtrain.tune", "fsmtrain.log", "fsmtrain.stopping", "fsmtrain.hooks",
          "fsmtrain.trackers", "fsmtrain.testing", "fsmtrain.whatif", "fsmtrain.replay", "fsmtrain.worker",
          "fsmtrain.errors"]
"""The modules whose ``__all__`` is the public API (the reference documents these)."""


def _doc(cls: type, name: str, member: object) -> str:
    f = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
    doc = (getattr(f, "__doc__", None) or "").strip()
    for base in cls.__mro__[1:]:  # an override is documented where the method is declared
        if doc:
            break
        declared = base.__dict__.get(name)
        doc = (getattr(declared, "__doc__", None) or "").strip() if declared is not None else ""
    return doc


def undocumented() -> list[str]:
    missing = set()
    for m in PUBLIC:
        mod = importlib.import_module(m)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            where = f"{getattr(obj, '__module__', m)}.{getattr(obj, '__qualname__', name)}"
            if inspect.isclass(obj):
                if not (obj.__dict__.get("__doc__") or "").strip():
                    missing.add(where)
                if issubclass(obj, BaseException):
                    continue
                for mname, member in vars(obj).items():
                    callable_like = inspect.isfunction(member) or isinstance(member, (property, classmethod,
                                                                                      staticmethod))
                    if not mname.startswith("_") and callable_like and not _doc(obj, mname, member):
                        missing.add(f"{where}.{mname}")
            elif callable(obj) and not (getattr(obj, "__doc__", None) or "").strip():
                missing.add(where)
    return sorted(missing)


def test_every_public_name_and_method_has_a_docstring():
    assert undocumented() == []


@pytest.mark.slow
def test_the_reference_builds(tmp_path):
    pytest.importorskip("pdoc", reason="the optional `docs` extra (installed by CI)")
    p = subprocess.run([sys.executable, "-m", "pdoc", "-o", str(tmp_path), *PUBLIC], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    assert {"fsmtrain.html", "fsmtrain/train.html", "fsmtrain/tune.html", "fsmtrain/log.html"} <= pages, pages
    assert "loss_fn" in (tmp_path / "fsmtrain" / "train.html").read_text()
    shutil.rmtree(tmp_path)


def test_whatif_help_lists_every_condition_function_with_its_arguments():
    from click.testing import CliRunner

    from fsmtrain.cli import main
    from fsmtrain.stopping import CONDITIONS

    text = CliRunner().invoke(main, ["whatif", "--help"]).output
    for name in CONDITIONS:
        assert f"{name}(" in text, name
    assert "threshold_mode='abs'" in text and "setting('key')" in text
