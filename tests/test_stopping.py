"""Termination conditions: algebra, the reference early-stopping rules, scanners, errors."""

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fsmtrain import Condition, State
from fsmtrain.conditions import Scanner
from fsmtrain.errors import ConditionError, ExpressionError, InvalidDefinition
from fsmtrain.expr import parse
from fsmtrain.stopping import (
    diverged,
    early_stopping,
    max_epochs,
    max_steps,
    min_epochs,
    non_finite,
    plateau,
    register,
    setting,
    slope,
    target,
    time_budget,
)
from fsmtrain.testing import (
    aligned_histories,
    check_condition,
    conditions,
    epoch_states,
    fired_at,
    first_firing,
    histories,
    run_states,
)

INF = math.inf
NAN = math.nan


# -- oracles: straightforward transcriptions of the reference rules -----------------------------------
class LightningKerasEarlyStopping:
    """Lightning's EarlyStopping._evaluate_stopping_criteria, with Keras' baseline and start_from_epoch.

    Fed one value per evaluation, like a callback; says whether to stop after it.
    """

    def __init__(self, patience, min_delta=0.0, mode="min", baseline=None, start_from_epoch=0, check_finite=True,
                 stopping_threshold=None, divergence_threshold=None):
        self.patience, self.mode, self.baseline, self.start = patience, mode, baseline, start_from_epoch
        self.check_finite, self.stopping_threshold, self.divergence_threshold = check_finite, stopping_threshold, \
            divergence_threshold
        self.min_delta = min_delta if mode == "max" else -min_delta  # Lightning: negated for "min"
        self.monitor_op = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self.best_score = -INF if mode == "max" else INF
        self.wait_count = 0
        self.epoch = -1

    def on_validation_end(self, current):
        self.epoch += 1
        if self.epoch < self.start:  # Keras: warm-up evaluations are ignored
            return False
        if self.check_finite and not math.isfinite(current):
            return True
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            return True
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            return True
        if self.monitor_op(current - self.min_delta, self.best_score):
            self.best_score = current
            # Keras: an improvement resets the count only if it also beats the baseline
            if self.baseline is None or self.monitor_op(current - self.min_delta, self.baseline):
                self.wait_count = 0
            else:
                self.wait_count += 1
            return False
        self.wait_count += 1
        return self.wait_count >= self.patience


class ReduceLROnPlateauOracle:
    """torch.optim.lr_scheduler.ReduceLROnPlateau.step with threshold_mode='abs': True when it would reduce."""

    def __init__(self, patience, min_delta=0.0, mode="min", cooldown=0):
        self.patience, self.threshold, self.mode, self.cooldown = patience, min_delta, mode, cooldown
        self.best = INF if mode == "min" else -INF
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def is_better(self, a, best):
        return a < best - self.threshold if self.mode == "min" else a > best + self.threshold

    def step(self, current):
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            return True
        return False


def oracle_stops(oracle, history):
    return [i + 1 for i, v in enumerate(history) if (oracle.on_validation_end(v) if hasattr(oracle, "on_validation_end")
                                                     else oracle.step(v))]


early_params = st.fixed_dictionaries({
    "patience": st.integers(1, 5),
    "min_delta": st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.25]),
    "mode": st.sampled_from(["min", "max"]),
    "baseline": st.none() | st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    "start_from_epoch": st.integers(0, 3),
    "check_finite": st.booleans(),
    "stopping_threshold": st.none() | st.sampled_from([0.1, 0.5, 1.0]),
    "divergence_threshold": st.none() | st.sampled_from([2.0, 5.0, 10.0]),
})


