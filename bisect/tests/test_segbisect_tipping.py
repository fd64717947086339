"""Where a numeric culprit tips: the value search (fast, pure) and `--tipping-point` on the toy project (e2e, real
git and DVC): a known boundary found to the tolerance within the budget, integers kept integers, `--jobs 2`
probing two values at once, and a param whose effect is not monotone reported as such.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segbisect.core.predicate import Predicate
from segbisect.core.terms import CULPRIT, FIX
from segbisect.core.tipping import (
    Answer,
    Axis,
    Conclusion,
    Number,
    Probe,
    Scale,
    Tipping,
    TippingPoint,
    conclude,
    next_values,
    tippable,
)
from segbisect.core.units import Inventory, Unit, UnitKind
from segbisect.core.verdict import Outcome
from segbisect.project.snapshot import digest
from segbisect.reporting.tipping import plot
from segbisect.tracking.store import mlflow_installed
from segbisect_toy import bad_commit, bisect, commit, dvc, sh
from test_segbisect_dvc import STAGES, project, set_n

Oracle = Callable[[Number], Outcome]


def fails_above(boundary: float) -> Oracle:
    return lambda value: Outcome.BAD if value > boundary else Outcome.GOOD


def fails_below(boundary: float) -> Oracle:
    return lambda value: Outcome.BAD if value < boundary else Outcome.GOOD


def probe_all(axis: Axis, oracle: Oracle, jobs: int = 1, budget: int = 6) -> tuple[Conclusion, list[list[Number]]]:
    """Run the search against `oracle` as a session would: GOOD's and BAD's values first, then wave after wave."""
    probes = [Probe(value=v, outcome=oracle(v), hybrid="side", wave=0) for v in (axis.good, axis.bad)]
    waves: list[list[Number]] = []
    while values := next_values(axis, probes, jobs, budget):
        waves.append(values)
        probes += [Probe(value=v, outcome=oracle(v), hybrid=f"p{len(probes)}", wave=len(waves)) for v in values]
    return conclude(axis, probes), waves


@pytest.mark.parametrize(
    ("good", "bad", "oracle", "boundary"),
    [
        (0.1, 2.0, fails_above(1.0), 1.0),  # log: a learning rate
        (0.5, 0.995, fails_above(0.98901), 0.98901),  # linear: a threshold
        (2.0, 0.01, fails_below(0.3), 0.3),  # log, falling from GOOD to BAD
        (-0.01, -5.0, fails_below(-1.7), -1.7),  # log on negative values
        (-1.0, 3.0, fails_above(0.4), 0.4),  # linear across zero
    ],
)
def test_a_known_boundary_is_bracketed_within_the_tolerance_and_budget(
    good: float, bad: float, oracle: Oracle, boundary: float
) -> None:
    axis = Axis(good=good, bad=bad)
    found, waves = probe_all(axis, oracle, budget=12)
    assert found.answer == Answer.BOUNDARY and found.within_tolerance, (found, waves)
    assert found.passes_up_to is not None and found.fails_from is not None
    assert oracle(found.passes_up_to) == Outcome.GOOD and oracle(found.fails_from) == Outcome.BAD
    low, high = sorted((found.passes_up_to, found.fails_from))
    assert low <= boundary <= high
    assert axis.close(low, high)
    probed = [v for wave in waves for v in wave]
    assert all(min(good, bad) < v < max(good, bad) for v in probed)
    assert len(set(probed)) == len(probed), "no value is probed twice"


def test_the_default_tolerance_and_budget_find_the_toys_learning_rate_boundary() -> None:
    found, waves = probe_all(Axis(good=0.1, bad=2.0), fails_above(1.0))
    assert found.within_tolerance and sum(map(len, waves)) <= 6
    assert found.passes_up_to is not None and found.fails_from is not None
    assert found.fails_from / found.passes_up_to <= 1.25


def test_a_linear_axis_of_positive_values_stops_at_the_same_factor_as_a_log_one() -> None:
    """A threshold from 0.75 to 1.0 is a factor of 1.33 wide: wider than the default 1.25, so it is probed (the
    difference relative to the larger value, 0.25, would call it close already), and the answer is 1.25 wide at most.
    """
    axis = Axis(good=0.75, bad=1.0)
    assert axis.scale == Scale.LINEAR and not axis.close(0.75, 1.0)
    found, waves = probe_all(axis, fails_above(0.995))
    assert waves and found.within_tolerance and found.passes_up_to is not None and found.fails_from is not None
    assert found.fails_from / found.passes_up_to <= 1.25 and found.passes_up_to <= 0.995 < found.fails_from


def test_a_spent_budget_stops_the_search_with_the_interval_so_far() -> None:
    found, waves = probe_all(Axis(good=1e-6, bad=1.0), fails_above(3e-3), budget=3)
    assert sum(map(len, waves)) == 3
    assert found.answer == Answer.BOUNDARY and not found.within_tolerance
    assert found.passes_up_to is not None and found.fails_from is not None
    assert found.passes_up_to <= 3e-3 < found.fails_from


@pytest.mark.parametrize(
    ("good", "bad", "scale"),
    [
        (0.1, 2.0, Scale.LOG),
        (1e-4, 1e-1, Scale.LOG),
        (-0.1, -5.0, Scale.LOG),
        (0.5, 0.9, Scale.LINEAR),
        (1.0, 10.0, Scale.LINEAR),  # a factor of exactly 10 is not more than 10
        (0, 100, Scale.LINEAR),  # zero has no logarithm
        (-1.0, 100.0, Scale.LINEAR),  # nor does a change of sign
    ],
)
def test_log_scale_only_for_same_sign_non_zero_values_more_than_ten_times_apart(
    good: float, bad: float, scale: Scale
) -> None:
    assert Axis(good=good, bad=bad).scale == scale


def test_a_log_axis_probes_geometrically_and_a_linear_one_evenly() -> None:
    log = Axis(good=0.001, bad=1000.0)
    assert log.between(log.good, log.bad, 2) == [0.1, 10.0]
    linear = Axis(good=0.0, bad=0.9)
    assert linear.between(linear.good, linear.bad, 2) == [0.3, 0.6]


def test_probed_floats_are_short_and_ordered() -> None:
    axis = Axis(good=0.1, bad=2.0)
    values = axis.between(0.1, 2.0, 3)
    assert values == sorted(values) and all(len(repr(v)) <= 5 for v in values), values


@pytest.mark.parametrize(("good", "bad", "boundary"), [(0, 20, 7), (1, 1000, 300), (64, 2, 9), (0, 4, 2)])
def test_integers_stay_integers_and_stop_at_adjacent_ones(good: int, bad: int, boundary: int) -> None:
    oracle = fails_above(boundary - 0.5) if bad > good else fails_below(boundary + 0.5)
    found, waves = probe_all(Axis(good=good, bad=bad), oracle, budget=20)
    assert all(type(v) is int for wave in waves for v in wave), waves
    assert found.answer == Answer.BOUNDARY and found.within_tolerance
    assert found.passes_up_to is not None and found.fails_from is not None
    assert type(found.passes_up_to) is int and type(found.fails_from) is int
    assert {found.passes_up_to, found.fails_from} <= set(range(min(good, bad), max(good, bad) + 1))
    assert oracle(found.passes_up_to) == Outcome.GOOD and oracle(found.fails_from) == Outcome.BAD


def test_the_integers_between_are_probed_all_when_few() -> None:
    axis = Axis(good=3, bad=7)
    assert axis.between(3, 7, 4) == [4, 5, 6]
    assert Axis(good=7, bad=3).between(7, 3, 4) == [6, 5, 4]


@pytest.mark.parametrize("jobs", [1, 2, 3, 4])
def test_each_wave_probes_jobs_values_and_the_first_at_least_two(jobs: int) -> None:
    found, waves = probe_all(Axis(good=0.1, bad=100.0), fails_above(7.0), jobs=jobs, budget=40)
    assert found.within_tolerance
    assert len(waves[0]) == max(jobs, 2)
    assert all(len(wave) == jobs for wave in waves[1:]), waves


def test_the_last_wave_takes_what_is_left_of_the_budget() -> None:
    _, waves = probe_all(Axis(good=0.1, bad=100.0), fails_above(7.0), jobs=4, budget=6)
    assert [len(wave) for wave in waves] == [4, 2]


def band(low: float, high: float, beyond: float) -> Oracle:
    """Fails in [low, high) and from `beyond` on: passes, fails, passes again, fails."""
    return lambda v: Outcome.BAD if low <= v < high or v >= beyond else Outcome.GOOD


def test_a_value_that_passes_beyond_a_failing_one_is_non_monotone_not_a_boundary() -> None:
    found, waves = probe_all(Axis(good=0, bad=20), band(5, 10, 15))
    assert waves == [[7, 13]], "the first wave's two values show it at once"
    assert found.answer == Answer.NON_MONOTONE
    assert found.passes_up_to is None and found.fails_from is None
    assert found.describe(CULPRIT) == "good at 0, bad at 7, good at 13, bad at 20"


def test_non_monotone_is_seen_with_one_job_too_even_where_the_first_wave_misses_it() -> None:
    """With one job the first wave still probes two values; where both miss the band, later waves may not see it,
    and the answer is the boundary they bracket, which holds for the values probed.
    """
    found, waves = probe_all(Axis(good=0.0, bad=30.0), band(3.0, 4.0, 25.0))
    assert len(waves[0]) == 2
    assert found.answer == Answer.BOUNDARY and found.fails_from is not None and found.fails_from >= 25.0


def test_an_untestable_probe_names_no_boundary() -> None:
    axis = Axis(good=0.1, bad=2.0)

    def crashes_in_the_middle(value: Number) -> Outcome:
        return Outcome.SKIP if 0.5 < value < 0.9 else fails_above(1.0)(value)

    found, waves = probe_all(axis, crashes_in_the_middle)
    assert found.answer == Answer.UNTESTABLE and found.untestable is not None
    assert found.passes_up_to is None and waves[-1] and found.untestable.value in waves[-1]
    assert next_values(axis, [found.untestable], 1, 6) == []


def test_only_numeric_params_are_tippable() -> None:
    def unit(good: Any, bad: Any, kind: UnitKind = UnitKind.PARAM) -> Unit:
        return Unit(id="param:a", kind=kind, name="a", stages=("s",), path="p.yaml", good=good, bad=bad, summary="")

    assert tippable(unit(0.1, 2.0)) and tippable(unit(1, 5)) and tippable(unit(1, 2.5))
    assert not tippable(unit(True, False)), "a switch is not a quantity"
    assert not tippable(unit("a", "b")) and not tippable(unit(1, None)) and not tippable(unit(1.0, math.inf))
    assert not tippable(unit(1, 2, UnitKind.FILE))


def test_a_probe_is_fingerprinted_by_its_value_so_bads_value_is_bads_hybrid() -> None:
    lr = Unit(
        id="param:train.lr",
        kind=UnitKind.PARAM,
        name="train.lr",
        stages=("train",),
        path="params.yaml",
        keypath=("train", "lr"),
        good=0.1,
        bad=2.0,
        summary="0.1 -> 2.0",
    )
    base = {"param:train.lr": digest(0.1), "param:train.momentum": digest(0.5)}
    inventory = Inventory(base, {**base, "param:train.lr": digest(2.0)}, [lr])
    middle = inventory.probe(lr, 0.45, digest(0.45))
    at_bad = inventory.probe(lr, 2.0, digest(2.0))
    at_good = inventory.probe(lr, 0.1, digest(0.1))
    assert middle.bad == 0.45 and middle.sets == lr.id and middle.keypath == lr.keypath and middle.id != lr.id
    assert inventory.fingerprint(frozenset({at_bad.id})) == inventory.fingerprint(frozenset({lr.id}))
    assert inventory.fingerprint(frozenset({at_good.id})) == inventory.fingerprint(frozenset())
    assert inventory.fingerprint(frozenset({middle.id})) not in {
        inventory.fingerprint(frozenset({lr.id})),
        inventory.fingerprint(frozenset()),
    }
    assert inventory.unit(middle.id) is middle and inventory.unit(lr.id) is lr
    assert inventory.taken(frozenset({middle.id})) == (middle.id,)


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        ("foreground_fraction == 0", ("foreground_fraction", 0.0)),
        ("0.2 > mean_iou", ("mean_iou", 0.2)),
        ("loss >= -0.5", ("loss", -0.5)),
        ("a < 1 and b > 2", None),
        ("a <= b", ("a", "b")),
        ("foreground_fraction <= all_zero_threshold", ("foreground_fraction", "all_zero_threshold")),
        ("0 < a < 1", None),
        ("a == True", None),
    ],
)
def test_the_threshold_is_the_number_one_comparison_holds_a_metric_to(
    text: str, bound: tuple[str, float | str] | None
) -> None:
    assert Predicate(text).bound == bound


def a_tipping_point(seen: list[tuple[Number, Outcome, float | None]], wave_of: dict[Number, int]) -> TippingPoint:
    """A search's record from the probes it saw (value, outcome, metric), GOOD's value first and BAD's last."""
    axis = Axis(good=seen[0][0], bad=seen[-1][0])
    probes = tuple(
        Probe(value=v, outcome=o, hybrid=f"h{i:02d}", wave=wave_of.get(v, 0), metric=m)
        for i, (v, o, m) in enumerate(seen, 1)
    )
    return TippingPoint(
        param="train.lr",
        unit="param:train.lr",
        axis=axis,
        tipping=Tipping(),
        conclusion=conclude(axis, probes),
        metric="foreground_fraction",
        threshold=0.0,
        probes=probes,
    )


