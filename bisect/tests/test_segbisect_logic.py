"""segbisect's pure logic without DVC: the predicate language and the search's hybrid counts."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from segbisect.core.predicate import Predicate, PredicateError, UnjudgeableError
from segbisect.core.search import ddmin, search
from segbisect.core.units import Group, Unit, UnitKind
from segbisect.project import reading, refs
from segbisect.project.metrics import flatten


def groups_of(spec: dict[str, int]) -> list[Group]:
    """Groups named like stages, with `n` units each named '<stage>.<i>'."""
    return [Group(stage, (stage,), [unit(f"{stage}.{i}", stage) for i in range(n)]) for stage, n in spec.items()]


def unit(name: str, stage: str) -> Unit:
    return Unit(id=name, kind=UnitKind.PARAM, name=name, stages=(stage,), path="params.yaml", good=0, bad=1, summary="")


class Oracle:
    """A fake evaluator: a configuration is bad when `fails(config)`; records every wave it is asked."""

    def __init__(self, fails, skip=lambda c: False) -> None:
        self.fails, self.skip, self.waves, self.seen = fails, skip, [], {}

    def __call__(self, batch):
        new = [c for c, _ in batch if c not in self.seen]
        if new:
            self.waves.append(new)
        for config, _ in batch:
            self.seen.setdefault(config, "skip" if self.skip(config) else ("bad" if self.fails(config) else "good"))
        return [self.seen[c] for c, _ in batch]

    @property
    def hybrids(self) -> int:
        return len(self.seen)


STAGES = {f"s{i}": 2 for i in range(8)}


@pytest.mark.parametrize("culprit", ["s0", "s3", "s7"])
def test_sequential_stage_search_uses_about_log2_hybrids(culprit: str) -> None:
    groups = groups_of(STAGES)
    oracle = Oracle(lambda c: f"{culprit}.1" in c)
    oracle.seen = {frozenset(): "good", frozenset().union(*(g.ids for g in groups)): "bad"}  # preconditions
    verdict = search(groups, oracle, jobs=1)
    assert (verdict.kind, verdict.stage, verdict.units) == ("culprit", culprit, (f"{culprit}.1",))
    assert verdict.sufficient and verdict.necessary and verdict.minimal
    prefixes = [
        c for c in oracle.seen if c and any(c == frozenset().union(*(g.ids for g in groups[:m])) for m in range(1, 8))
    ]
    assert len(prefixes) <= math.ceil(math.log2(len(groups)))
    # beyond GOOD and BAD: log2(8) prefixes + sufficient + necessary + ddmin over 2 units
    assert oracle.hybrids - 2 <= math.ceil(math.log2(len(groups))) + 1 + 1 + 2


def test_parallel_stage_search_is_one_wave_of_single_stages() -> None:
    groups = groups_of(STAGES)
    oracle = Oracle(lambda c: "s5.0" in c)
    verdict = search(groups, oracle, jobs=len(groups))
    assert verdict.stage == "s5" and verdict.units == ("s5.0",)
    assert oracle.waves[0] == [g.ids for g in groups]


def test_interaction_across_stages_is_reported_with_both_units() -> None:
    groups = groups_of({"a": 3, "b": 3, "c": 3, "d": 3})
    oracle = Oracle(lambda c: {"b.2", "d.0"} <= c)
    verdict = search(groups, oracle, jobs=1)
    assert verdict.kind == "interaction"
    assert sorted(verdict.units) == ["b.2", "d.0"] and verdict.stages == ("b", "d")
    assert verdict.sufficient is False and verdict.necessary is True and verdict.minimal


def test_several_sufficient_stages_name_the_first_and_list_the_others() -> None:
    groups = groups_of({"a": 1, "b": 1, "c": 1})
    verdict = search(groups, Oracle(lambda c: bool({"b.0", "c.0"} & c)), jobs=3)
    assert verdict.stage == "b" and verdict.also_sufficient == ("c",) and verdict.necessary is False


def test_skipped_hybrids_make_the_answer_ambiguous() -> None:
    groups = groups_of({"a": 1, "b": 1, "c": 1})
    everything = frozenset({"a.0", "b.0", "c.0"})
    oracle = Oracle(lambda c: "b.0" in c, skip=lambda c: c == frozenset({"a.0"}))
    verdict = search(groups, oracle, jobs=1)
    assert verdict.kind == "ambiguous" and verdict.candidates == ("a", "b")
    assert everything not in oracle.seen or oracle.seen[everything] == "bad"


def test_ddmin_finds_a_one_minimal_pair_among_many() -> None:
    units = [f"u{i}" for i in range(16)]
    oracle = Oracle(lambda c: {"u3", "u12"} <= c)
    found, minimal = ddmin(units, oracle)
    assert sorted(found) == ["u12", "u3"] and minimal
    assert oracle.hybrids < 40


def test_predicate_language() -> None:
    metrics = flatten({"foreground_fraction": 0.0, "mean_iou": 0.4, "iou": {"foreground": 0.1, "1": 0.2}})
    assert metrics["iou.foreground"] == 0.1
    pred = Predicate("foreground_fraction == 0 or (mean_iou < 0.2 and not iou.foreground > 0.5)")
    pred.resolve_keys(list(metrics))
    assert pred(metrics)
    assert not Predicate("iou['1'] > 0.3")(metrics)
    assert Predicate("0.3 < mean_iou <= 0.5")(metrics)


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('true')", "mean_iou + 1 > 2", "[x for x in y]", "mean_iou < ", "f(1) == 0", "lambda: 1"],
)
def test_predicate_rejects_anything_but_comparisons(expr: str) -> None:
    with pytest.raises(PredicateError):
        Predicate(expr)


def test_unknown_key_lists_available_and_suffix_matches() -> None:
    with pytest.raises(PredicateError, match="available keys: accuracy, foreground_fraction"):
        Predicate("fg > 0").resolve_keys(["accuracy", "foreground_fraction"])
    nested = ["iou.foreground", "dice.foreground", "loss.total"]
    with pytest.raises(PredicateError) as caught:
        Predicate("totl > 1").resolve_keys(nested, "eval.json")
    assert str(caught.value) == "--fail-if names 'totl', not in eval.json; did you mean 'total'?", "a unique suffix"
    with pytest.raises(PredicateError) as caught:
        Predicate("foreground == 0").resolve_keys(nested, "eval.json")
    assert str(caught.value) == (
        "--fail-if names 'foreground', which several keys of eval.json end with (iou.foreground, dice.foreground): "
        "write one of them whole"
    )
    pred = Predicate("foreground_fraction == 0")
    pred.resolve_keys(["eval.foreground_fraction"])
    assert pred.metric_keys == ["eval.foreground_fraction"] and pred({"eval.foreground_fraction": 0})
    with pytest.raises(UnjudgeableError):
        pred({"accuracy": 1})


def test_yaml_is_read_as_pyyaml_safe_load_reads_it_with_libyaml_where_built_in() -> None:
    text = "label_map: {0: 0, 255: 1}\nthreshold: 0.5\nsizes: [64, 128]\nname: 'x'\nflag: yes\nempty:\n"
    assert reading.load_yaml(text) == yaml.safe_load(text)
    assert reading.load_yaml(text.encode()) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError):
        reading.load_yaml("a: [1, 2")
    with pytest.raises(yaml.constructor.ConstructorError):
        reading.load_yaml("!!python/object/apply:os.system ['true']")
    if yaml.__with_libyaml__:
        assert reading._LOADER is yaml.CSafeLoader


def test_an_mlflow_runs_logged_configuration_is_laid_back_where_params_yaml_has_it() -> None:
    """Stage runs log their whole configuration with dotted keys (`prepare.label_map.255`) and DVC's hashes of
    their data (`deps.<path>`); runs of an older pipeline logged their own section's keys alone."""
    committed = {
        "prepare": {"label_map": {0: 0, 255: 1}, "seed": 0},
        "evaluate": {"threshold": 0.5, "postprocess": "argmax"},
    }
    params = copy.deepcopy(committed)
    logged = {
        "prepare.label_map.0": "0",
        "prepare.label_map.255": "255",
        "prepare.seed": "0",
        "evaluate.threshold": "0.75",
        "deps.data/prepared": "0a1b.dir",
    }
    refs._set_logged(params, params["evaluate"], logged)
    assert params == {
        "prepare": {"label_map": {0: 0, 255: 255}, "seed": 0},
        "evaluate": {"threshold": 0.75, "postprocess": "argmax"},
    }
    other_map = copy.deepcopy(committed)
    refs._set_logged(other_map, other_map["evaluate"], {"prepare.label_map.0": "0", "prepare.label_map.128": "1"})
    assert other_map["prepare"]["label_map"] == {0: 0, 128: 1}, "the run's mapping, not the commit's with it laid over"
    older = copy.deepcopy(committed)
    refs._set_logged(older, older["evaluate"], {"threshold": "0.75", "postprocess": "threshold"})
    assert older["evaluate"] == {"threshold": 0.75, "postprocess": "threshold"}
    assert older["prepare"] == committed["prepare"]