class TestEarlyStoppingMatchesTheReference:
    @given(histories(allow_nan=True), early_params)
    @settings(max_examples=300)
    def test_fires_exactly_where_the_reference_callback_stops(self, history, params):
        """At every evaluation, the condition fires iff the reference callback says stop."""
        ours = fired_at(early_stopping("val_loss", **params), history)
        assert ours == oracle_stops(LightningKerasEarlyStopping(**params), history)

    @pytest.mark.parametrize(("history", "params", "expected"), [
        # ties with min_delta: 0.75 is not better than the best 1.0 by more than 0.25; 0.5 is
        ([1.0, 0.75, 0.8], {"patience": 2, "min_delta": 0.25}, [3]),
        ([1.0, 0.75, 0.5, 0.3], {"patience": 2, "min_delta": 0.25}, []),
        ([1.0, 0.75, 0.5, 0.3], {"patience": 1, "min_delta": 0.25}, [2, 4]),
        ([1.0, 1.0, 1.0], {"patience": 2}, [3]),  # an exact tie is not an improvement
        # the baseline is never beaten: improvements do not reset the count, but Keras never stops on one
        ([0.9, 0.8, 0.7, 0.6], {"patience": 2, "baseline": 0.5}, []),
        ([0.9, 0.8, 0.7, 0.6, 0.65], {"patience": 2, "baseline": 0.5}, [5]),
        ([0.9, 0.4, 0.45, 0.46], {"patience": 2, "baseline": 0.5}, [4]),  # beaten at 2: counting restarts there
        # NaN at the first epoch
        ([NAN, 1.0, 0.9], {"patience": 1}, [1]),
        ([NAN, 1.0, 1.1], {"patience": 2, "check_finite": False}, []),
        ([NAN, 1.0], {"patience": 1, "check_finite": False}, [1]),
        # thresholds fire at once, in this order, even while improving
        ([1.0, 0.05], {"patience": 5, "stopping_threshold": 0.1}, [2]),
        ([1.0, 12.0], {"patience": 5, "divergence_threshold": 10.0}, [2]),
        ([1.0, INF], {"patience": 5, "divergence_threshold": 10.0, "check_finite": False}, [2]),
        # warm-up evaluations are ignored entirely
        ([0.1, 1.0, 1.1, 1.2], {"patience": 2, "start_from_epoch": 1}, [4]),
        ([0.5, 0.6, 0.7], {"patience": 2, "mode": "max"}, []),
        ([0.7, 0.6, 0.5], {"patience": 2, "mode": "max"}, [3]),
    ])
    def test_documented_edge_cases(self, history, params, expected):
        """Hand-made histories, checked against both the reference and the stated expectation."""
        assert oracle_stops(LightningKerasEarlyStopping(**params), history) == expected
        assert fired_at(early_stopping("val_loss", **params), history) == expected

    @given(histories(allow_nan=True), st.integers(1, 6))
    def test_never_fires_before_patience_non_improving_evaluations_unless_non_finite(self, history, patience):
        """Without thresholds, a firing is either a non-finite value or `patience` evaluations without a new best."""
        for at in fired_at(early_stopping("val_loss", patience), history):
            seen = history[:at]
            if not math.isfinite(seen[-1]):
                continue
            finite = [v for v in seen if math.isfinite(v)]
            best_at = next(i for i, v in enumerate(seen) if v == min(finite))  # the first: a tie is no improvement
            assert len(seen) - 1 - best_at >= patience

    @given(histories(), st.integers(1, 6))
    def test_always_fires_once_patience_non_improving_evaluations_occur(self, history, patience):
        """On finite histories: `patience` evaluations after the last new best, it fires."""
        c = early_stopping("val_loss", patience)
        fired = set(fired_at(c, history))
        best = INF
        since = 0
        for i, v in enumerate(history):
            if v < best:
                best, since = v, 0
            else:
                since += 1
            assert ((i + 1) in fired) == (since >= patience)

    def test_patience_counts_evaluations_not_epochs(self):
        """Evaluating every other epoch: patience=2 needs two evaluations, i.e. four epochs."""
        s = State(epoch=6, val_loss=[1.0, 0.5, 0.6])
        assert not early_stopping("val_loss", 2)(s)
        assert early_stopping("val_loss", 2)(s.update(epoch=8, val_loss=[1.0, 0.5, 0.6, 0.7]))


def torch_reductions(history, patience, threshold, threshold_mode, mode, cooldown):
    """The evaluations (1-based) at which torch's own ReduceLROnPlateau reduces the learning rate."""
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=patience,
                                                       threshold=threshold, threshold_mode=threshold_mode,
                                                       cooldown=cooldown, min_lr=0.0, eps=0.0)
    out = []
    for i, v in enumerate(history):
        before = opt.param_groups[0]["lr"]
        sched.step(v)
        if opt.param_groups[0]["lr"] < before:
            out.append(i + 1)
    return out


