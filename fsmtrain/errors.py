"""Every error fsmtrain raises.

One base class, :class:`FsmtrainError`; each subclass also inherits the built-in
exception a user would already catch (``ValueError``, ``LookupError``...).
Messages say what happened, where, and how to fix it.  ``exit_code`` is what the
CLI exits with when the error reaches it.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterable


class FsmtrainError(Exception):
    """Base class of every fsmtrain error."""

    exit_code = 1


# --- definition time -------------------------------------------------------------


class InvalidDefinition(FsmtrainError, ValueError):
    """A machine, action or condition is defined wrongly; lists every problem found."""

    exit_code = 2

    def __init__(self, what: str, problems: Iterable[str]) -> None:
        self.what = what
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{what} is invalid ({len(self.problems)} problem(s)):\n{lines}")


class UnknownAction(FsmtrainError, LookupError):
    """An action name (from code or from the log) does not exist in the machine."""

    def __str__(self) -> str:  # LookupError would wrap the message in quotes
        return str(self.args[0])


# --- run time ----------------------------------------------------------------------


class UndeclaredWrite(FsmtrainError, ValueError):
    """An action returned an update for a key it does not declare in ``writes``."""


class UndeclaredRead(FsmtrainError, KeyError):
    """An action read a state key it does not declare in ``reads``."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnserializableValue(FsmtrainError, TypeError):
    """A value written to state is not a JSON value or a :class:`~fsmtrain.Ref`."""


class InvalidInput(FsmtrainError, ValueError):
    """Input given to an action does not match its declared inputs."""

    exit_code = 2


class ExpressionError(FsmtrainError, ValueError):
    """A condition expression (``fsmtrain whatif --condition``) is not valid; the message points at the part."""

    exit_code = 2


class MetricNotRecorded(FsmtrainError, LookupError):
    """A condition reads a metric that the run never recorded."""

    exit_code = 2

    def __str__(self) -> str:  # LookupError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class NoTransition(FsmtrainError, RuntimeError):
    """No transition out of a non-terminal action matched the state."""


class ConditionError(FsmtrainError, RuntimeError):
    """A condition raised while it was being evaluated."""


class ActionFailed(FsmtrainError, RuntimeError):
    """An action raised on every allowed attempt; the run is marked failed."""


class RunNotRunnable(FsmtrainError, RuntimeError):
    """The run is finished, failed, stopped or waiting for input, so it cannot step."""


class RunFailed(FsmtrainError, RuntimeError):
    """The run to continue is failed; it is continued only deliberately (``fsmtrain retry``)."""


class RunBusy(FsmtrainError, RuntimeError):
    """Another process is running this run (it holds the run's lock)."""


class MetricError(FsmtrainError, ValueError):
    """A metric (or the loss) raised on the outputs and targets it was given.  Deterministic: the same batch
    raises again, so it is not retried; nothing of the step is written and the run stays resumable."""

    exit_code = 2


class CheckpointError(FsmtrainError, RuntimeError):
    """A checkpoint file is missing, does not match its recorded hash, or is not plain data."""


class ResourceError(FsmtrainError, RuntimeError):
    """The user's resource factory raised or returned something unusable."""


class RestoreFailed(FsmtrainError, RuntimeError):
    """Live resources could not be brought back to the run's last committed step."""


class HookFailed(FsmtrainError, RuntimeError):
    """A hook that declared itself fatal raised; the log is intact."""


# --- the log -----------------------------------------------------------------------


class LogError(FsmtrainError):
    """Base class of the event log's errors."""


class NotALog(LogError, ValueError):
    """The file is not SQLite, is empty, or is SQLite without fsmtrain's tables."""


class SchemaVersionError(LogError, RuntimeError):
    """The log was written by a newer fsmtrain whose schema this one does not know."""


class RunNotFound(LogError, LookupError):
    """No run with that id exists in the log."""

    def __str__(self) -> str:
        return str(self.args[0])


class EventNotFound(LogError, LookupError):
    """No event with that sequence number exists in the run."""

    def __str__(self) -> str:
        return str(self.args[0])


class WriteConflict(LogError, RuntimeError):
    """Another writer appended to this run since this one last read it."""


class ReadOnlyLog(LogError, PermissionError):
    """A write was attempted on a log opened read-only."""


class MachineMismatch(LogError, RuntimeError):
    """The machine given to resume differs from the one that wrote the run."""


class CorruptLog(LogError, RuntimeError):
    """The log fails verification (integrity, sequence gaps or hash chain), or holds data no writer makes."""


class LostTail(CorruptLog):
    """The log holds less of a run than its witness (or its home) saw: an older copy, a deleted ``-wal`` file.
    ``fsmtrain recover`` pulls the lost events from a home, or records a person's acceptance of the loss."""

    exit_code = 3


class LogKeyError(LogError, PermissionError):
    """A run's chain is keyed (HMAC) and the key to write to it is missing or another one."""


class LogBusy(LogError, RuntimeError):
    """Another process holds a lock on the whole log file for longer than we wait."""


class StorageError(FsmtrainError, OSError):
    """The environment, not the run, stopped a write: the disk is full, read-only, or failing.

    Nothing half-done is committed; the run stays resumable once the cause is fixed.
    """

    exit_code = 1


class HomeError(FsmtrainError, RuntimeError):
    """A home (the shared directory or object-store URL a log ships to) is unusable as given."""


class HomeConflict(HomeError):
    """Another process writes the same run to the same home: this one stops and writes nothing more there."""

    exit_code = 4


class HomeBehind(HomeError):
    """The run is complete in the local log, but the home could not be brought up to date in the time allowed
    (``fsmtrain sync LOG`` pushes the rest)."""

    exit_code = 75  # EX_TEMPFAIL: the work is done; try the upload again


class PeerLost(FsmtrainError, RuntimeError):
    """Another process of a distributed run died or hung (a collective failed or timed out): an interruption, like
    a killed process, never a failed attempt.  Nothing of the step was committed; this process exits non-zero so
    that ``torchrun`` restarts the group, which resumes the run."""

    exit_code = 1


# --- telling the environment's failures from the action's ----------------------------

_ENV_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the storage is read-only", errno.EIO: "the storage reported an I/O error"}
_ENV_SQLITE = (("database or disk is full", "the disk is full"),
               ("disk i/o error", "the storage reported an I/O error"),
               ("attempt to write a readonly database", "the log cannot be written (read-only storage or permissions)"),
               ("unable to open database file", "the log file cannot be opened (missing folder or permissions)"))


def environmental(error: BaseException) -> str | None:
    """What in the environment caused ``error`` (the disk is full, read-only storage, I/O errors), or None.

    The exception and its causes are examined, so a library error wrapping an ``OSError(ENOSPC)`` counts.
    Such failures are not the action's fault: they stop the process and leave the run resumable.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):
            return str(e)
        if isinstance(e, OSError) and e.errno in _ENV_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            return f"{_ENV_ERRNOS[e.errno]}{where}: {e.strerror or e}"
        if isinstance(e, sqlite3.OperationalError):
            text = str(e).lower()
            for needle, what in _ENV_SQLITE:
                if needle in text:
                    return f"{what} (SQLite: {e})"
        e = e.__cause__ or e.__context__
    return None
