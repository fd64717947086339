"""The reports a person reads: report.html with the declared plot images side by side, report.md, the summary."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from mlflow.tracking import MlflowClient

from segbisect.project import figures
from segbisect_toy import bad_commit, bisect

IMAGE = re.compile(r"<img alt='([^']*)' src='data:image/svg\+xml;base64,([^']*)'>")


def test_report_html_shows_the_same_plot_under_good_bad_and_the_culprit(
    toy: Path, tmp_path: Path, tracking_uri: str
) -> None:
    """BAD = a collapsing learning rate plus a harmless data change, so the culprit hybrid is not BAD itself."""
    bad_commit(toy, params={"train": {"lr": 2.0}, "prepare": {"n": 42}})
    summary = tmp_path / "summary.md"
    code, report, _ = bisect(toy, "good", "bad", "--summary-md", str(summary), mlflow=True)
    assert code == 0 and report["verdict"] == "culprit"
    sides = report["figures"]["sides"]
    assert [s["label"] for s in sides] == ["GOOD", "BAD", "culprit"]
    culprit = next(h for h in report["hybrids"] if h["id"] == sides[2]["hybrid"])
    assert culprit["from_bad"] == [u["id"] for u in report["culprit"]["units"]] and culprit["outcome"] == "bad"
    [image] = report["figures"]["images"]
    assert image["path"] == "eval/plots/foreground.svg"

    folder = Path(report["results_dir"])
    html = (folder / "report.html").read_text()
    assert "Verdict: culprit" in html and "train.lr" in html
    drawn = [base64.b64decode(data).decode() for _, data in IMAGE.findall(html)]
    assert drawn == [Path(kept).read_text(encoding="utf-8") for kept in image["kept"]]
    widths = [re.search(r'rect width="(\d+)"', svg).group(1) for svg in drawn]  # type: ignore[union-attr]
    assert widths[0] != "0" and widths[1:] == ["0", "0"], "GOOD draws foreground, BAD and the culprit none"
    assert [h["id"] for h in report["hybrids"]] == re.findall(r"<tr><td>(h\d+)", html)
    table = (folder / "report.md").read_text()
    for hybrid in report["hybrids"]:
        stages = round(sum(hybrid["stage_seconds"].values()), 2)
        assert set(hybrid["stage_seconds"]) == set(hybrid["executed"])
        shown = f"| {hybrid['seconds']} (stages {stages:g}) |" if hybrid["executed"] else f"| {hybrid['seconds']} |"
        assert shown in table and stages < hybrid["seconds"]

    links = re.findall(r"!\[foreground\.svg\]\(([^)]+)\)", (folder / "report.md").read_text())
    assert [(folder / link).resolve() for link in links] == [Path(kept).resolve() for kept in image["kept"]]
    text = summary.read_text()
    assert text.startswith("**segbisect: culprit**") and "`train.lr` | `0.1` | `2.0`" in text

    client = MlflowClient(tracking_uri)
    [session] = client.search_runs(
        [client.get_experiment_by_name("segbisect").experiment_id], "tags.`segbisect.role` = 'session'"
    )
    attached = {a.path for a in client.list_artifacts(session.info.run_id, "report")}
    assert attached == {"report/report.json", "report/report.md", "report/report.html"}


def test_an_unwritable_summary_path_is_a_usage_error_before_anything_runs(toy: Path, tmp_path: Path) -> None:
    bad_commit(toy, params={"train": {"lr": 2.0}})
    code, report, _ = bisect(toy, "good", "bad", "--summary-md", str(tmp_path / "missing" / "summary.md"))
    assert code == 2 and report["verdict"] == "usage-error"
    assert report["error"] == f"{tmp_path / 'missing' / 'summary.md'}: its folder {tmp_path / 'missing'} does not exist"
    assert not (toy / "segbisect-results").exists()


def test_kept_images_stay_inside_the_workspace_and_are_capped(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "plots").mkdir(parents=True)
    for i in range(figures.MAX_KEPT + 5):
        (workspace / "plots" / f"{i:03d}.png").write_bytes(b"png")
    (workspace / "plots" / "table.csv").write_text("a,b\n")
    (tmp_path / "secret.png").write_bytes(b"outside")
    (workspace / "plots" / "000-link.png").symlink_to(tmp_path / "secret.png")
    kept = figures.keep(workspace, ["plots", "../secret.png", "absent"], tmp_path / "kept")
    assert list(kept) == [f"plots/{i:03d}.png" for i in range(figures.MAX_KEPT)]
    assert all(Path(path).read_bytes() == b"png" for path in kept.values())
