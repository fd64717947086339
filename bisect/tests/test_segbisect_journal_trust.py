"""What segbisect takes from a journal: only records it can read, and only results of the same numeric environment.

A journaled hybrid is reused when the machine's numeric environment (CPU, kernel-selecting flags and variables,
library versions, the installed packages) is the one that computed it; otherwise it runs again, unless
`--reuse-any-environment` says to reuse it (with one warning listing what differs). A record segbisect did not
write (hand-edited, foreign) is skipped with a warning naming its file and line, never a traceback, and `--json`
prints its object whatever ends the command.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from segbisect import cli
from segbisect.cli import app
from segbisect.core import machine
from segbisect.core.attempt import Attempt, AttemptStatus
from segbisect.core.hybrid import Hybrid
from segbisect.core.verdict import Outcome
from segbisect.session.journal import Header, HybridRecord, Journal, known_hybrids
from segbisect_toy import bad_commit, bisect, sh, unit_names

COLLAPSE = {"train": {"lr": 2.0}}


def hybrid(fingerprint: str, status: AttemptStatus = AttemptStatus.OK) -> Hybrid:
    attempt = Attempt(status=status, executed=("train",), metrics={"m.json": {"fg": 0.1}}, seconds=1.5)
    return Hybrid(
        id="h01",
        label="GOOD",
        fingerprint=fingerprint,
        from_bad=(),
        sides={"train": "same"},
        attempts=(attempt,),
        check=None,
        outcome=Outcome.GOOD,
        note="ok",
    )


def test_the_numeric_environment_is_compared_without_the_host() -> None:
    here = machine.describe()
    twin = {**here, "host": "another-node-of-the-same-kind"}
    assert machine.environment_differences(twin, machine.describe()) == [], "two identical nodes compute alike"
    moved = {
        **here,
        "cpu": "Another CPU",
        "variables": {**here["variables"], "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI_2"},
        "libraries": {**here["libraries"], "dvc": "2.0.0"},
        "packages": "0" * 16,
    }
    assert machine.environment_differences(moved, machine.describe()) == [
        f"cpu 'Another CPU' (here '{here['cpu']}')",
        f"ONEDNN_MAX_CPU_ISA=AVX2_VNNI_2 (here {here['variables'].get('ONEDNN_MAX_CPU_ISA') or 'unset'})",
        f"dvc 2.0.0 (here {here['libraries'].get('dvc') or 'not installed'})",
        "other installed packages",
    ]
    older = {key: here[key] for key in ("host", "cpu", "cpu_flags", "python")}
    assert machine.environment_differences(older, machine.describe()) == [
        "not recorded: cpus, gpus, libraries, packages, variables"
    ]


def test_invalid_journal_records_are_skipped_each_with_a_warning_naming_its_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "s", Header(session="s", id="0123"))
    journal.append(HybridRecord.from_hybrid(hybrid("valid")))
    passed = HybridRecord.from_hybrid(hybrid("passed")).to_record()
    passed["attempts"][0]["status"] = "passed"
    slow = HybridRecord.from_hybrid(hybrid("text-seconds")).to_record()
    slow["attempts"][0]["seconds"] = "1.5"
    with open(journal.path, "a", encoding="utf-8") as out:
        out.write("".join(json.dumps(record) + "\n" for record in (passed, slow, {"type": "hybrid", "attempts": []})))
        out.write('["not", "a", "record"]\n{"type": "verdict"}\n{"type": "hybrid", "fingerprint": "torn", "att')
    known = known_hybrids(tmp_path)
    assert list(known.hybrids) == ["valid"] and known.hybrids["valid"][0].origin == "s"
    path = journal.path
    assert known.skipped == [
        f"{path}:3: invalid journal record, skipped (attempts[0].status: 'passed' is not one of ok, crash, error)",
        f"{path}:4: invalid journal record, skipped (attempts[0].seconds: '1.5' is not a number)",
        f"{path}:5: invalid journal record, skipped (fingerprint: missing)",
        f"{path}:6: invalid journal record, skipped (not a JSON object)",
        f"{path}:7: invalid journal record, skipped (type: 'verdict' is not one of session, hybrid, mlflow)",
        f"{path}: skipped 1 line(s) not JSON, cut short by a kill or edited (line 8)",
    ]
    assert [r.fingerprint for r in journal.records(HybridRecord)] == ["valid"]


def test_json_is_printed_for_usage_errors_the_command_line_parser_finds() -> None:
    for args, said in ((["good", "--json"], "Missing argument 'BAD'"), (["a", "b", "--json", "-j", "0"], "--jobs")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        report = json.loads(result.stdout)
        assert report["verdict"] == "usage-error" and report["exit_code"] == 2 and said in report["error"]


def test_json_is_printed_for_an_unexpected_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug in segbisect")

    monkeypatch.setattr(cli, "bisect", broken)
    result = CliRunner().invoke(app, ["good", "bad", "--json", "--fail-if", "x > 1"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "verdict": "error",
        "error": "RuntimeError: a bug in segbisect",
        "exit_code": 1,
    }
    assert "Traceback" in result.stderr and "a bug in segbisect" in result.stderr


@dataclass(frozen=True)
class FirstRun:
    """The toy bisected once (GOOD `good`, BAD `bad`: training collapses), its results folder and report."""

    repo: Path
    results: Path
    report: dict[str, Any]

    def results_copy(self, dest: Path, edit: Callable[[dict[str, Any]], None] = lambda _: None) -> Path:
        """The results folder copied to `dest`, `edit` applied to every hybrid record of its journal."""
        shutil.copytree(self.results, dest)
        journal = next(dest.glob("*/journal.jsonl"))
        records = [json.loads(line) for line in journal.read_text().splitlines()]
        for record in records:
            if record["type"] == "hybrid":
                edit(record)
        journal.write_text("".join(json.dumps(r) + "\n" for r in records))
        return dest


@pytest.fixture(scope="module")
def first_run(toy_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    root = tmp_path_factory.mktemp("journal-trust")
    repo = Path(shutil.copytree(toy_template, root / "toy", symlinks=True))
    bad_commit(repo, COLLAPSE)
    environ = dict(os.environ)
    try:
        code, report, _ = bisect(repo, "good", "bad", "--results", str(root / "results"))
    finally:
        os.environ.clear()
        os.environ.update(environ)
    assert code == 0 and unit_names(report) == ["train.lr"], report
    yield FirstRun(repo, root / "results", report)


def another_environment(record: dict[str, Any]) -> None:
    for attempt in record["attempts"]:
        attempt["machine"]["cpu"] = "Another CPU"
        attempt["machine"].setdefault("libraries", {})["dvc"] = "2.0.0"


def warnings_of(human: str, text: str) -> list[str]:
    return [line for line in human.splitlines() if line.startswith("warning:") and text in line]


@pytest.mark.e2e
def test_results_of_another_environment_run_again_unless_reused_with_a_warning(
    first_run: FirstRun, tmp_path: Path
) -> None:
    """Another session (BAD named by its commit) finds the first session's journal, edited as if an earlier dvc on
    another CPU had written it: it runs every hybrid again and journals them; with the flag it reuses them all.
    """
    earlier = Path(first_run.report["results_dir"]).name
    bad_sha = sh(first_run.repo, "git", "rev-parse", "bad").strip()
    results = first_run.results_copy(tmp_path / "again", another_environment)
    code, report, human = bisect(first_run.repo, "good", bad_sha, "--results", str(results))
    assert code == 0 and unit_names(report) == ["train.lr"]
    assert not any(h["reused"] for h in report["hybrids"])
    assert all(h["machine"] == machine.describe() for h in report["hybrids"]), "every hybrid ran here again"
    said = warnings_of(human, "another environment")
    assert len(said) == 1 and earlier in said[0] and "cpu 'Another CPU'" in said[0] and "dvc 2.0.0" in said[0]
    assert "--reuse-any-environment" in said[0]

    code, resumed, human = bisect(first_run.repo, "good", "bad", "--results", str(results))
    rerun_by = Path(report["results_dir"]).name
    assert code == 0 and {h["reused_from"] for h in resumed["hybrids"]} == {rerun_by}, "the re-runs were journaled"
    assert not warnings_of(human, "another environment")

    results = first_run.results_copy(tmp_path / "reuse", another_environment)
    code, reused, human = bisect(first_run.repo, "good", bad_sha, "--results", str(results), "--reuse-any-environment")
    assert code == 0 and unit_names(reused) == ["train.lr"] and reused["stage_executions"] == 0
    assert all(h["reused"] and h["reused_from"] == earlier for h in reused["hybrids"])
    said = warnings_of(human, "another environment")
    assert len(said) == 1 and earlier in said[0] and "cpu 'Another CPU'" in said[0] and "dvc 2.0.0" in said[0]
    folder = Path(reused["results_dir"])
    first = reused["hybrids"][0]["id"]
    assert f"| {first} (reused from {earlier}) |" in (folder / "report.md").read_text()
    assert f"{first} (reused from {earlier})" in (folder / "report.html").read_text()


@pytest.mark.e2e
def test_a_foreign_record_in_the_journal_is_skipped_with_a_warning_never_a_traceback(
    first_run: FirstRun, tmp_path: Path
) -> None:
    """The session's own journal, one attempt's status hand-edited to `passed`: that hybrid runs again."""
    edited: list[str] = []

    def passed(record: dict[str, Any]) -> None:
        if not edited:
            record["attempts"][0]["status"] = "passed"
            edited.append(record["fingerprint"])

    results = first_run.results_copy(tmp_path / "results", passed)
    journal = next(results.glob("*/journal.jsonl"))
    line = 1 + next(i for i, text in enumerate(journal.read_text().splitlines()) if '"passed"' in text)
    code, report, human = bisect(first_run.repo, "good", "bad", "--results", str(results))
    assert code == 0 and unit_names(report) == unit_names(first_run.report) and "Traceback" not in human
    said = warnings_of(human, f"{journal}:{line}: invalid journal record")
    assert len(said) == 1 and "'passed' is not one of ok, crash, error" in said[0]
    assert [h["reused"] for h in report["hybrids"] if h["fingerprint"] in edited] == [False]
    assert all(h["reused"] for h in report["hybrids"] if h["fingerprint"] not in edited)


@pytest.mark.e2e
def test_a_session_run_again_says_its_results_came_from_an_earlier_run(first_run: FirstRun, tmp_path: Path) -> None:
    """The same GOOD and BAD again: every hybrid is reused from the session's own journal, which the reports say
    in words (the session's own name would tell nothing), and the console table explains its mark."""
    results = first_run.results_copy(tmp_path / "same")
    code, again, human = bisect(first_run.repo, "good", "bad", "--results", str(results))
    assert code == 0 and all(h["reused"] for h in again["hybrids"])
    first = again["hybrids"][0]["id"]
    folder = Path(again["results_dir"])
    assert f"| {first} (reused from an earlier run) |" in (folder / "report.md").read_text(encoding="utf-8")
    assert f"{first} (reused from an earlier run)" in (folder / "report.html").read_text(encoding="utf-8")
    assert f"{first}*" in human and "* reused from a journal, not run again" in human
