"""The condition expression language: parsed, never evaluated; errors point at the offending part."""

import pytest

from fsmtrain import State
from fsmtrain.errors import ExpressionError
from fsmtrain.expr import parse
from fsmtrain.stopping import CONDITIONS, max_epochs, register


class TestParsing:
    def test_calls_combine_with_and_or_not_and_parentheses(self):
        c = parse("early_stopping(val_loss, patience=3) & ~(target(val_acc, value=0.9, mode='max') | max_epochs(n=50))")
        assert c.name == ("early_stopping(val_loss, patience=3) & ~(target(val_acc, value=0.9, mode='max') | "
                          "max_epochs(50))")
        s = State(epoch=4, val_loss=[1.0, 0.5, 0.6, 0.7, 0.8], val_acc=[0.5])
        assert c(s)

    def test_literals_strings_negative_numbers_and_settings(self):
        c = parse('early_stopping("val_loss", patience=setting("patience"), min_delta=+0.01, baseline=-1, '
                  'check_finite=False, divergence_threshold=None)')
        assert c.name == ("early_stopping(val_loss, patience=setting('patience'), min_delta=0.01, baseline=-1, "
                          "check_finite=False)")

    def test_whitespace_and_newlines_are_allowed(self):
        assert parse("  max_epochs(\n  n = 5 )\n| min_epochs(2)").name == "max_epochs(5) | min_epochs(2)"

    def test_registered_conditions_can_be_named(self):
        def every_third(metric):
            return max_epochs(3)

        register(every_third)
        try:
            assert parse("every_third(val_loss) | max_epochs(9)").name == "max_epochs(3) | max_epochs(9)"
        finally:
            del CONDITIONS["every_third"]

    def test_an_explicit_table_of_conditions_limits_what_can_be_named(self):
        with pytest.raises(ExpressionError, match=r"unknown condition `max_epochs` \(known: \)"):
            parse("max_epochs(3)", conditions={})


class TestErrorsPointAtTheOffendingPart:
    @pytest.mark.parametrize(("text", "message", "pointer"), [
        ("early_stoping(val_loss)", "unknown condition `early_stoping`", "^^^^^^^^^^^^^"),
        ("max_epochs(n=5) + 1", "operator `+` is not allowed", "^" * 19),
        ("max_epochs(n=5) and min_epochs(n=2)", "`and` is not allowed: use &", "^" * 35),
        ("not max_epochs(n=5)", "`not` is not allowed here: negate a condition with ~", "^" * 19),
        ("max_epochs(n=__import__('os'))", "a call is not allowed as an argument", "             ^^^^^^^^^^^^^^^^"),
        ("max_epochs(n=[1])", "a list is not allowed as an argument", "             ^^^"),
        ("max_epochs(n=x.y)", "an attribute is not allowed as an argument", "             ^^^"),
        ("os.system('ls')", "only a condition's plain name can be called", "^^^^^^^^^"),
        ("max_epochs", "`max_epochs` is a condition factory: call it", "^^^^^^^^^^"),
        ("max_epochs(n=5) < 3", "comparisons are not conditions here", "^" * 19),
        ("(max_epochs(n=5) |", "not a valid expression", "^"),
        ("early_stopping(val_loss, patients=3)", "has no argument `patients` (did you mean `patience`?)",
         "                         ^^^^^^^^^^"),
        ("early_stopping(val_loss)", "missing a required argument: 'patience'", "^" * 24),
        ("early_stopping(val_loss, patience='3')", "patience must be an int >= 1", "^" * 38),
        ("max_epochs(*[5])", "*arguments are not allowed", "           ^^^^"),
        ("max_epochs(**{'n': 5})", "**arguments are not allowed", "             ^^^^^^^^"),
        ("setting('n')", "unknown condition `setting` (setting(...) is a parameter, not a condition)", "^^^^^^^"),
        ("max_epochs(n=setting(1))", "setting needs a state key (a str), got 1", "                     ^"),
        ("lambda: 1", "a lambda is not a condition", "^^^^^^^^^"),
        ("", "the condition expression is empty", None),
    ])
    def test_bad_expressions(self, text, message, pointer):
        with pytest.raises(ExpressionError) as e:
            parse(text)
        lines = str(e.value).splitlines()
        assert message in lines[0] if "invalid" not in lines[0] else message in str(e.value)
        if pointer is not None:
            assert lines[-2].strip() == " ".join(text.split())
            assert lines[-1] == "  " + pointer

    def test_a_very_long_expression_is_refused(self):
        with pytest.raises(ExpressionError, match="at most 2000"):
            parse(" | ".join(["max_epochs(1)"] * 200))

    def test_non_ascii_text_is_pointed_at_by_characters(self):
        with pytest.raises(ExpressionError) as e:
            parse("target('väl', valu=1)")
        assert str(e.value).splitlines()[-1] == "  " + " " * 14 + "^" * 6

    def test_nothing_is_executed(self, tmp_path):
        marker = tmp_path / "ran"
        with pytest.raises(ExpressionError):
            parse(f"max_epochs(n=open({str(marker)!r}, 'w'))")
        assert not marker.exists()
