import pytest

from fsmtrain import Input, State, action, append
from fsmtrain.errors import InvalidDefinition, InvalidInput, UndeclaredRead, UndeclaredWrite, UnserializableValue


class TestAction:
    def test_undeclared_write_names_the_action_and_the_key(self):
        """Writing a key not in writes=[...] is refused with a message saying how to fix it."""
        @action(reads=["lr"], writes=["loss"])
        def evaluate(state):
            return {"loss": 1.0, "lr": 0.1}

        with pytest.raises(UndeclaredWrite) as e:
            evaluate({"lr": 0.5})
        assert str(e.value) == "action `evaluate` wrote `lr`, which it does not declare; add it to writes=[...]"
        assert isinstance(e.value, ValueError)

    def test_undeclared_read_names_the_action_and_the_key(self):
        @action(reads=["a"], writes=[])
        def peek(state):
            return {"x": state["b"]}

        with pytest.raises(UndeclaredRead, match="action `peek` read `b`"):
            peek({"a": 1, "b": 2})

    def test_an_unserialisable_value_is_refused_naming_action_and_key(self):
        """A model object is never stored as its str(); the error names action and key."""
        class Model:
            def __str__(self):
                return "Model(w=3)"

        @action(writes=["model"])
        def build(state):
            return {"model": Model()}

        with pytest.raises(UnserializableValue, match="action `build` wrote `model`"):
            build({})

    def test_append_items_are_validated_too(self):
        @action(writes=["h"])
        def bad(state):
            return {"h": append(object())}

        with pytest.raises(UnserializableValue, match="action `bad` wrote `h`"):
            bad({})

    def test_returning_something_other_than_a_dict_is_an_error(self):
        @action(writes=["x"])
        def wrong(state):
            return 3

        with pytest.raises(UndeclaredWrite, match="returned a int"):
            wrong({})

    def test_definition_problems_are_listed_together(self):
        """A string for reads, an undeclared parameter and a bad name are all reported at once."""
        with pytest.raises(InvalidDefinition) as e:
            def f(state, decision):
                return None
            action(f, name="bad name", reads="abc")
        assert len(e.value.problems) == 3
        msg = str(e.value)
        assert "reads must be a list" in msg and "parameter `decision`" in msg and "identifier" in msg

    def test_declared_inputs_must_be_parameters(self):
        with pytest.raises(InvalidDefinition, match="input `decision` is declared"):
            @action(inputs=["decision"])
            def gate(state):
                return None

    def test_resources_are_passed_when_asked_for(self):
        @action(writes=["seen"])
        def uses(state, resources):
            return {"seen": resources["x"]}

        assert uses(State(), resources={"x": 5}) == {"seen": 5}


class TestInput:
    def test_validates_type_choices_and_range(self):
        d = Input("decision", choices=["go", "no-go"])
        assert d.validate("go", "gate") == "go"
        with pytest.raises(InvalidInput, match="must be one of 'go', 'no-go'; got 'maybe'"):
            d.validate("maybe", "gate")
        lr = Input("lr_scale", type=float, min=0.1, max=10)
        assert lr.validate(2, "gate") == 2.0
        with pytest.raises(InvalidInput, match="<= 10"):
            lr.validate(11.0, "gate")
        with pytest.raises(InvalidInput, match="must be float"):
            lr.validate("x", "gate")
        with pytest.raises(InvalidInput, match="finite"):
            lr.validate(float("nan"), "gate")
        with pytest.raises(InvalidInput, match="must be int"):
            Input("n", type=int).validate(True, "gate")

    def test_parses_command_line_text(self):
        assert Input("n", type=int).parse("3", "a") == 3
        assert Input("b", type=bool).parse("yes", "a") is True
        with pytest.raises(InvalidInput, match="cannot read 'x' as one"):
            Input("n", type=int).parse("x", "a")

    def test_round_trips_through_json(self):
        i = Input("lr", type="float", required=False, min=0.0, max=1.0, help="scale")
        assert Input.from_json(i.to_json()) == i

    def test_unknown_type_is_a_definition_error(self):
        with pytest.raises(InvalidDefinition):
            Input("x", type=list)