class TestPlateauAgainstTorch:
    """Differential: plateau fires exactly where torch.optim.lr_scheduler.ReduceLROnPlateau reduces, in both
    threshold modes (torch's relative default included), on negative values too."""

    @given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=40) | histories(allow_nan=True),
           st.integers(0, 4), st.sampled_from([0.0, 1e-4, 0.01, 0.1, 0.5]), st.sampled_from(["rel", "abs"]),
           st.sampled_from(["min", "max"]), st.integers(0, 3))
    @settings(max_examples=300, deadline=None)
    def test_fires_where_torch_reduces(self, history, patience, threshold, threshold_mode, mode, cooldown):
        ours = fired_at(plateau("val_loss", patience, threshold=threshold, threshold_mode=threshold_mode, mode=mode,
                                cooldown=cooldown), history)
        assert ours == torch_reductions(history, patience, threshold, threshold_mode, mode, cooldown)

    def test_torch_defaults_and_bad_settings(self):
        c = plateau("val_loss", 10, threshold=1e-4, threshold_mode="rel")
        assert "threshold_mode='rel'" in c.name or "threshold_mode=rel" in c.name
        with pytest.raises(InvalidDefinition, match="threshold_mode"):
            plateau("val_loss", 3, threshold_mode="relative")
        with pytest.raises(InvalidDefinition, match="not both"):
            plateau("val_loss", 3, threshold=0.1, min_delta=0.1)


class TestPlateau:
    @given(histories(allow_nan=True), st.integers(0, 4), st.sampled_from([0.0, 0.01, 0.1]),
           st.sampled_from(["min", "max"]), st.integers(0, 3))
    @settings(max_examples=200)
    def test_fires_where_reduce_lr_on_plateau_would_reduce(self, history, patience, delta, mode, cooldown):
        ours = fired_at(plateau("val_loss", patience, min_delta=delta, mode=mode, cooldown=cooldown), history)
        assert ours == oracle_stops(ReduceLROnPlateauOracle(patience, delta, mode, cooldown), history)


class TestCounters:
    @given(st.integers(1, 50), st.integers(0, 60))
    def test_max_epochs_fires_exactly_at_n(self, n, epochs):
        assert first_firing(max_epochs(n), [1.0] * epochs) == (n if epochs >= n else None)

    @given(st.integers(1, 30), histories(min_size=1))
    def test_min_epochs_blocks_until_n(self, n, history):
        c = min_epochs(n) & early_stopping("val_loss", 1)
        for at in fired_at(c, history):
            assert at >= n

    def test_max_steps_reads_the_optimizer_step_counter(self):
        assert fired_at(max_steps(25), [1.0] * 4) == [3, 4]  # epoch_states counts 10 steps per epoch

    def test_time_budget_reads_the_active_time_the_state_carries(self):
        assert first_firing(time_budget(2.5), [1.0] * 5) == 3
        assert first_firing(time_budget(2.5), [1.0] * 5, seconds_per_epoch=0.5) == 5
        with pytest.raises(ConditionError, match="needs the run's active time"):
            time_budget(10)(State(epoch=1))

    def test_settings_are_read_from_the_run_state(self):
        c = max_epochs(setting("max_epochs")) | early_stopping("val_loss", setting("patience"))
        assert first_firing(c, [1.0, 0.9, 0.95, 0.96, 0.97], max_epochs=10, patience=2) == 4
        assert first_firing(c, [1.0, 0.9, 0.95, 0.96, 0.97], max_epochs=2, patience=2) == 2
        with pytest.raises(ConditionError, match="is 'x' in this run's state, not a number"):
            max_epochs(setting("m"))(State(epoch=1, m="x"))


