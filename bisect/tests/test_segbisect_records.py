"""segbisect's typed records without DVC runs: flat diffs, metrics choice, judging, journal schema, report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from segbisect.core.attempt import Attempt, AttemptStatus
from segbisect.core.errors import UsageError
from segbisect.core.hybrid import Hybrid
from segbisect.core.judge import Judge
from segbisect.core.predicate import Predicate
from segbisect.core.units import UnitKind
from segbisect.core.verdict import Outcome, Verdict, VerdictKind
from segbisect.project import metrics
from segbisect.project.changes import diff
from segbisect.project.dvc_run import Events
from segbisect.project.refs import Reference
from segbisect.project.runner import describe_exit, failed_status
from segbisect.project.snapshot import ABSENT, Snapshot, StageSnap
from segbisect.reporting import html as report_html
from segbisect.reporting import render
from segbisect.reporting.report import Findings, HybridRow, build
from segbisect.session.journal import SCHEMA, Header, HybridRecord, Journal, journal_id, known_hybrids

METRICS = "eval/metrics.json"


def snapshot(root: Path, params: dict[str, Any], files: dict[str, str] | None = None) -> Snapshot:
    """Two stages: `prep` reads params section `prep` and prep.py; `train` reads section `train`."""
    root.mkdir(parents=True)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    stages = [
        StageSnap("prep", params={("params.yaml", ("prep",))}, files={"prep.py"}),
        StageSnap("train", params={("params.yaml", ("train",))}),
    ]
    dvcyaml = {"stages": {"prep": {"cmd": "python prep.py"}, "train": {"cmd": "python train.py"}}}
    ref = Reference(root.name, "git", "0" * 40)
    return Snapshot(ref, root, stages, {"params.yaml": params}, dvcyaml, metrics_files=[METRICS])


def units_of(tmp_path: Path, good: dict[str, Any], bad: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    inventory = diff(snapshot(tmp_path / "good", good), snapshot(tmp_path / "bad", bad))
    return {u.name: (u.good, u.bad) for u in inventory.units}


def test_nested_params_differ_leaf_by_leaf_keeping_key_types(tmp_path: Path) -> None:
    good = {"prep": {"label_map": {0: 0, 255: 1}, "size": 64}, "train": {"lr": 0.01, "opt": {"momentum": 0.9}}}
    bad = {"prep": {"label_map": {0: 0, 255: 255}, "size": 64}, "train": {"lr": 0.01, "opt": {"momentum": 0.5}}}
    inventory = diff(snapshot(tmp_path / "good", good), snapshot(tmp_path / "bad", bad))
    found = {u.name: u for u in inventory.units}
    assert sorted(found) == ["prep.label_map.255", "train.opt.momentum"]
    assert found["prep.label_map.255"].keypath == ("prep", "label_map", 255)
    assert found["prep.label_map.255"].kind == UnitKind.PARAM and found["prep.label_map.255"].stages == ("prep",)
    assert len(inventory.base) == len(inventory.bad) > len(found)


def test_a_value_against_a_mapping_is_one_unit_at_the_shorter_key(tmp_path: Path) -> None:
    found = units_of(
        tmp_path, {"prep": {"aug": True}, "train": {}}, {"prep": {"aug": {"flip": True, "crop": 0.5}}, "train": {}}
    )
    assert found == {"prep.aug": (True, {"flip": True, "crop": 0.5})}


def test_an_empty_mapping_has_no_leaf_of_its_own(tmp_path: Path) -> None:
    found = units_of(tmp_path, {"prep": {"aug": {}}, "train": {}}, {"prep": {"aug": {"flip": True}}, "train": {}})
    assert found == {"prep.aug.flip": (ABSENT, True)}


def test_files_and_stage_definitions_are_leaves_too(tmp_path: Path) -> None:
    good = snapshot(tmp_path / "good", {"prep": {}, "train": {}}, {"prep.py": "x = 1\n"})
    bad = snapshot(tmp_path / "bad", {"prep": {}, "train": {}}, {"prep.py": "x = 2\n"})
    bad.dvcyaml["stages"]["train"]["cmd"] = "python train.py --fast"
    units = {u.name: u for u in diff(good, bad).units}
    assert sorted(units) == ["dvc.yaml stages.train", "prep.py"]
    assert units["prep.py"].summary == "+1 -1 lines" and units["dvc.yaml stages.train"].kind == UnitKind.STAGE


def test_metrics_file_is_the_one_whose_keys_the_predicate_names() -> None:
    predicate = Predicate("foreground_fraction <= all_zero_threshold")
    files = ["dvclive/metrics.json", METRICS]
    found = {"dvclive/metrics.json": {"loss": 0.1}, METRICS: {"foreground_fraction": 0, "all_zero_threshold": 0.01}}
    assert metrics.choose(files, predicate, found) == METRICS
    assert metrics.choose(files, predicate, {METRICS: found[METRICS]}) is None, "undecided until every file is read"
    with pytest.raises(UsageError) as caught:
        metrics.choose(files, Predicate("loss > 1 and foregound_fraction == 0"), found)
    assert (
        str(caught.value)
        == f"--fail-if names 'foregound_fraction', not in {METRICS}; did you mean 'foreground_fraction'?"
    )
    with pytest.raises(UsageError) as caught:
        metrics.choose(files, Predicate("accuracy < 0.5"), found)
    assert str(caught.value) == (
        f"--fail-if names 'accuracy', not in dvclive/metrics.json or {METRICS}; "
        "available keys: all_zero_threshold, foreground_fraction, loss"
    )
    with pytest.raises(UsageError, match=r"which no single metrics file holds \(dvclive/metrics\.json, eval/"):
        metrics.choose(files, Predicate("loss > 1 and foreground_fraction == 0"), found)
    assert metrics.choose(files, None, {}) == METRICS, "a --run check shows the last file as evidence"
    assert metrics.choose([], None, {}) is None
    with pytest.raises(UsageError, match="no metrics file"):
        metrics.choose([], predicate, {})


def attempt(**metrics_by_file: dict[str, Any]) -> Attempt:
    return Attempt(status=AttemptStatus.OK, executed=("train",), metrics=dict(metrics_by_file), seconds=1.5)


def test_judge_reads_its_metrics_file_and_says_why_it_cannot() -> None:
    judge = Judge(Predicate("fg == 0"), None, "m.json")
    assert judge.one(attempt(**{"m.json": {"fg": 0}})) == (Outcome.BAD, "fg == 0 holds")
    assert judge.one(attempt(**{"m.json": {"fg": 0.2}}))[0] == Outcome.GOOD
    assert judge.one(attempt())[0] == Outcome.SKIP
    crashed = Attempt(status=AttemptStatus.CRASH, reason="stage 'train' failed (exit 2): error: x")
    assert judge.one(crashed) == (Outcome.SKIP, "stage 'train' failed (exit 2): error: x")
    noisy = judge.all([attempt(**{"m.json": {"fg": 0}}), attempt(**{"m.json": {"fg": 0.3}})])
    assert noisy[0] == Outcome.FLAKY and "repeats disagree (bad, good)" in noisy[1]
    failed = Attempt(status=AttemptStatus.ERROR, reason="stage 'train' failed (killed by signal 9)")
    assert judge.all([attempt(**{"m.json": {"fg": 0}}), failed]) == (Outcome.ERROR, failed.reason)


def test_a_hybrid_survives_the_journal_round_trip(tmp_path: Path) -> None:
    hybrid = Hybrid(
        id="h01",
        label="GOOD",
        fingerprint="f" * 64,
        from_bad=(),
        sides={"train": "same"},
        attempts=(attempt(**{"m.json": {"fg": 0.1}}),),
        check=None,
        outcome=Outcome.GOOD,
        note="ok",
    )
    journal = Journal(tmp_path / "s", Header(session="s"))
    journal.append(HybridRecord.from_hybrid(hybrid))
    [record] = known_hybrids(tmp_path).hybrids["f" * 64]
    assert record.attempts == hybrid.attempts
    assert HybridRow.of(hybrid, "m.json").metrics == {"fg": 0.1} and HybridRow.of(hybrid, None).metrics == {}
    assert json.loads(journal.path.read_text().splitlines()[0])["schema"] == SCHEMA


def test_a_journal_of_another_schema_is_set_aside_not_misread(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    old = [{"type": "session", "session": "s"}, {"type": "hybrid", "fingerprint": "a", "attempts": [{"status": "ok"}]}]
    (folder / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert known_hybrids(tmp_path).hybrids == {}
    journal = Journal(folder, Header(session="s"))
    assert journal.set_aside == folder / "journal.schema1.jsonl" and journal.set_aside.is_file()
    assert journal.records(HybridRecord) == [] and journal.records(Header)[0].schema == SCHEMA


def test_verdict_messages() -> None:
    culprit = Verdict(kind=VerdictKind.CULPRIT, stage="train", units=("param:a",), sufficient=True, necessary=True)
    assert culprit.names_a_change and culprit.message() == (
        "stage 'train' is sufficient and necessary; minimal change: 1 unit(s)"
    )
    ambiguous = Verdict(kind=VerdictKind.AMBIGUOUS, candidates=("prep", "train"))
    assert not ambiguous.names_a_change and ambiguous.message().endswith("among: prep, train")


@pytest.mark.parametrize(
    ("status", "expected", "said"),
    [
        (-9, AttemptStatus.ERROR, "killed by signal 9"),
        (137, AttemptStatus.ERROR, "killed by signal 9 (exit 137)"),
        (75, AttemptStatus.ERROR, "exit 75"),
        (2, AttemptStatus.CRASH, "exit 2"),
        (255, AttemptStatus.CRASH, "exit 255"),
    ],
)
def test_a_signal_is_the_environment_however_the_shell_reports_it(
    status: int, expected: AttemptStatus, said: str
) -> None:
    events = Events(rc=1, command_status=status)
    assert failed_status(events) == expected and describe_exit(status) == said


def test_the_journal_tells_what_this_sessions_runs_executed_and_keeps_its_id_until_fresh(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    run_id = journal_id(folder, fresh=False)
    journal = Journal(folder, Header(session="s", id=run_id))
    ran = Hybrid(
        id="h01",
        label="GOOD",
        fingerprint="ran-here",
        from_bad=(),
        sides={},
        attempts=(attempt(),),
        check=None,
        outcome=Outcome.GOOD,
        note="",
    )
    journal.append(HybridRecord.from_hybrid(ran))
    journal.append(HybridRecord.from_hybrid(replace(ran, fingerprint="from-another-session", reused=True)))
    assert journal.executed_here() == {"ran-here"}
    assert journal_id(folder, fresh=False) == run_id != journal_id(folder, fresh=True)


def test_reports_count_the_stage_executions_of_earlier_runs_of_the_session(tmp_path: Path) -> None:
    """h01 ran in an earlier run of this session, h02 in another session, h03 in this run."""
    good = snapshot(tmp_path / "good", {"prep": {"n": 1}, "train": {"lr": 0.1}})
    bad = snapshot(tmp_path / "bad", {"prep": {"n": 2}, "train": {"lr": 2.0}})
    ran = {"h01": ("evaluate",), "h02": ("train", "evaluate"), "h03": ("prep", "train", "evaluate")}
    hybrids = [
        Hybrid(
            id=h,
            label=h,
            fingerprint=h,
            from_bad=(),
            sides={},
            attempts=(Attempt(status=AttemptStatus.OK, executed=executed),),
            check=None,
            outcome=Outcome.GOOD,
            note="",
            reused=h != "h03",
        )
        for h, executed in ran.items()
    ]
    findings = replace(untracked_findings(good, bad, hybrids, tmp_path), earlier=frozenset({"h01"}))
    report = build(findings, VerdictKind.AMBIGUOUS, "undecided")
    assert (report.stage_executions, report.stage_executions_earlier, report.stage_executions_total) == (4, 1, 6)
    said = "4 (1 in earlier runs of this session)"
    assert f"stage executions: {said}" in render.markdown(report, tmp_path)
    assert f"stage executions: {said}" in report_html.page(report)
    assert "4 stage executions (1 in earlier runs of this session);" in render.summary(report)
    alone = build(replace(findings, earlier=frozenset()), VerdictKind.AMBIGUOUS, "undecided")
    assert "stage executions: 3\n" in render.markdown(alone, tmp_path) and "earlier" not in render.summary(alone)


def test_a_cluster_placement_reads_back_typed_and_is_written_as_it_was_journaled(tmp_path: Path) -> None:
    """The attempt keeps where a cluster ran it as a plain record; the report reads it as a `Placement` and writes
    the same record to report.json. A hybrid run here has none: `{}` in report.json, `-` in the node column."""
    good = snapshot(tmp_path / "good", {"prep": {"n": 1}, "train": {"lr": 0.1}})
    bad = snapshot(tmp_path / "bad", {"prep": {"n": 2}, "train": {"lr": 2.0}})
    where = {"node": "ab" * 28, "host": "n1", "seconds": {"fetch": 0.5, "run": 2.0, "push": 0.25}}
    placed = {**where, "restored_from": {"prep": "h01 on node abababab"}}
    repeated = Attempt(status=AttemptStatus.OK, placement=where)
    runs = {"h01": (repeated, replace(repeated, placement=placed)), "h02": (attempt(),)}
    hybrids = [
        Hybrid(
            id=h,
            label=f"<b>{h}</b>",
            fingerprint=h,
            from_bad=(),
            sides={},
            attempts=attempts,
            check=None,
            outcome=Outcome.GOOD,
            note="",
        )
        for h, attempts in runs.items()
    ]
    report = build(untracked_findings(good, bad, hybrids, tmp_path), VerdictKind.AMBIGUOUS, "undecided")
    cluster, local = report.hybrids
    assert cluster.placement is not None and cluster.placement.node_name == "abababab"
    assert cluster.placement.restored_from == {"prep": "h01 on node abababab"} and local.placement is None
    written = json.loads(json.dumps(report.to_dict()))["hybrids"]
    assert [h["placement"] for h in written] == [placed, {}]
    table = render.markdown(report, tmp_path)
    assert "| abababab (fetch/run/push s: 0.5/2/0.25) | prep: h01 on node abababab |" in table
    assert table.count(" - (fetch/run/push s: -) | - |") == 1
    page = report_html.page(report)
    assert "&lt;b&gt;h01&lt;/b&gt;" in page and "<b>h01</b>" not in page, "the user's text is escaped"
    assert "<span title='prep from h01 on node abababab'>abababab</span>" in page


def untracked_findings(good: Snapshot, bad: Snapshot, hybrids: list[Hybrid], folder: Path) -> Findings:
    """What a session without tracking would report of `hybrids` between `good` and `bad`."""
    return Findings(
        good=good.ref,
        bad=bad.ref,
        inventory=diff(good, bad),
        hybrids=hybrids,
        metrics_file=METRICS,
        key_metrics=[],
        folder=folder,
        tracking="off",
    )
