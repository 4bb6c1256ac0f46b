"""A log with a home (a layer of :class:`~fsmtrain.log.EventLog`): it pulls what the home holds beyond the local
file when it opens, takes a run in the home before it writes to it, ships what each barrier made durable on a
background thread, and waits for the home (at most ``home_timeout`` seconds) where a person was told something:
a gate's answer, a run's end, ``close``.  See spec/home.md."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import FsmtrainError, HomeBehind, HomeConflict, HomeError
from .home import Home
from .shipping import Shipper, _line
from .writing import _Writing

__all__ = ["HOME_TIMEOUT"]

HOME_TIMEOUT = 60.0
"""Default: how long a run's end, a gate's answer and ``close`` wait for the home."""


def _timeout(value: float | None) -> float:
    """``value``, or ``$FSMTRAIN_HOME_TIMEOUT``, or :data:`HOME_TIMEOUT` (checked)."""
    if value is None:
        text = os.environ.get("FSMTRAIN_HOME_TIMEOUT", "").strip()
        if not text:
            return HOME_TIMEOUT
        try:
            value = float(text)
        except ValueError:
            raise HomeError(f"FSMTRAIN_HOME_TIMEOUT must be a number of seconds, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise HomeError(f"home_timeout must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class _Homing(_Writing):
    """Shipping to a home (see the module)."""

    def __init__(self, path: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None, home_timeout: float | None = None,
                 **kw: Any) -> None:
        self.home: Home | None = None
        self._ship: Shipper | None = None
        self._taken: set[int] = set()
        self._me: dict[str, Any] | None = None
        self._late = False  # a wait for the home already ran out in this process
        self.home_timeout = _timeout(home_timeout) if home is not None else HOME_TIMEOUT
        if home is not None and kw.get("readonly"):
            raise HomeError("a log opened read-only has no home: it ships nothing (`fsmtrain pull HOME LOG` makes a "
                            "local copy of a home to read)")
        if home is not None and kw.get("durability") == "none":
            raise HomeError("a log with durability=\"none\" has no home: it makes nothing durable to ship")
        found = None
        if home is not None:
            found = Home.open(home, storage_options)
            if kw.get("create") is False and not Path(path).exists():
                try:
                    if found.runs():  # a new machine: the home holds the runs this command is about
                        kw["create"] = True
                except Exception as e:
                    if isinstance(e, FsmtrainError):
                        raise
        super().__init__(path, **kw)
        if found is None:
            return
        self.home = found
        self._ship = Shipper(found, self.path, self.artifacts)
        try:
            found.pull_all(self)
        except FsmtrainError:
            self.close()
            raise
        except Exception as e:  # unreachable: training does not wait for it
            self._unreachable(e)
            return
        ahead = {r: (s, h) for r, s, h in self._local_heads() if s > found.held.get(r, (0, None))[0]}
        if ahead:  # (a tail an earlier process could not ship, or runs made before the log had a home)
            self.barrier()  # (only what is durable here is shipped: the commits of the processes before this one)
            self._wake(ahead)

    def _wake(self, heads: dict[int, tuple[int, str]]) -> None:
        """Hand the shipper durable heads (from the writer's thread, which alone reads through this log's
        connections: the shipper has its own)."""
        assert self._ship is not None
        if self._ship.me is None:
            self._ship.me = self._writer()
        self._ship.wake(heads)

    def _local_heads(self) -> list[tuple[int, int, str]]:
        return self.conn.execute(
            "SELECT e.run_id, e.seq, e.hash FROM events e JOIN (SELECT run_id, max(seq) AS m FROM events GROUP BY "
            "run_id) t ON e.run_id = t.run_id AND e.seq = t.m").fetchall()

    def _unreachable(self, e: BaseException) -> None:
        assert self._ship is not None
        if self._ship.failing is None:
            self._ship.failing = _line(e)
            self._ship._say(f"fsmtrain: the home {self._ship.home.url} cannot be reached ({_line(e)}); training goes "
                            "on, and the home catches up when it is back")

    def take(self, run_id: int) -> None:
        """Before writing to ``run_id``: claim it in the home (one writer across machines) and pull what the home
        holds beyond this log.  Raises :class:`~fsmtrain.errors.HomeConflict` when another process has it; an
        unreachable home is left to the shipper, which claims it once the home is back."""
        if self._ship is None or run_id in self._taken:
            return
        self._taken.add(run_id)
        assert self.home is not None
        try:
            self.home.pull(self, run_id)  # (first: a run the home holds under this id must be this one)
            self._ship.me = self._writer()
            self.home.claim(self._ship.me, run_id)
            self.home.pull(self, run_id)  # (what another writer shipped before this claim)
        except FsmtrainError:
            raise
        except Exception as e:
            self._unreachable(e)

    def _writer(self) -> dict[str, Any]:
        """Who writes, as the home's claims name it: this machine's log file (the processes sharing it take turns
        under the run's local lock)."""
        if self._me is None:
            me = {"host": socket.gethostname(), "log": str(self.path.resolve()), "made": self._identity()}
            if me["made"] == "?":
                return me
            self._me = me
        return self._me

    def _home_wait(self) -> None:
        """Wait for the home where a person was told something (a gate's answer, a run's end)."""
        if self._ship is not None and self._ship.lost is None:
            self._late = not self._ship.settle(0.0 if self._late and self._ship.failing else self.home_timeout)

    def sync_home(self, timeout: float | None = None) -> dict[int, tuple[int, int]]:
        """Push every event of the log to the home now and wait (``timeout``, default ``home_timeout``) until it
        holds them; returns what it still lacks: ``{run: (home's seq, log's seq)}`` (empty: all there)."""
        if self._ship is None:
            raise HomeError(f"{self.path} has no home: give one (home=..., --home or $FSMTRAIN_HOME)")
        if self._rw is not None or self.path.exists():
            self.barrier()
        heads = {r: (s, h) for r, s, h in self._local_heads()}
        self._wake(heads)
        self._late = not self._ship.settle(self.home_timeout if timeout is None else timeout)
        if self._ship.lost is not None:
            raise self._ship.lost
        return self._ship.behind()

    def close(self) -> None:
        ship = self._ship
        behind: dict[int, tuple[int, int]] = {}
        try:
            if ship is not None and self._rw is not None and not self.durable:
                try:
                    self.barrier()  # (the last barrier wakes the shipper)
                except FsmtrainError:
                    pass  # (the closing below says it)
        finally:
            self._ship = None
            if ship is not None:
                ship.close(0.0 if self._late and ship.failing else self.home_timeout)
                behind = ship.behind() if ship.lost is None else {}
            super().close()
        if ship is not None and ship.lost is not None:
            raise ship.lost  # (another writer took a run: the home holds its history, not this process's tail)
        if behind and ship is not None:
            runs = ", ".join(f"run {r} (the home holds {h} of its {s} events)" for r, (h, s) in sorted(behind.items()))
            why = f" ({ship.failing})" if ship.failing else ""
            raise HomeBehind(f"{self.path} holds everything, but its home {ship.home.url} lacks the tail of {runs}: it "
                             f"could not be reached in {self.home_timeout:g} s{why}. `fsmtrain sync {self.path} --home "
                             f"{ship.home.url}` pushes it")

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except (HomeBehind, HomeConflict) as e:
            if exc[0] is None:
                raise
            if not (isinstance(exc[1], HomeError)):  # (the error being handled says it already)
                print(f"fsmtrain: {e}", file=sys.stderr, flush=True)  # (never over the error being handled)