def test_the_record_and_sentence_of_a_boundary() -> None:
    found = a_tipping_point(
        [(0.1, Outcome.GOOD, 0.5), (0.94, Outcome.GOOD, 0.5), (1.06, Outcome.BAD, 0.0), (2.0, Outcome.BAD, 0.0)],
        {0.94: 1, 1.06: 1},
    )
    record = found.to_dict(CULPRIT)
    assert (record["passes_up_to"], record["fails_from"], record["monotone"], record["scale"]) == (
        0.94,
        1.06,
        True,
        "log",
    )
    assert [p["value"] for p in record["probes"]] == [0.1, 0.94, 1.06, 2.0]
    assert found.sentence(CULPRIT) == "train.lr passes up to 0.94, fails from 1.06 (2 probes)"
    assert found.sentence(FIX).startswith("train.lr stays broken up to 0.94, fixed from 1.06")
    assert json.loads(json.dumps(record)) == record


def test_the_plot_draws_the_metric_rising_to_the_right_with_the_threshold_at_zero() -> None:
    found = a_tipping_point(
        [(2.0, Outcome.GOOD, 0.5), (1.2, Outcome.GOOD, 0.4), (0.5, Outcome.BAD, 0.0), (0.1, Outcome.BAD, 0.0)],
        {1.2: 1, 0.5: 1},
    )
    chart = plot(found, CULPRIT)
    xs = [p.x for p in chart.points]
    assert xs == sorted(xs), "values rise to the right whichever side is GOOD"
    assert chart.threshold is not None and chart.threshold.at == max(p.y for p in chart.points)
    assert chart.band is not None and [t.label for t in chart.band] == ["0.5", "1.2"]