class TestOtherRules:
    def test_target_reached_by_the_latest_value(self):
        assert fired_at(target("val_loss", 0.5), [1.0, 0.5, 0.7, 0.4]) == [2, 4]
        assert fired_at(target("val_acc", 0.9, mode="max"), [0.8, 0.95, NAN], metric="val_acc") == [2]

    def test_diverged_by_threshold_factor_or_non_finite(self):
        assert fired_at(diverged("val_loss", threshold=5.0), [1.0, 6.0, 2.0, NAN]) == [2, 4]
        assert fired_at(diverged("val_loss", factor=2), [1.0, 0.5, 0.9, 1.1, INF]) == [4, 5]
        assert fired_at(diverged("val_acc", factor=2, mode="max"), [0.8, 0.9, 0.44], metric="val_acc") == [3]

    def test_non_finite_looks_at_the_latest_value(self):
        assert fired_at(non_finite("val_loss"), [1.0, NAN, 1.0, -INF]) == [2, 4]

    def test_slope_fires_when_improvement_slows(self):
        falling = [1.0, 0.8, 0.6, 0.55, 0.54, 0.535]
        assert fired_at(slope("val_loss", 3, below=0.05), falling) == [5, 6]
        assert fired_at(slope("val_loss", 3, below=0.05), [1.0, NAN, 0.5]) == [3]


states_of_runs = st.tuples(histories(allow_nan=True, max_size=25), st.integers(0, 25))


class TestAlgebraOverHistories:
    @given(conditions(), conditions(), histories(allow_nan=True, max_size=25))
    def test_and_fires_only_when_both_fire(self, a, b, history):
        for s in epoch_states(history):
            assert (a & b)(s) == (a(s) and b(s))

    @given(conditions(), conditions(), histories(allow_nan=True, max_size=25))
    def test_or_fires_when_either_fires(self, a, b, history):
        for s in epoch_states(history):
            assert (a | b)(s) == (a(s) or b(s))

    @given(conditions(), histories(allow_nan=True, max_size=25))
    def test_double_negation_is_the_identity(self, c, history):
        assert (~~c).name == c.name
        assert fired_at(~~c, history) == fired_at(c, history)

    @given(conditions(), histories(allow_nan=True, max_size=25))
    def test_evaluation_is_deterministic_and_scanning_agrees_with_it(self, c, history):
        """Evaluating twice, or incrementally with a scanner, gives the same verdicts and reasons."""
        scan = c.scanner()
        for s in epoch_states(history):
            first = c.evaluate(s)
            assert c.evaluate(s) == first
            assert (scan.fires(s), scan.reason()) == first

    @given(conditions(), histories(allow_nan=True, max_size=25), histories(allow_nan=True, max_size=10),
           st.integers(0, 25))
    def test_a_prefix_verdict_never_looks_ahead(self, c, history, other_tail, k):
        """What a condition says at epoch k depends on the first k values only."""
        assume(k <= len(history))
        a = fired_at(c, history)
        b = fired_at(c, history[:k] + other_tail)
        assert [e for e in a if e <= k] == [e for e in b if e <= k]

    @given(conditions(), histories(allow_nan=True, max_size=20))
    def test_a_conditions_name_parses_back_to_the_same_condition(self, c, history):
        again = parse(c.name)
        assert again.name == c.name
        assert fired_at(again, history) == fired_at(c, history)

    @given(conditions(), histories(allow_nan=True, max_size=20))
    def test_scanning_states_that_do_not_extend_each_other_starts_over(self, c, history):
        """A scanner fed unrelated states (not one run's epochs) still agrees with evaluate."""
        scan = c.scanner()
        for s in reversed(epoch_states(history)):
            assert scan.fires(s) == c(s)


class TestNamesAndReasons:
    def test_composed_names_read_naturally(self):
        c = early_stopping("val_loss", patience=3) | max_epochs(50)
        assert c.name == "early_stopping(val_loss, patience=3) | max_epochs(50)"
        assert (min_epochs(5) & ~target("val_acc", 0.9, mode="max")).name == \
            "min_epochs(5) & ~target(val_acc, value=0.9, mode='max')"

    def test_the_reason_names_the_part_that_fired_with_its_numbers(self):
        c = early_stopping("val_loss", patience=2) | max_epochs(50)
        fired, why = c.evaluate(State(epoch=4, val_loss=[1.0, 0.5, 0.6, 0.55]))
        assert fired and why == ("early_stopping(val_loss, patience=2): no improvement for 2 evaluations "
                                 "(best 0.5 at evaluation 2, last 0.55)")
        fired, why = c.evaluate(State(epoch=50, val_loss=[1.0]))
        assert fired and why == "max_epochs(50): epoch 50 reached 50"


