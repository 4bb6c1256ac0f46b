import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsmtrain import Ref, State, append
from fsmtrain.errors import UnserializableValue
from fsmtrain.state import Seq, dumps, freeze, loads


class TestState:
    def test_apply_returns_a_new_state_and_leaves_the_old_one_alone(self):
        """Updating gives a new State; the original keeps its values."""
        s = State(a=1, h=[1])
        t = s.apply({"a": 2, "h": append(2)})
        assert s == {"a": 1, "h": [1]}
        assert t == {"a": 2, "h": [1, 2]}

    def test_state_cannot_be_mutated(self):
        """Item and attribute assignment are refused."""
        s = State(a=[1])
        with pytest.raises(TypeError):
            s["a"] = 2  # type: ignore[index]
        with pytest.raises(AttributeError, match="immutable"):
            s.x = 1  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            s["a"].append(2)  # Seq has no append

    def test_unchanged_values_are_shared_not_copied(self):
        """A new State holds the very same objects for keys it did not change."""
        s = State(big=list(range(1000)), x=0)
        t = s.apply({"x": 1})
        assert t["big"] is s["big"]

    def test_appending_shares_the_prefix_and_old_views_keep_their_length(self):
        """Appends reuse storage, and every earlier State still sees only its own items."""
        states = [State(h=[])]
        for i in range(100):
            states.append(states[-1].apply({"h": append(i)}))
        assert [len(s["h"]) for s in states] == list(range(101))
        assert states[-1]["h"]._items is states[50]["h"]._items
        # Branching from an old state copies instead of overwriting the shared tail.
        branch = states[10].apply({"h": append(-1)})
        assert list(branch["h"]) == list(range(10)) + [-1]
        assert list(states[11]["h"]) == list(range(11))

    def test_non_finite_floats_round_trip_through_json(self):
        """NaN and infinities survive the log's JSON encoding."""
        s = State(loss=[float("nan"), float("inf"), -float("inf"), 1.5])
        back = State.from_json(s.to_json())
        vals = back["loss"]
        assert math.isnan(vals[0]) and vals[1] == math.inf and vals[2] == -math.inf and vals[3] == 1.5

    def test_refs_round_trip(self):
        """A Ref in state comes back as a Ref, nested anywhere."""
        r = Ref("ckpt/epoch-3.pt", "a" * 64, 123)
        s = State(current=r, best={"ref": r, "epoch": 3})
        back = State.from_json(s.to_json())
        assert back["current"] == r and back["best"]["ref"] == r

    @pytest.mark.parametrize("value", [object(), {1: "x"}, {"$ref": 1}, b"bytes", {1.5}, [1, object()]])
    def test_values_that_are_not_json_are_refused(self, value):
        """Objects, non-str keys, the reserved $ref key, bytes and sets are refused with a clear error."""
        with pytest.raises(UnserializableValue):
            State(v=value)

    def test_canonical_json_sorts_keys(self):
        assert dumps({"b": 1, "a": [1.0, None]}) == '{"a":[1.0,null],"b":1}'
        assert loads('{"a":NaN}')["a"] != loads('{"a":NaN}')["a"]


class TestRef:
    @pytest.mark.parametrize("path", ["/abs/x.pt", "../x.pt", "a/../../x", "", "C:/x"])
    def test_paths_must_be_relative_and_inside_the_artifact_folder(self, path):
        with pytest.raises(ValueError, match="Ref.path"):
            Ref(path, "a" * 64, 1)

    def test_sha_and_size_are_checked(self):
        with pytest.raises(ValueError, match="sha256"):
            Ref("x", "nothex", 1)
        with pytest.raises(ValueError, match="size"):
            Ref("x", "a" * 64, -1)


class TestSeq:
    def test_seq_compares_equal_to_lists_and_tuples(self):
        assert Seq([1, 2]) == [1, 2] == Seq((1, 2))
        assert Seq([1]) != [1, 2]
        assert Seq([1, 2, 3])[-1] == 3 and Seq([1, 2, 3])[1:] == [2, 3]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5).filter(lambda k: k != "$ref"), children, max_size=4),
    max_leaves=20,
)


class TestCanonicalJson:
    @given(json_values)
    def test_dumps_equals_the_reference_encoding(self, value):
        """The fast path writes exactly what json.dumps(sort_keys, compact, NaN tokens) writes."""
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        assert dumps(value) == expected
        assert dumps(freeze(value)) == expected
        assert dumps(loads(expected)) == expected  # the fast decoder reads back what it wrote
        assert dumps(loads(f" {expected}\n")) == expected  # and, slower, text with spaces

    @given(st.lists(st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                    min_size=14, max_size=14))
    def test_hash_document_equals_json_dumps(self, fields):
        """The event hash covers exactly json.dumps(fields, ensure_ascii=False), as spec/log.md says."""
        from fsmtrain.log import _hash_doc

        assert _hash_doc(fields) == json.dumps(fields, ensure_ascii=False, allow_nan=False)