def test_tipping_limits_without_the_search_are_a_usage_error(tmp_path: Path) -> None:
    code, report, _ = bisect(tmp_path, "good", "bad", "--tipping-budget", "3")
    assert code == 2 and "--tipping-budget" in report["error"] and "--tipping-point" in report["error"]
    code, report, _ = bisect(tmp_path, "good", "bad", "--tipping-point", "--tipping-tolerance", "1")
    assert code == 2 and "--tipping-tolerance 1: must be a factor above 1" in report["error"]


# The toy project, end to end.

# A train step that collapses from warmup 7 on, and in a band of `band` values plus from 15 on.
TRAIN_LINE = 'collapsed = not fg or not bg or p["lr"] > 1 or (p["lr"] > 0.5 and p["momentum"] > 0.9)\n'
EXTRA = 'collapsed = collapsed or p["warmup"] >= 7 or 5 <= p["band"] < 10 or p["band"] >= 15\n'


def good_with_warmup_and_band(toy: Path) -> None:
    """GOOD gains two int params of train: `warmup` (fails from 7 on) and `band` (fails in 5..9, and from 15)."""
    train = (toy / "train.py").read_text()
    assert TRAIN_LINE in train
    (toy / "train.py").write_text(train.replace(TRAIN_LINE, TRAIN_LINE + EXTRA))
    params = (toy / "params.yaml").read_text().replace("  max_n: 45\n", "  max_n: 45\n  warmup: 0\n  band: 0\n")
    (toy / "params.yaml").write_text(params)
    dvc(toy, "repro", "-q")
    commit(toy, "train: warmup and band")


