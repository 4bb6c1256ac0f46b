"""fsmtrain: machine-learning training as a resumable state machine.

The engine (this package's top level) never imports torch.  Importing the package is cheap:
each name below is imported from its module the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "Action": "actions", "Input": "actions", "action": "actions", "gate": "actions",
    "Condition": "conditions", "all_of": "conditions", "any_of": "conditions", "default": "conditions",
    "when": "conditions",
    "FsmtrainError": "errors",
    "CsvMetrics": "hooks", "Hook": "hooks", "HookBus": "hooks", "JsonlMetrics": "hooks", "Notify": "hooks",
    "Progress": "hooks",
    "EventLog": "log",
    "MLflowLogger": "trackers",
    "Machine": "machine", "Transition": "machine",
    "fold": "replay", "fork": "replay", "state_at": "replay",
    "Halt": "runner", "Runner": "runner", "StepResult": "runner", "decide": "runner", "give_input": "runner",
    "retry": "runner", "stop": "runner",
    "Ref": "state", "State": "state", "append": "state",
}

__all__ = [
    "Action",
    "Condition",
    "CsvMetrics",
    "EventLog",
    "FsmtrainError",
    "Halt",
    "Hook",
    "HookBus",
    "Input",
    "JsonlMetrics",
    "MLflowLogger",
    "Machine",
    "Notify",
    "Progress",
    "Ref",
    "Runner",
    "State",
    "StepResult",
    "Transition",
    "__version__",
    "action",
    "all_of",
    "any_of",
    "append",
    "decide",
    "default",
    "fold",
    "fork",
    "gate",
    "give_input",
    "retry",
    "state_at",
    "stop",
    "when",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fsmtrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .actions import Action, Input, action, gate
    from .conditions import Condition, all_of, any_of, default, when
    from .errors import FsmtrainError
    from .hooks import CsvMetrics, Hook, HookBus, JsonlMetrics, Notify, Progress
    from .log import EventLog
    from .machine import Machine, Transition
    from .replay import fold, fork, state_at
    from .runner import Halt, Runner, StepResult, decide, give_input, retry, stop
    from .state import Ref, State, append
    from .trackers import MLflowLogger
