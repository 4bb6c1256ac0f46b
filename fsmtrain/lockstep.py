"""How the processes of one distributed run (``torch.distributed`` ranks) stay one run: the :class:`Sync`
protocol a distributed wrapper implements so that every runner follows the writer's clock and decisions,
and the digest of each step that the processes compare to catch one that diverged.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from .replay import encode_updates
from .state import dumps

__all__ = ["Sync", "step_digest"]


class Sync(Protocol):
    """How the runners of one run on several processes (``torch.distributed`` ranks) stay one run.

    Every process runs the same machine over the same state; one, the *writer*, has the log.
    ``agree(value)`` gives every process the writer's value; ``tick(now, digest)`` is called once
    per step by every process, gives every process the writer's clock, and checks that every
    process's digest of the previous step (its updates and decision) is the same, raising when
    one diverged.  ``lost(error)`` tells an error caused by another process's death (a collective
    that failed or timed out) from one the action raised.  ``fsmtrain.train.distributed`` implements it on ``torch.distributed``.
    """

    @property
    def writer(self) -> bool: ...

    def agree(self, value: Any) -> Any: ...

    def tick(self, now: float, digest: str) -> float: ...

    def lost(self, error: BaseException) -> str | None:
        """Why ``error`` means that another process died or hung (then the step is an interruption, not a failed
        attempt), or None when it is the action's own."""


def step_digest(digest: str, step: int, name: str, target: str | None, cond: str | None, reason: str | None,
                updates: dict[str, Any]) -> str:
    """The chain ``digest`` extended by one step: its number, action, decision and updates (16 hex digits)."""
    return hashlib.sha256(f"{digest}|{step}|{name}|{target}|{cond}|{reason}|".encode()
                          + dumps(encode_updates(updates)).encode()).hexdigest()[:16]
