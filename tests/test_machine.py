import pytest

from fsmtrain import Machine, action, when
from fsmtrain.errors import InvalidDefinition, NoTransition
from fsmtrain.state import State
from tests.machines import counter, done, gated, tick


@action()
def a(state):
    return None


@action()
def b(state):
    return None


@action()
def c(state):
    return None


class TestValidation:
    def test_every_problem_is_listed_at_once(self):
        """Unknown targets, unreachable and stuck actions, two defaults: one error lists all."""
        with pytest.raises(InvalidDefinition) as e:
            Machine("broken", [a, b, c], [("a", "nowhere"), ("a", "a"), ("a", "a")], entry="a", terminal=["zzz"])
        msg = str(e.value)
        for needle in ["target `nowhere` is not an action", "terminal `zzz` is not an action",
                       "action `b` is not terminal and has no transition out", "action `b` is unreachable",
                       "action `c` is unreachable", "default transitions", "transitions after its default"]:
            assert needle in msg, needle
        assert len(e.value.problems) >= 7

    def test_unknown_entry_and_duplicate_names(self):
        with pytest.raises(InvalidDefinition) as e:
            Machine("m", [a, a], [], entry="q")
        assert "two actions are named `a`" in str(e.value) and "entry `q` is not an action" in str(e.value)

    def test_terminal_with_outgoing_transitions_is_reported(self):
        with pytest.raises(InvalidDefinition, match="terminal action `b` has outgoing"):
            Machine("m", [a, b], [("a", "b"), ("b", "a")], entry="a", terminal=["b"])

    def test_no_transition_at_run_time_is_a_clear_error(self):
        m = Machine("m", [a, b], [("a", "b", when(go=True))], entry="a", terminal=["b"])
        with pytest.raises(NoTransition, match="no transition out of `a` fired"):
            m.next("a", State(go=False))


class TestFingerprint:
    def test_is_stable_and_changes_with_the_graph(self):
        assert counter().fingerprint == counter().fingerprint
        assert counter(3).fingerprint == counter(9).fingerprint  # initial values are not the graph
        other = Machine("counter", [tick, done], [("tick", "done", when(n=5)), ("tick", "tick")],
                        entry="tick", terminal=["done"])
        assert other.fingerprint != counter().fingerprint


class TestExport:
    def test_mermaid(self):
        text = gated().to_mermaid()
        assert text.splitlines()[:3] == ["stateDiagram-v2", "    [*] --> work", "    work --> review"]
        assert "review --> ship: when(decision='go')" in text and "ship --> [*]" in text

    def test_dot(self):
        text = gated().to_dot(highlight="review")
        assert text.startswith('digraph "gated" {') and text.rstrip().endswith("}")
        assert '"review" -> "ship" [label="when(decision=\'go\')"];' in text
        assert '"ship" [peripheries=2];' in text and 'fillcolor' in text
