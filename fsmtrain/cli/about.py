"""Commands about the installation and the machines rather than a log's runs: ``graph`` (a machine's graph)
and ``doctor`` (versions and settings)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from ..log import EventLog
from .common import echo
from .targets import load_machine

__all__ = ["doctor", "graph"]


@click.command()
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "svg"]), default="mermaid", show_default=True,
              help="svg runs Graphviz's `dot` (when installed) on the DOT text.")
def graph(target: str, fmt: str) -> None:
    """Print a machine's graph as Mermaid or Graphviz DOT text (or SVG, with Graphviz installed).

    TARGET is MODULE:ATTR naming a Machine (or a function returning one).

    \b
    Example:
        fsmtrain graph fsmtrain.train.demo:machine --format dot | dot -Tsvg > demo.svg
    """
    m = load_machine(target)
    if fmt == "svg":
        import shutil
        import subprocess

        dot = shutil.which("dot")
        if dot is None:
            raise click.UsageError("--format svg needs Graphviz's `dot` on PATH (e.g. apt install graphviz); "
                                   "--format dot prints the text to render elsewhere")
        out = subprocess.run([dot, "-Tsvg"], input=m.to_dot(), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise click.ClickException(f"dot failed: {out.stderr.strip()}")
        echo(out.stdout, nl=False)
        return
    echo(m.to_mermaid() if fmt == "mermaid" else m.to_dot(), nl=False)


@click.command()
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), help="Also inspect this log (read-only).")
def doctor(log_path: Path | None) -> None:
    """Print versions and settings that matter for a log's safety and speed.

    \b
    Example:
        fsmtrain doctor --log runs.db
    """
    import platform
    from importlib import metadata

    from .._version import __version__
    from ..log import _filesystem_of

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    echo(f"fsmtrain     {__version__}")
    echo(f"python       {platform.python_version()} ({sys.executable})")
    for pkg in ("attrs", "click", "sqlite-utils", "torch"):
        echo(f"{pkg:12s} {version(pkg)}")
    v = tuple(int(x) for x in sqlite3.sqlite_version.split("."))
    note = ""
    if (3, 7, 0) <= v < (3, 51, 3):
        note = "  (inside the range of SQLite's rare WAL-reset bug, fixed in 3.51.3; see sqlite.org/wal.html)"
    echo(f"sqlite       {sqlite3.sqlite_version}{note}")
    if log_path is not None:
        with EventLog(log_path, readonly=True) as lg:
            mode = lg.conn.execute("PRAGMA journal_mode").fetchone()[0]
            n = lg.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            echo(f"log          {log_path}: schema v{lg.schema_version}, journal {mode}, {n} run(s), "
                       f"filesystem {_filesystem_of(log_path) or 'unknown'}")
