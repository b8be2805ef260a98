"""Every ``fixtures/bad/<case>/expected.json`` runs through ``kpconv ingest`` (CliRunner).

``expected.json``: ``args`` (relative to the case folder), ``exit_code``, ``message`` (a substring of
stderr, with its location) and optionally ``reason`` (a problem reason the ``--report`` must list).
Each case runs in a copy of its folder so nothing is written into the checkout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FIXTURES
from kpconv.cli import cli
from kpconv.errors import Location
from kpconv.data.problems import REASONS

CASES = sorted(p.parent for p in (FIXTURES / "bad").glob("*/expected.json"))


def _run(case: Path, tmp_path: Path, monkeypatch, extra):
    work = tmp_path / case.name
    shutil.copytree(case, work)
    monkeypatch.chdir(work)
    expected = json.loads((work / "expected.json").read_text())
    args = list(expected["args"])
    result = CliRunner().invoke(cli, ["ingest", *args, *extra])
    return expected, result, work


def test_there_are_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch):
    expected, result, work = _run(case, tmp_path, monkeypatch, ["-o", "out.jsonl"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == expected["exit_code"], result.output
    assert expected["message"] in result.stderr, result.stderr
    out = work / "out.jsonl"
    if expected["exit_code"] == 0:
        lines = out.read_text().splitlines()
        assert len(lines) >= 2  # header + at least one record
    else:
        assert not out.exists()
        assert not list(work.glob(".out.jsonl.*"))  # no temporary left behind either


@pytest.mark.parametrize("case", [c for c in CASES if "reason" in json.loads((c / "expected.json").read_text())],
                         ids=lambda c: c.name)
def test_bad_input_report(case, tmp_path, monkeypatch):
    expected, result, work = _run(case, tmp_path, monkeypatch, ["-o", "out.jsonl", "--report", "report.jsonl"])
    assert result.exit_code == expected["exit_code"], result.output
    reason = expected["reason"]
    assert reason in REASONS
    problems = [json.loads(line) for line in (work / "report.jsonl").read_text().splitlines()]
    hits = [p for p in problems if p["reason"] == reason]
    assert hits, problems
    assert hits[0]["severity"] == REASONS[reason][0]
    assert "file" in hits[0] and ("line" in hits[0] or "record" in hits[0])
    # the report holds the located message that stderr shows without --report (after "first: " when
    # the run failed)
    p = hits[0]
    where = Location(p.get("file"), p.get("line"), p.get("record"), p.get("field"))
    assert f"{where}: {p['message']}".startswith(expected["message"].split("first: ")[-1])
    # the summary table on stderr names the reason, also when the run failed
    assert reason in result.stderr
