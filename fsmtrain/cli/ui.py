"""``fsmtrain ui``: serve the local web page over a log (the page itself is :mod:`fsmtrain.ui`)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import echo, home_option

__all__ = ["ui"]


@click.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--allow-remote", is_flag=True, help="Allow a --host other machines can reach (plain HTTP: anyone with "
                                                   "the URL reads the log and answers gates).")
@click.option("--read-only", "read_only", is_flag=True, help="Never write: gate forms are shown disabled.")
@home_option
def ui(log: Path, port: int, host: str, allow_remote: bool, read_only: bool, home: str | None) -> None:
    """Serve a local web page over LOG: runs, curves, the graph, the timeline, the state, gates.

    Pages read the log read-only and follow running runs.  Every page needs the
    token in the URL printed at start (opening it once sets a cookie); a waiting
    run shows its gate's inputs as a form, checked like `fsmtrain input`.  Only
    loopback addresses are served unless --allow-remote is given.

    \b
    Example:
        fsmtrain ui runs.db --port 8765
    """
    import errno

    from ..ui import UI, is_loopback

    if not is_loopback(host) and not allow_remote:
        raise click.UsageError(f"--host {host} would serve the log to other machines; the page is meant for this one. "
                               "Pass --allow-remote to do so deliberately")
    app = UI(log, allow_remote=allow_remote, readonly=read_only, home=home)
    try:
        server = app.bind(host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise click.UsageError(f"port {port} on {host} is in use; pick another with --port") from None
        raise click.UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    if not is_loopback(host):
        bar = "!" * 78
        echo(f"{bar}\nWARNING: serving {log} to the network on {host}:{app.port} over plain HTTP.\n"
             "Anyone who can reach this port and learns the URL below can read the whole log and answer\n"
             "its gates; the token is the only protection and travels unencrypted. Prefer an SSH tunnel\n"
             f"(ssh -L {app.port}:127.0.0.1:{app.port} HOST) to a loopback server.\n{bar}", err=True)
    echo(f"fsmtrain ui on {log}: {app.url}   (Ctrl-C to stop)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        echo("\nstopped", err=True)
    finally:
        server.server_close()
