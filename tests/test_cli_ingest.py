"""``kpconv ingest`` through the command line: output to stdout or a file, the summary on stderr,
``--report``, ``--strict``, format detection messages, exit codes, no TensorFlow import, a pipe."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FIXTURES, REPO
from kpconv.cli import cli
from kpconv.data.formats import KNOWN

COCO = str(FIXTURES / "coco" / "annotations.json")


def run(*args):
    return CliRunner().invoke(cli, ["ingest", *map(str, args)])


def records(text):
    lines = [json.loads(line) for line in text.splitlines()]
    assert "kpconv_manifest" in lines[0]
    return lines[0], lines[1:]


def test_stdout_by_default_and_summary_on_stderr():
    r = run(COCO)
    assert r.exit_code == 0, r.output
    header, recs = records(r.stdout)
    assert header["source"]["format"] == "coco" and len(recs) == 7
    assert r.stderr == "ingest: coco: wrote 7 record(s) from 5 image(s) to stdout; skipped 0\n"
    r = run(COCO, "-o", "-")
    assert r.exit_code == 0 and records(r.stdout)[1] == recs


def test_quiet_prints_nothing_on_stderr():
    r = CliRunner().invoke(cli, ["-q", "ingest", COCO])
    assert r.exit_code == 0 and r.stderr == "" and r.stdout


def test_output_file(tmp_path):
    out = tmp_path / "sub" / "m.jsonl"
    r = run(COCO, "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert f"to {out}" in r.stderr
    assert len(out.read_text().splitlines()) == 8
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.jsonl"]  # no temporary left


def test_failure_leaves_an_existing_output_untouched(tmp_path):
    out = tmp_path / "m.jsonl"
    out.write_text("previous\n")
    bad = FIXTURES / "bad" / "coco-size-mismatch" / "annotations.json"
    r = run(bad, "--strict", "-o", out)
    assert r.exit_code == 1
    assert "--strict: 1 problem(s), nothing written" in r.stderr
    assert "size_mismatch" in r.stderr  # the summary table, also on failure
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
    r = run(bad, "--strict")  # to stdout: nothing at all
    assert r.exit_code == 1 and r.stdout == ""


def test_problems_summary_and_report(tmp_path):
    src = [FIXTURES / "coco-splits" / n for n in ("person_keypoints_train2017.json", "person_keypoints_val2017.json")]
    r = run(*src, "-o", tmp_path / "m.jsonl")
    assert r.exit_code == 0
    lines = r.stderr.splitlines()
    assert lines[0] == "ingest: coco: wrote 7 record(s) from 5 image(s) to " + str(tmp_path / "m.jsonl") + "; skipped 3"
    assert lines[1].split() == ["reason", "severity", "count", "meaning"]
    assert [ln.split()[:3] for ln in lines[2:5]] == [["crowd", "note", "1"], ["no_keypoints", "note", "1"],
                                                    ["other_category", "note", "1"]]
    assert lines[5].startswith("first: ") and "record 90" in lines[5]
    rep = tmp_path / "r.jsonl"
    r = run(*src, "-o", tmp_path / "m2.jsonl", "--report", rep)
    assert r.exit_code == 0 and "first:" not in r.stderr
    problems = [json.loads(line) for line in rep.read_text().splitlines()]
    assert sorted(p["reason"] for p in problems) == ["crowd", "no_keypoints", "other_category"]
    assert all(p["severity"] == "note" and p["file"].endswith("train2017.json") for p in problems)
    # notes do not fail --strict
    assert run(*src, "--strict", "-o", tmp_path / "m3.jsonl").exit_code == 0


def test_verbose_lists_every_problem():
    src = FIXTURES / "coco-splits" / "person_keypoints_train2017.json"
    r = CliRunner().invoke(cli, ["-v", "ingest", str(src)])
    assert r.exit_code == 0
    assert sum(1 for ln in r.stderr.splitlines() if ln.startswith("  ")) == 3


def test_format_auto_detects_each_fixture():
    for fmt, src in [("coco", COCO), ("csv", FIXTURES / "csv" / "labels.csv"),
                     ("csv", FIXTURES / "csv-long" / "labels.csv")]:
        r = run(src, "--format", "auto")
        assert r.exit_code == 0 and records(r.stdout)[0]["source"]["format"] == fmt


def test_unknown_format_lists_the_formats(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    r = run(p)
    assert r.exit_code == 1
    msg = r.stderr.strip()
    assert msg.startswith(f"kpconv: error: cannot tell the annotation format of {p}; use --format with one of: ")
    for name in ("coco", "csv"):
        assert name in msg


def test_ambiguous_input_names_the_candidates(tmp_path):
    """A JSON file that is both a COCO file and a kpconv JSON file: kpconv asks for --format."""
    doc = json.loads((FIXTURES / "kpconv-json" / "annotations.json").read_text())
    doc.update(json.loads((FIXTURES / "coco" / "annotations.json").read_text()))
    doc["images"] = json.loads((FIXTURES / "kpconv-json" / "annotations.json").read_text())["images"]
    p = tmp_path / "both.json"
    p.write_text(json.dumps(doc))
    r = run(p)
    assert r.exit_code == 1
    assert f"{p} could be any of: " in r.stderr and "choose one with --format" in r.stderr
    assert "coco" in r.stderr and "kpconv-json" in r.stderr


def test_explicit_format_skips_detection():
    r = run(FIXTURES / "csv" / "labels.csv", "-f", "coco")
    assert r.exit_code == 1 and "invalid JSON" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--format", "xml", COCO], "Invalid value for '-f' / '--format'"),
    (["--keypoints", "a,,b", COCO], "Invalid value for '--keypoints'"),
    (["--flip-pairs", "a-b", COCO], "Invalid value for '--flip-pairs'"),
    (["/no/such/file.json"], "does not exist"),
    ([], "Missing argument 'SOURCES...'"),
])
def test_bad_options_exit_2(args, message):
    r = run(*args)
    assert r.exit_code == 2 and message in r.stderr


def test_category_and_keypoints_options(tmp_path):
    r = run(FIXTURES / "coco-categories" / "annotations.json")
    assert r.exit_code == 1 and "several categories have keypoints" in r.stderr
    r = run(FIXTURES / "coco-categories" / "annotations.json", "--category", "paw")
    assert r.exit_code == 0 and records(r.stdout)[0]["keypoints"] == ["left_toe", "right_toe"]
    r = run(FIXTURES / "csv" / "labels.csv", "--keypoints", "tail,nose", "--flip-pairs", "tail:nose")
    assert r.exit_code == 0
    assert records(r.stdout)[0]["flip_pairs"] == [[0, 1]]
    r = run(FIXTURES / "csv" / "labels.csv", "--flip-pairs", "left_eye:snout")
    assert r.exit_code == 1 and "--flip-pairs: unknown keypoint name(s) snout" in r.stderr


def test_images_option(tmp_path):
    shutil.copy(FIXTURES / "coco" / "annotations.json", tmp_path / "annotations.json")
    r = run(tmp_path / "annotations.json")
    assert r.exit_code == 1 and "no record could be written" in r.stderr  # images are not beside it
    r = run(tmp_path / "annotations.json", "--images", FIXTURES / "coco")
    assert r.exit_code == 0
    assert records(r.stdout)[0]["images_root"] == (FIXTURES / "coco").as_posix()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_ingest_does_not_import_tensorflow():
    code = ("import sys\n"
            "from kpconv.cli import main\n"
            "try:\n"
            f"    main(['-q', 'ingest', {COCO!r}, '-o', '-'])\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "bad = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.') or m == 'keras')\n"
            "assert not bad, bad\n"
            "print('ok', file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().endswith("ok") and p.stdout.startswith('{"kpconv_manifest":1')


def test_shell_pipe():
    kpconv = Path(sys.executable).parent / "kpconv"
    assert kpconv.exists(), "the kpconv console script is not installed (pip install -e .)"
    cmd = f"'{kpconv}' -q ingest '{FIXTURES / 'csv' / 'labels.csv'}' | head -2"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120,
                       env=_env())
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["source"]["format"] == "csv"
    assert json.loads(lines[1])["image"] == "images/img001.png"


def test_format_choices_match_registry():
    from kpconv.data import formats

    assert sorted(formats.names()) == sorted(KNOWN)  # --format choices are the registered readers


def test_pipe_closed_early_is_quiet(tmp_path):
    """``kpconv ingest big.json | head -1``: the reader of the pipe stops early; kpconv stops without
    a traceback (Click's broken-pipe handling, exit 1)."""
    kpconv = Path(sys.executable).parent / "kpconv"
    assert kpconv.exists(), "the kpconv console script is not installed (pip install -e .)"
    doc = json.loads((FIXTURES / "coco" / "annotations.json").read_text())
    ann = doc["annotations"][0]
    doc["annotations"] = [{**ann, "id": i + 1} for i in range(3000)]  # ~1 MB of manifest, > a pipe buffer
    (tmp_path / "big.json").write_text(json.dumps(doc))
    shutil.copytree(FIXTURES / "coco" / "images", tmp_path / "images")
    cmd = f"'{kpconv}' -q ingest '{tmp_path / 'big.json'}' 2>'{tmp_path / 'err'}' | head -1"
    p = subprocess.run(["bash", "-c", cmd + "; echo \"status=${PIPESTATUS[0]}\""], capture_output=True,
                       text=True, timeout=120, env=_env())
    first, status = p.stdout.splitlines()
    assert json.loads(first)["source"]["format"] == "coco"
    assert status in ("status=0", "status=1")
    assert "Traceback" not in (tmp_path / "err").read_text()
