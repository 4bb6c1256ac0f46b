import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsmtrain import Condition, State, all_of, any_of, default, when
from fsmtrain.errors import ConditionError

states = st.fixed_dictionaries({"a": st.integers(0, 3), "b": st.integers(0, 3), "c": st.booleans()}).map(State)
atoms = st.sampled_from([when(a=1), when(b=2), when(c=True), default, ~when(a=0),
                         Condition(lambda s: s["a"] > s["b"], keys=["a", "b"], name="a>b")])


@st.composite
def conditions(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(atoms)
    op = draw(st.sampled_from(["and", "or", "not"]))
    left = draw(conditions(depth=depth - 1))
    if op == "not":
        return ~left
    right = draw(conditions(depth=depth - 1))
    return left & right if op == "and" else left | right


class TestAlgebra:
    @given(conditions(), conditions(), states)
    def test_and_fires_only_when_both_fire(self, a, b, s):
        assert (a & b)(s) == (a(s) and b(s))

    @given(conditions(), conditions(), states)
    def test_or_fires_when_either_fires(self, a, b, s):
        assert (a | b)(s) == (a(s) or b(s))

    @given(conditions(), states)
    def test_double_negation_is_the_identity(self, c, s):
        assert (~~c)(s) == c(s)
        assert (~~c).name == c.name

    @given(conditions(), states)
    def test_evaluation_is_deterministic(self, c, s):
        assert c.evaluate(s) == c.evaluate(s)

    @given(st.lists(conditions(depth=1), min_size=1, max_size=4), states)
    def test_any_of_and_all_of_match_python(self, cs, s):
        assert any_of(*cs)(s) == any(c(s) for c in cs)
        assert all_of(*cs)(s) == all(c(s) for c in cs)


class TestNames:
    def test_composed_names_read_naturally(self):
        c = when(a=1) | when(b=2) & ~when(c=True)
        assert c.name == "when(a=1) | (when(b=2) & ~when(c=True))"
        assert (~(when(a=1) & when(b=2))).name == "~(when(a=1) & when(b=2))"

    def test_reasons_say_why(self):
        c = Condition(lambda s: (s["a"] > 2, f"a={s['a']} > 2"), name="big")
        assert (c | when(b=1)).evaluate(State(a=3, b=0)) == (True, "a=3 > 2")


class TestErrors:
    def test_a_missing_key_is_a_condition_error_naming_the_condition(self):
        with pytest.raises(ConditionError, match="condition `when\\(x=1\\)` raised KeyError"):
            when(x=1)(State(a=1))

    def test_conditions_only_combine_with_conditions(self):
        with pytest.raises(TypeError, match="only with conditions"):
            when(a=1) & True  # type: ignore[operator]