class TestBadDefinitions:
    @pytest.mark.parametrize(("make", "message"), [
        (lambda: max_epochs(0), "n must be an int >= 1"),
        (lambda: max_epochs(2.5), "n must be an int >= 1"),
        (lambda: early_stopping("val_loss", 0), "patience must be an int >= 1"),
        (lambda: early_stopping("", 2), "metric must be the name of a state key"),
        (lambda: early_stopping("val_loss", 2, mode="up"), "mode must be 'min' or 'max'"),
        (lambda: early_stopping("val_loss", 2, min_delta=-1), "min_delta must be a number >= 0"),
        (lambda: early_stopping("val_loss", 2, check_finite="yes"), "check_finite must be True or False"),
        (lambda: diverged("val_loss"), "give factor=..., threshold=... or both"),
        (lambda: slope("val_loss", 1, below=0.1), "window must be an int >= 2"),
        (lambda: time_budget(-1), "seconds must be a number >= 0"),
    ])
    def test_bad_arguments_are_refused_with_every_problem_named(self, make, message):
        with pytest.raises(InvalidDefinition, match=message):
            make()

    def test_every_problem_is_listed_at_once(self):
        with pytest.raises(InvalidDefinition) as e:
            early_stopping("", 0, mode="x")
        assert str(e.value).count("\n  - ") == 3

    def test_a_missing_metric_is_a_condition_error_naming_the_condition(self):
        with pytest.raises(ConditionError, match=r"condition `early_stopping\(val_loss, patience=2\)` raised KeyError"):
            early_stopping("val_loss", 2)(State(epoch=1))

    def test_register_refuses_a_name_taken_by_another_factory(self):
        with pytest.raises(ValueError, match="already registered"):
            register(lambda: max_epochs(1), name="max_epochs")
        with pytest.raises(ValueError, match="must be an identifier"):
            register(lambda: max_epochs(1), name="not a name")


class TestHelpersForUsersConditions:
    @given(aligned_histories(min_size=1, max_size=20, allow_nan=True))
    def test_aligned_histories_have_one_value_per_epoch_each_and_accuracy_stays_in_range(self, run):
        assert set(run) == {"train_loss", "val_loss", "val_acc"} and len({len(v) for v in run.values()}) == 1
        assert all(0.0 <= a <= 1.0 for a in run["val_acc"])
        states = run_states(run)
        assert [s["epoch"] for s in states] == list(range(1, len(run["val_loss"]) + 1))
        assert all(list(s["val_acc"]) == run["val_acc"][: s["epoch"]] for s in states)

    def test_check_condition_passes_every_builtin_condition(self):
        check_condition(early_stopping("val_loss", patience=3) | max_epochs(10), examples=50)
        check_condition(plateau("val_acc", patience=2, mode="max") & ~target("train_loss", 0.1), examples=50)

    @pytest.mark.parametrize(("bad", "message"), [
        (Condition(lambda s: __import__("random").random() < 0.5, keys=["val_loss"], name="coin"),
         "not deterministic|scanner says"),
        (Condition(lambda s: len(s["val_loss"]) > 0 and s["val_loss"][-1] == s["val_loss"][-1] + 0 and False,
                   keys=["val_loss"], name="max_epochs(3)"), "parsed name decides otherwise"),
    ])
    def test_check_condition_finds_a_broken_promise(self, bad, message):
        with pytest.raises(AssertionError, match=message):
            check_condition(bad, examples=50, shrink=False)

    def test_check_condition_finds_a_scanner_that_disagrees(self):
        class AlwaysYes(Scanner):
            def fires(self, state):
                return True

        class Lying(Condition):
            def scanner(self):
                return AlwaysYes(self)

        with pytest.raises(AssertionError, match="scanner says"):
            check_condition(Lying(lambda s: False, keys=["val_loss"], name="never"), examples=20, shrink=False)

    def test_a_factorys_own_message_is_not_prefixed_twice(self):
        from fsmtrain.expr import parse
        from fsmtrain.stopping import CONDITIONS

        def picky(metric, n):
            raise ValueError(f"picky needs n >= 1, got {n}")

        CONDITIONS["picky"] = picky
        try:
            with pytest.raises(ExpressionError) as got:
                parse("picky(val_loss, n=0)")
        finally:
            del CONDITIONS["picky"]
        assert str(got.value).splitlines()[0] == "picky needs n >= 1, got 0"