def probes_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in report["tipping_point"]["probes"] if p["wave"]]


@pytest.mark.e2e
def test_the_learning_rate_tips_at_one_found_on_a_log_scale(toy: Path, tmp_path: Path) -> None:
    bad = bad_commit(toy, {"train": {"lr": 2.0}})
    code, report, _ = bisect(toy, "good", bad)
    assert code == 0 and report["tipping_point"] is None
    assert report["message"].endswith("; rerun with --tipping-point to find where train.lr tips")

    summary = tmp_path / "summary.md"
    code, report, shown = bisect(toy, "good", bad, "--tipping-point", "--summary-md", str(summary))
    assert code == 0 and report["verdict"] == "culprit"
    found = report["tipping_point"]
    assert (found["param"], found["scale"], found["answer"], found["monotone"]) == ("train.lr", "log", "boundary", True)
    passes, fails = found["passes_up_to"], found["fails_from"]
    assert passes <= 1.0 < fails and fails / passes <= 1.25, found  # the toy collapses for lr > 1
    assert 2 <= len(probes_of(report)) <= 6
    assert found["metric"] == "foreground_fraction" and found["threshold"] == 0.0
    for probe in found["probes"]:
        assert (probe["metric"] == 0.0) == (probe["outcome"] == "bad") == (probe["value"] > 1.0), probe
    assert f"train.lr passes up to {passes}, fails from {fails}" in report["message"]
    hybrids = {h["id"]: h for h in report["hybrids"]}
    for probe in probes_of(report):
        hybrid = hybrids[probe["hybrid"]]
        assert hybrid["label"] == f"probe train.lr={probe['value']}" and hybrid["sides"]["train"] == "probe"
        assert hybrid["from_bad"] == [f"param:train.lr={probe['value']}"]
        assert not hybrid["reused"] and "train" in hybrid["executed"], "a probe runs the stage its value changes"
    folder = Path(report["results_dir"])
    assert "| `train.lr` | outcome | foreground_fraction | hybrid | wave |" in (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    assert "<svg id='tipping-plot'" in page and "class='threshold'" in page and "<script" not in page
    assert "Probes of `train.lr` (log scale): `" in summary.read_text()
    assert "tipping point of train.lr" in shown

    code, again, _ = bisect(toy, "good", bad, "--tipping-point")
    assert code == 0 and again["tipping_point"] == found, "the same command resumes from the journal"
    assert all(h["reused"] for h in again["hybrids"]) and again["stage_executions"] == report["stage_executions"]


@pytest.mark.e2e
def test_two_jobs_probe_two_values_at_once_each_an_mlflow_child_run(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    bad = bad_commit(toy, {"train": {"lr": 2.0}})
    code, report, _ = bisect(toy, "good", bad, "--tipping-point", "--jobs", "2", mlflow=mlflow_installed())
    assert code == 0 and report["tipping_point"]["answer"] == "boundary"
    waves: dict[int, list[str]] = {}
    for probe in probes_of(report):
        waves.setdefault(probe["wave"], []).append(probe["hybrid"])
    assert waves[1] and all(len(ids) <= 2 for ids in waves.values()) and len(waves[1]) == 2
    journal = Path(report["results_dir"]) / "journal.jsonl"
    attempts = {
        r["id"]: r["attempts"][0] for r in map(json.loads, journal.read_text().splitlines()) if r["type"] == "hybrid"
    }
    first, second = (attempts[i] for i in waves[1])
    assert first["started"] < second["started"] + second["seconds"], "the wave's two probes ran at the same time"
    assert second["started"] < first["started"] + first["seconds"]
    if mlflow_installed():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("segbisect").experiment_id
        [session] = client.search_runs([experiment], "tags.`segbisect.role` = 'session'")
        children = client.search_runs([experiment], "tags.`segbisect.role` = 'hybrid'")
        logged = {c.data.tags["segbisect.hybrid"] for c in children if c.data.tags["side.train"] == "probe"}
        assert logged == {p["hybrid"] for p in probes_of(report)}
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {session.info.run_id}


@pytest.mark.e2e
def test_an_int_param_is_probed_on_integers_down_to_adjacent_ones(toy: Path) -> None:
    good_with_warmup_and_band(toy)
    code, report, _ = bisect(toy, "main", bad_commit(toy, {"train": {"warmup": 20}}), "--tipping-point")
    assert code == 0, report
    found = report["tipping_point"]
    assert (found["param"], found["scale"], found["integer"]) == ("train.warmup", "linear", True)
    assert (found["passes_up_to"], found["fails_from"]) == (6, 7)
    assert all(type(p["value"]) is int for p in found["probes"])
    assert len(probes_of(report)) <= 6


@pytest.mark.e2e
def test_a_param_that_fails_in_a_band_is_reported_non_monotone(toy: Path) -> None:
    good_with_warmup_and_band(toy)
    code, report, _ = bisect(toy, "main", bad_commit(toy, {"train": {"band": 20}}), "--tipping-point")
    assert code == 0 and report["verdict"] == "culprit", "the verdict stands; only the tipping point is withheld"
    found = report["tipping_point"]
    assert (found["answer"], found["monotone"], found["passes_up_to"], found["fails_from"]) == (
        "non-monotone",
        False,
        None,
        None,
    )
    assert [p["outcome"] for p in found["probes"]] == ["good", "bad", "good", "bad"]
    assert "train.band is non-monotone: good at 0, bad at 7, good at 13, bad at 20" in report["message"]
    assert "passes up to" not in report["message"]


@pytest.mark.e2e
def test_a_culprit_that_is_not_one_numeric_param_has_no_tipping_point(toy: Path) -> None:
    bad = bad_commit(toy, {"preprocess": {"mask_interp": "bilinear"}})
    code, report, _ = bisect(toy, "good", bad, "--tipping-point")
    assert code == 0 and report["culprit"]["units"][0]["name"] == "preprocess.mask_interp"
    assert report["tipping_point"] is None
    assert report["message"].endswith("; no tipping point searched: the minimal change is not one numeric param")
    assert not any(h["label"].startswith("probe") for h in report["hybrids"])


@pytest.mark.e2e
def test_on_a_project_of_another_shape_the_commit_and_the_tipping_point_are_found(tmp_path: Path) -> None:
    """Both answers are generic: a dvclive-style project (top-level metrics, two stages, its own check) whose
    `make.n` fails from 6, raised in a commit of its own on the way from GOOD to BAD.
    """
    stages = {**STAGES, "score": {**STAGES["score"], "outs": [{"out": {"cache": False}}]}}
    repo = project(tmp_path / "p", stages, top_level_metrics=["out/metrics.json"])
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "good")
    sh(repo, "git", "tag", "good")
    (repo / "notes.txt").write_text("unrelated\n")
    sh(repo, "git", "add", "notes.txt")
    sh(repo, "git", "commit", "-qm", "an unrelated commit")
    set_n(repo, 9)
    sh(repo, "git", "commit", "-qam", "count to nine")
    raised = sh(repo, "git", "rev-parse", "HEAD").strip()
    code, report, _ = bisect(
        repo, "good", "HEAD", "--fail-if", "fg == 0", "--tipping-point", "--results", str(tmp_path / "r")
    )
    assert code == 0 and [u["name"] for u in report["culprit"]["units"]] == ["make.n"]
    (unit,) = report["culprit"]["units"]
    assert [c["commit"] for c in unit["provenance"]] == [raised] and unit["provenance"][0]["subject"] == "count to nine"
    tipping = report["tipping_point"]
    assert (tipping["answer"], tipping["passes_up_to"], tipping["fails_from"]) == ("boundary", 5, 6)
    assert tipping["integer"] and all(isinstance(p["value"], int) for p in tipping["probes"])
    assert len([p for p in tipping["probes"] if p["wave"] > 0]) <= tipping["budget"]
