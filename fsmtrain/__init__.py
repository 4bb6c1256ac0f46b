"""fsmtrain: machine-learning training as a resumable state machine.

The engine (this package's top level) never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .actions import Action, Input, action, gate
from .conditions import Condition, all_of, any_of, default, when
from .errors import FsmtrainError
from .hooks import CsvMetrics, Hook, HookBus, JsonlMetrics, Notify, Progress
from .log import EventLog
from .machine import Machine, Transition
from .replay import fold, fork, state_at
from .runner import Halt, Runner, StepResult, decide, give_input
from .state import Ref, State, append

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
    "state_at",
    "when",
]
