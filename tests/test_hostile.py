"""Hostile inputs and kills (issue 10): each ends with a located message and exit 1 (data, files) or 2
(options), no traceback, nothing read outside the images root, nothing partial under a final name, no
process left behind. One test per item; see docs/safety.md."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FIXTURES
from kpconv.cli import cli
from test_shard_helpers import synth_manifest

ROW = "0,4,6,13.5,34,10.5,12,14,8.5,7,8.5,17.5,6,4,6,12,40"


def run(*args, input=None):
    """The CLI in this process; a traceback (any exception but SystemExit) fails the test."""
    result = CliRunner().invoke(cli, ["-q", *map(str, args)], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def data(tmp_path):
    """A copy of fixtures/csv under tmp_path/data, a 'secret' image beside it (outside the root)."""
    shutil.copytree(FIXTURES / "csv", tmp_path / "data")
    shutil.copy(tmp_path / "data" / "images" / "img001.png", tmp_path / "secret.png")
    with open(tmp_path / "secret.png", "ab") as f:
        f.write(b"SECRET-MARKER")           # still a PNG; its bytes are recognisable in a shard
    return tmp_path / "data"


def add_rows(data: Path, *images: str) -> Path:
    """labels.csv plus one row per image path."""
    path = data / "extra.csv"
    text = (data / "labels.csv").read_text()
    path.write_text(text + "".join(f"{im},{ROW}\n" for im in images))
    return path


def report(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest(data: Path, tmp_path: Path, *lines: str) -> Path:
    """A clean manifest of the fixture, plus hand-edited record lines (image paths replaced)."""
    out = tmp_path / "m.jsonl"
    assert run("ingest", data / "labels.csv", "-o", out).exit_code == 0
    rows = out.read_text().splitlines()
    extra = []
    for image in lines:
        rec = json.loads(rows[1])
        rec["image"], rec["instance"] = image, "9"
        extra.append(json.dumps(rec))
    out.write_text("\n".join(rows + extra) + "\n")
    return out


def shard_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.glob("*.tfrecord-*")))


# ------------------------------------------------------------------------ 1. images-root confinement
def test_symlinked_file_outside_root_is_refused_by_ingest(data, tmp_path):
    os.symlink("../../secret.png", data / "images" / "link.png")
    res = run("ingest", add_rows(data, "images/link.png"), "-o", tmp_path / "m.jsonl", "--report", tmp_path / "r.jsonl")
    assert res.exit_code == 0
    problems = [p for p in report(tmp_path / "r.jsonl") if p["reason"] == "path_outside_root"]
    assert len(problems) == 1 and "outside the images root" in problems[0]["message"]
    assert problems[0]["line"] == 9 and problems[0]["field"] == "image"
    assert "link.png" not in (tmp_path / "m.jsonl").read_text()
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1 + 7      # the 7 good records kept


def test_symlinked_directory_outside_root_is_refused_by_ingest(data, tmp_path):
    (tmp_path / "outside").mkdir()
    shutil.copy(tmp_path / "secret.png", tmp_path / "outside" / "s.png")
    os.symlink(tmp_path / "outside", data / "images" / "linkdir")
    res = run("ingest", add_rows(data, "images/linkdir/s.png"), "-o", tmp_path / "m.jsonl",
              "--report", tmp_path / "r.jsonl")
    assert res.exit_code == 0
    assert [p["reason"] for p in report(tmp_path / "r.jsonl")].count("path_outside_root") == 1
    assert "linkdir" not in (tmp_path / "m.jsonl").read_text()
    # accepted on purpose with --allow-outside-root
    assert run("ingest", data / "extra.csv", "-o", tmp_path / "m2.jsonl", "--allow-outside-root").exit_code == 0
    assert "linkdir/s.png" in (tmp_path / "m2.jsonl").read_text()


@pytest.mark.parametrize("escape", ["../secret.png", "ABS", "images/link.png"])
def test_shard_rechecks_manifest_paths(data, tmp_path, escape):
    os.symlink("../../secret.png", data / "images" / "link.png")
    image = str(tmp_path / "secret.png") if escape == "ABS" else escape
    m = manifest(data, tmp_path, image)
    out = tmp_path / "shards"
    res = run("shard", m, "-o", out, "--image-size", "none", "--split", "train=1")
    assert res.exit_code == 0
    skipped = report(out / "skipped.jsonl")
    assert [s["reason"] for s in skipped] == ["path_outside_root"] and skipped[0]["image"] == image
    assert b"SECRET-MARKER" not in shard_bytes(out)
    assert json.loads((out / "dataset_info.json").read_text())["records"] == 7
    res = run("shard", m, "-o", tmp_path / "s2", "--image-size", "none", "--split", "train=1", "--allow-outside-root")
    assert res.exit_code == 0 and b"SECRET-MARKER" in shard_bytes(tmp_path / "s2")


def test_fifo_and_dev_zero_images_do_not_hang(data, tmp_path):
    os.mkfifo(data / "images" / "fifo.png")
    os.symlink("/dev/zero", data / "images" / "zero.png")
    res = run("ingest", add_rows(data, "images/fifo.png", "images/zero.png"), "-o", tmp_path / "m.jsonl",
              "--report", tmp_path / "r.jsonl", "--allow-outside-root")
    assert res.exit_code == 0
    messages = {p["line"]: p["message"] for p in report(tmp_path / "r.jsonl")
                if p["reason"] == "unreadable_image"}
    assert "found a FIFO" in messages[9] and "found a device" in messages[10]
    m = manifest(data, tmp_path, "images/fifo.png", "images/zero.png")
    out = tmp_path / "shards"
    res = run("shard", m, "-o", out, "--image-size", "none", "--split", "train=1", "--allow-outside-root")
    assert res.exit_code == 0
    assert sorted(s["message"] for s in report(out / "skipped.jsonl")) == [
        "expected a regular image file, found a FIFO", "expected a regular image file, found a device"]


def test_image_size_cap(data, tmp_path, monkeypatch):
    from kpconv.data import imageinfo

    monkeypatch.setattr(imageinfo, "MAX_IMAGE_BYTES", 200)
    res = run("ingest", data / "labels.csv", "-o", tmp_path / "m.jsonl", "--report", tmp_path / "r.jsonl")
    assert res.exit_code == 1 and "kpconv: error:" in res.output       # every image refused: nothing to write
    assert not (tmp_path / "m.jsonl").exists()
    assert any("more than the cap of 200" in p["message"] for p in report(tmp_path / "r.jsonl"))


# ------------------------------------------------------------------------------ 2. no traceback
DEEP = "[" * 1100 + "]" * 1100


@pytest.mark.parametrize("fmt,text", [
    ("coco", '{"images": %s, "annotations": [], "categories": []}' % DEEP),
    ("labelme", '{"shapes": %s, "imagePath": "x.png"}' % DEEP),
    ("kpconv-json", '{"kpconv_annotations": 1, "x": %s}' % DEEP),
    ("label-studio", '[{"keypointlabels": %s}]' % DEEP),
])
def test_deep_json_is_a_located_error(tmp_path, fmt, text):
    src = tmp_path / "a.json"
    src.write_text(text)
    res = run("ingest", src, "-f", fmt, "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 1
    assert f"{src}:1: invalid JSON: nested deeper than 64 levels" in res.output
    assert os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("wide", [10, 5000])      # few brackets, and more than the numpy count starts at
def test_depth_bound_counts_only_what_nests(wide):
    from kpconv.data import jsonparse

    shallow = "[" + ",".join(["[[1]]"] * wide) + "]"
    assert jsonparse.loads(shallow.encode()) == jsonparse.loads(shallow) == [[[1]]] * wide
    deep = "[" + ",".join(["[[1]]"] * wide) + "," + "[" * 70 + "]" * 70 + "]"
    for text in (deep, deep.encode()):
        with pytest.raises(jsonparse.TooDeep):
            jsonparse.loads(text)


def test_deep_json_in_manifest_and_dataset_info(data, tmp_path):
    m = manifest(data, tmp_path)
    with open(m, "a") as f:
        f.write('{"image": %s}\n' % DEEP)
    out = tmp_path / "shards"
    res = run("shard", m, "-o", out)
    assert res.exit_code == 1 and f"{m}:9: invalid JSON: nested deeper than 64 levels" in res.output
    assert not out.exists()                                 # failed before OUT_DIR was touched
    m.write_text("".join(m.read_text().splitlines(True)[:-1]))
    assert run("shard", m, "-o", out, "--image-size", "32").exit_code == 0
    (out / "dataset_info.json").write_text('{"splits": %s}' % DEEP)
    res = run("inspect", out)
    assert res.exit_code == 1 and "dataset_info.json: invalid JSON: nested deeper than 64 levels" in res.output


def test_yaml_billion_laughs_and_deep_yaml(tmp_path):
    import time

    shutil.copytree(FIXTURES / "yolo", tmp_path / "y")
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        laughs.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    yaml_path = tmp_path / "y" / "data.yaml"
    n = len(yaml_path.read_text().splitlines())
    with open(yaml_path, "a") as f:
        f.write("\n".join(laughs) + "\n")
    start = time.monotonic()
    res = run("ingest", tmp_path / "y", "-o", tmp_path / "m.jsonl")
    assert time.monotonic() - start < 5
    assert res.exit_code == 1
    assert f"{yaml_path}:{n + 2}: invalid YAML: YAML aliases (*name) are not accepted" in res.output
    yaml_path.write_text("kpt_shape: [3, 3]\nx: " + "[" * 2000 + "]" * 2000 + "\n")
    res = run("ingest", yaml_path, "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 1 and f"{yaml_path}:2: invalid YAML: nested deeper than 64 levels" in res.output
    assert not (tmp_path / "m.jsonl").exists()


@pytest.fixture
def shards(data, tmp_path):
    """A finished shard directory of the fixture (train and test), and a copy of its dataset_info.json."""
    m = manifest(data, tmp_path)
    out = tmp_path / "shards"
    assert run("shard", m, "-o", out, "--image-size", "32", "--split", "train=0.5,test=0.5").exit_code == 0
    return out


def _edit_info(out: Path, change):
    info = json.loads((out / "dataset_info.json").read_text())
    change(info)
    (out / "dataset_info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("change,verify_only,message", [
    (lambda d: d.update(flip_pairs=[[1, 1]]), False, "field 'flip_pairs': pair [1, 1] joins a keypoint with itself"),
    (lambda d: d.update(flip_pairs=[[1, 2], [2, 3]]), False, "keypoint 2 is in two flip pairs"),
    (lambda d: d["splits"]["train"].pop("bytes"), True, "field 'checksum': the file was edited"),
    (lambda d: d["splits"]["train"]["shards"][0].pop("sha256"), True, "field 'checksum': the file was edited"),
    (lambda d: d.update(splits=[]), False, "field 'splits': [] is not of type 'object'"),
    (lambda d: d.update(splits={}), False, "field 'splits': {} should be non-empty"),
    (lambda d: d.update(keypoints=None), False, "field 'keypoints': None is not of type 'array'"),
    (lambda d: d.update(records=99), False, "field 'records': 99 record(s), but the splits hold 7"),
    (lambda d: d["splits"]["train"].update(records=99), False, "field 'splits.train.records': 99 record(s)"),
    (lambda d: d["keypoints"].pop(), False, "field 'splits.train.visibility': 6 row(s), expected one per keypoint (5)"),
    (lambda d: d["keypoints"].__setitem__(0, "renamed"), True, "the file was edited"),
    (lambda d: d.update(skeleton=[[0, 3]]), True, "the file was edited"),
    (lambda d: d["image"].update(size=[64, 64]), True, "the file was edited"),
    (lambda d: d["splits"]["train"]["shards"][0].update(file="../../secret.png"), False,
     "field 'splits.train.shards.0.file': '../../secret.png' does not match"),
])
def test_bad_dataset_info_is_located(shards, change, verify_only, message):
    _edit_info(shards, change)
    plain = run("inspect", shards)
    verified = run("inspect", shards, "--verify")
    assert verified.exit_code == 1 and f"{shards / 'dataset_info.json'}: " in verified.output
    assert message in verified.output
    assert plain.exit_code == (0 if verify_only else 1)


def test_dataset_info_image_size_edit_is_caught_record_by_record(shards):
    from kpconv.data.dataset_info import DatasetInfo

    info = DatasetInfo.read(shards)
    info.raw["image"]["size"] = [64, 64]
    info.raw["options"]["image_size"] = [64, 64]
    (shards / "dataset_info.json").write_bytes(info.to_bytes())     # a consistent checksum
    res = run("inspect", shards, "--verify")
    assert res.exit_code == 1
    assert "train.tfrecord-00000-of-00001: record 0: record is 32x32, dataset_info.json's image.size is 64x64" \
        in res.output


def test_huge_tfrecord_length_header(shards):
    import struct

    from kpconv.data.tfrecord import masked_crc32c

    length = struct.pack("<Q", 2 ** 40)
    shard = shards / "train.tfrecord-00000-of-00001"
    shard.write_bytes(length + struct.pack("<I", masked_crc32c(length)) + b"x" * 100)
    res = run("inspect", shards, "--verify")
    assert res.exit_code == 1
    assert "train.tfrecord-00000-of-00001: record 0: record length 1099511627776 is more than" in res.output
    length = struct.pack("<Q", 2 ** 29)             # allowed, but more than the file holds
    shard.write_bytes(length + struct.pack("<I", masked_crc32c(length)) + b"x" * 100)
    res = run("inspect", shards, "--verify")
    assert res.exit_code == 1 and "train.tfrecord-00000-of-00001: record 0: truncated record" in res.output


@pytest.mark.parametrize("where,message", [
    ("DIR", "is a directory: expected a file path"),
    ("FILE/sub", "labels.csv is a file, not a directory"),
    ("/dev/full", "/dev/full: cannot write: No space left on device"),
])
def test_output_path_problems_of_ingest(data, tmp_path, where, message):
    (tmp_path / "DIR").mkdir()
    out = {"DIR": str(tmp_path / "DIR"), "FILE/sub": str(data / "labels.csv" / "sub")}.get(where, where)
    res = run("ingest", data / "labels.csv", "-o", out)
    assert res.exit_code == 1 and f"kpconv: error: {out}" in res.output and message in res.output
    assert os.listdir(tmp_path / "DIR") == [] and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_file_size_limit_and_read_only_folder(data, tmp_path):
    import resource
    import subprocess
    import sys

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    out = tmp_path / "m.jsonl"
    kpconv = [sys.executable, "-c", "from kpconv.cli import main; main()"]
    res = subprocess.run([*kpconv, "ingest", str(data / "labels.csv"), "-o", str(out)], capture_output=True,
                         text=True, preexec_fn=limited, timeout=60)
    assert res.returncode == 1 and f"kpconv: error: {out}: cannot write: File too large" in res.stderr
    assert "Traceback" not in res.stderr and sorted(os.listdir(tmp_path)) == ["data", "secret.png"]
    if os.geteuid() != 0:           # (root writes into read-only folders)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        res = run("ingest", data / "labels.csv", "-o", ro / "m.jsonl")
        assert res.exit_code == 1 and f"{ro / 'm.jsonl'}: cannot write: Permission denied" in res.output


def test_bad_option_values_exit_2(data, tmp_path, shards):
    m = manifest(data, tmp_path)
    for args, message in [(["--shard-size", "1e400"], "Invalid value for '--shard-size'"),
                          (["--shard-size", "nan"], "Invalid value for '--shard-size'"),
                          (["--crop-pad", "nan"], "Invalid value for '--crop-pad': expected a finite number"),
                          (["--workers", "100000"], "Invalid value for '--workers'"),
                          (["--image-size", "65535"], "more than 67108864")]:
        res = run("shard", m, "-o", tmp_path / "new", *args)
        assert res.exit_code == 2 and message in res.output
    res = run("train", shards, "-o", tmp_path / "run", "--alpha", "nan")
    assert res.exit_code == 2 and "Invalid value for '--alpha'" in res.output
    res = run("train", shards, "-o", tmp_path / "run", "--augment-scale", "nan,1")
    assert res.exit_code == 2 and "Invalid value for --augment-scale: expected LO,HI" in res.output
    assert not (tmp_path / "new").exists() and not (tmp_path / "run").exists()


def test_bad_record_values_in_the_manifest(data, tmp_path):
    m = manifest(data, tmp_path)
    lines = m.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["bbox"] = [1e308, 0, 1e308, 1e308]
    m.write_text("\n".join(lines + [json.dumps(bad)]) + "\n")
    res = run("shard", m, "-o", tmp_path / "s", "--crop", "bbox")
    assert res.exit_code == 1 and f"{m}:9: field 'bbox': expected [x, y, w, h], each from 0 to 1" in res.output
    assert not (tmp_path / "s").exists()
    bad = json.loads(lines[1])
    bad["image"], bad["instance"] = "images/a\x00b.png", "7"
    m.write_text("\n".join(lines + [json.dumps(bad)]) + "\n")
    res = run("shard", m, "-o", tmp_path / "s", "--split", "train=1")
    assert res.exit_code == 0
    assert [(s["image"], s["message"]) for s in report(tmp_path / "s" / "skipped.jsonl")] == [
        ("images/a\x00b.png", "image path holds a NUL byte")]


@pytest.mark.parametrize("damage", ["[1]", "{}", "records", "directory"])
def test_resume_with_damaged_state(shards, data, tmp_path, damage):
    m = tmp_path / "m.jsonl"
    good = (shards / "dataset_info.json").read_bytes()
    state = shards / ".kpconv-shard" / "train.tfrecord-00000-of-00001.json"
    if damage == "records":
        s = json.loads(state.read_text())
        s["records"] += 1
        state.write_text(json.dumps(s))
    elif damage == "directory":
        (shards / "train.tfrecord-00000-of-00001").unlink()
        (shards / "train.tfrecord-00000-of-00001").mkdir()
    else:
        state.write_text(damage)
    res = run("shard", m, "-o", shards, "--image-size", "32", "--split", "train=0.5,test=0.5", "--resume")
    if damage == "directory":
        assert res.exit_code == 1
        assert f"{shards / 'train.tfrecord-00000-of-00001'}: a directory is in the way" in res.output
        return
    assert res.exit_code == 0
    assert (shards / "dataset_info.json").read_bytes() == good       # the damaged state's shard was rewritten


def test_failed_shard_leaves_nothing_that_blocks_a_correct_run(data, tmp_path, shards):
    m = manifest(data, tmp_path)
    lines = m.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0]] + [line.replace("images/img", "images/missing") for line in lines[1:]]) + "\n")
    out = tmp_path / "new"
    res = run("shard", bad, "-o", out)
    assert res.exit_code == 1 and "no record could be written" in res.output
    assert not out.exists()                         # created by the failed run, removed
    res = run("shard", bad, "-o", shards, "--overwrite")
    assert res.exit_code == 1 and os.listdir(shards) == []
    assert run("shard", m, "-o", shards).exit_code == 0
    invalid = tmp_path / "invalid.jsonl"
    invalid.write_text("not a manifest\n")
    before = sorted(os.listdir(shards))
    res = run("shard", invalid, "-o", shards, "--overwrite")
    assert res.exit_code == 1 and f"{invalid}:1: invalid JSON" in res.output
    assert sorted(os.listdir(shards)) == before     # validated before OUT_DIR was touched
    (shards / ".kpconv-shard").mkdir(exist_ok=True)
    for name in os.listdir(shards):
        if name != ".kpconv-shard":
            (shards / name).unlink()
    assert run("shard", m, "-o", shards).exit_code == 0     # only the state directory left: not in the way


def test_csv_formula_injection_in_predict_output():
    import csv
    import io

    from kpconv.model.predict import Prediction, Writer

    for fmt, name_row, header in (("csv", 0, ["file", "frame", "time", "width", "height", "'+nose_x", "'+nose_y",
                                                "'+nose_likelihood"]),
                                  ("dlc", 1, ["bodyparts", "'+nose", "'+nose", "'+nose"])):
        out = io.StringIO()
        w = Writer(out, fmt, ["+nose"])
        for image in ("=SUM(1+2).jpg", "@x.png", "ok.png"):
            w.write(Prediction(image, 10, 20, [[-1.0, 2.0, 0.5]]))
        w.close()
        rows = list(csv.reader(io.StringIO(out.getvalue())))
        assert rows[name_row] == header
        body = rows[1:] if fmt == "csv" else rows[3:]
        assert [r[0] for r in body] == ["'=SUM(1+2).jpg", "'@x.png", "ok.png"]
        # numbers stay numbers (dlc in DeepLabCut's pixel convention: kpconv's x - 0.5)
        assert ("-1.000" if fmt == "csv" else "-1.500") in body[0]


# ------------------------------------------------------------------------------- 3. processes and files
KPCONV = [__import__("sys").executable, "-c", "from kpconv.cli import main; main()"]   # (PYTHONPATH: this tree)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):

    return synth_manifest(tmp_path_factory.mktemp("synth"), n_images=40, size=(320, 240), instances=2)


def _children(pid: int):
    """Pids of the processes whose parent is ``pid``, and of theirs (a fork server's workers)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:  # a child may exit between being listed and being read
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            tasks = []
        for task in tasks:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                kids = []
            for c in kids:
                if c not in out:
                    out.add(c)
                    todo.append(c)
    return out


def _alive(pids):
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _kill_main_when_workers_run(args, n=2, env=None):
    import signal
    import subprocess
    import time

    p = subprocess.Popen([*KPCONV, "-q", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env)
    deadline = time.monotonic() + 30
    kids = set()
    while time.monotonic() < deadline and p.poll() is None:
        kids = _children(p.pid)
        if len(kids) >= n:
            break
        time.sleep(0.005)
    assert len(kids) >= n, "the workers did not start"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_shard_workers_die_with_their_parent(synth, tmp_path):
    kids = _kill_main_when_workers_run(["shard", synth, "-o", tmp_path / "out", "--image-size", "128",
                                        "--num-shards", "16", "--workers", "2"])
    assert not _alive(kids)


def _when_writing(p, target: Path, deadline_s: float = 60.0) -> None:
    """Wait until the running command ``p`` has begun writing ``target`` (its temporary file exists)."""
    import time

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and p.poll() is None:
        if any(n.startswith(f".{target.name}.") for n in os.listdir(target.parent)):
            return
        time.sleep(0.005)
    pytest.fail(f"the command never began writing {target} (exit {p.poll()})")


def _temporaries(folder: Path):
    """The temporary files of an atomic output in ``folder`` (``.<name>.<pid>.<random>.tmp``)."""
    return [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")]


def _wait_stopped(p, deadline_s: float = 60.0) -> None:
    """Wait until the process ``p`` is stopped (state T, after SIGSTOP) or has exited."""
    import time

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and p.poll() is None:
        try:
            state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("T", "t", "Z"):
            return
        time.sleep(0.005)
    assert p.poll() is not None, f"process {p.pid} did not stop"


def test_ingest_killed_while_writing_leaves_no_manifest(tmp_path):
    """kill -9 while the manifest is written: nothing under its name; the next run writes it and removes the
    dead run's temporary file."""
    import signal
    import subprocess

    from synth import make_coco     # (benchmarks/, on the path through test_shard_helpers)

    ann = make_coco(tmp_path / "data", 3000, size=(64, 48), instances_per_image=10, seed=0, ext="png", draw=False)
    out = tmp_path / "m.jsonl"
    args = [*KPCONV, "-q", "ingest", str(ann), "-f", "coco", "--images", str(tmp_path / "data" / "images"), "-o", str(out)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _when_writing(p, out)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists() and [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0
    assert out.exists() and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_killed_ingest_leaves_no_temporary_file(data, tmp_path):
    import subprocess

    out = tmp_path / "out.jsonl"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.jsonl.{dead.pid}.abcd1234.tmp"          # left by a killed run
    live = tmp_path / f".out.jsonl.{os.getpid()}.abcd1234.tmp"         # a run still writing
    stale.write_text("x" * 1000)
    live.write_text("x")
    assert run("ingest", data / "labels.csv", "-o", out).exit_code == 0
    assert not stale.exists() and live.exists() and out.exists()


def test_worker_died_message_names_the_right_shard(synth, tmp_path):
    import re
    import subprocess

    out = tmp_path / "out"
    env = dict(os.environ, KPCONV_TEST_KILL_AFTER_RECORDS="7")
    p = subprocess.run([*KPCONV, "-q", "shard", str(synth), "-o", str(out), "--image-size", "48", "--num-shards", "4",
                        "--workers", "2", "--split", "train=1"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    named = set(re.search(r"died while writing (.*?) \(", p.stderr).group(1).split(", "))
    assert "killed by SIGKILL" in p.stderr
    being_written = {n.split(".tmp-")[0][1:] for n in os.listdir(out) if ".tmp-" in n}
    assert named and named <= being_written
    assert not named & {n for n in os.listdir(out) if not n.startswith(".")}      # none of them is complete


def test_skipped_jsonl_is_byte_identical_across_runs(data, tmp_path):
    (data / "images" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 100)
    (data / "images" / "text.png").write_text("not an image at all")
    m = manifest(data, tmp_path, "images/missing.png", "images/junk.png", "images/text.png")
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}"
        assert run("shard", m, "-o", out, "--image-size", "32", "--split", "train=1", "--workers", str(i + 1)).exit_code == 0
        outs.append((out / "skipped.jsonl").read_bytes())
    assert outs[0] == outs[1] and b" at 0x" not in outs[0]
    skipped = report(tmp_path / "s0" / "skipped.jsonl")
    assert sorted(s["reason"] for s in skipped) == ["missing_image", "unreadable_image", "unreadable_image"]
    assert "cannot read image: not an image file Pillow can identify" in [s["message"] for s in skipped]


# --------------------------------------------------------------------- 4. train / eval on a damaged shard
def _damage(shard: Path, how: str) -> None:
    data = bytearray(shard.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_shard_is_named_before_training_reads_it(shards, how):
    from kpconv.data.dataset_info import read_dataset_info
    from kpconv.errors import DatasetInfoError

    shard = shards / "test.tfrecord-00000-of-00001"
    read_dataset_info(shards)                       # verified (and remembered) while intact
    _damage(shard, how)
    with pytest.raises(DatasetInfoError) as e:
        read_dataset_info(shards)                   # what train, eval and pipeline.load read first
    assert e.value.location.file == str(shard)
    assert ("sha256 differs" if how == "flip" else "truncated or changed") in str(e.value)


def test_damaged_shard_without_sha256_is_caught_by_its_crcs(shards):
    from kpconv.data.dataset_info import DatasetInfo, read_dataset_info
    from kpconv.errors import DatasetInfoError

    info = DatasetInfo.read(shards)
    for _, entry in info.shards():
        entry.pop("sha256")
        entry.pop("bytes")
    (shards / "dataset_info.json").write_bytes(info.to_bytes())
    _damage(shards / "train.tfrecord-00000-of-00001", "flip")
    with pytest.raises(DatasetInfoError, match=r"train.tfrecord-00000-of-00001: record \d+: shard is damaged: "
                                               r"data CRC mismatch"):
        read_dataset_info(shards)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_train_on_a_damaged_shard(shards, tmp_path, how):
    _damage(shards / "train.tfrecord-00000-of-00001", how)
    res = run("train", shards, "-o", tmp_path / "run", "--weights", "none", "--epochs", "1")
    assert res.exit_code == 1
    assert f"kpconv: error: {shards / 'train.tfrecord-00000-of-00001'}: shard" in res.output
    assert not (tmp_path / "run").exists()          # nothing in the way of the next run with the same -o


# ----------------------------------------------------------------------- 5. property test, kill loop
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from kpconv.errors import KpconvError, LocatedError  # noqa: E402

READERS = [   # (format, fixture folder, the annotation file mutated, what ingest is given)
    ("coco", "coco", "annotations.json", "annotations.json"),
    ("labelme", "labelme", "img001.json", "."),
    ("kpconv-json", "kpconv-json", "annotations.json", "annotations.json"),
    ("kpconv-json", "kpconv-json", "annotations.jsonl", "annotations.jsonl"),
    ("label-studio", "label-studio", "project-3-at-2024-05-02-10-02-1a2b3c4d.json",
     "project-3-at-2024-05-02-10-02-1a2b3c4d.json"),
    ("cvat", "cvat", "annotations.xml", "annotations.xml"),
    ("dlib", "dlib", "training_with_keypoints.xml", "training_with_keypoints.xml"),
    ("yolo", "yolo", "data.yaml", "."),
    ("yolo", "yolo", "labels/train/img001.txt", "."),
    ("csv", "csv", "labels.csv", "labels.csv"),
    ("dlc", "dlc", "labeled-data/video1/CollectedData_alice.csv", "."),
]
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                            max_leaves=6)


@st.composite
def _mutated(draw, original: bytes):
    """``original`` with a few byte edits (change, insert, delete, duplicate a slice, cut the end) or, for
    JSON, one value anywhere replaced by another JSON value."""
    if original.lstrip()[:1] in (b"{", b"[") and draw(st.booleans()):
        try:
            doc = json.loads(original)
        except ValueError:
            doc = None
        if doc is not None:
            node, key = doc, None
            for _ in range(draw(st.integers(0, 6))):
                children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
                    if isinstance(node, list) else []
                if not children:
                    break
                k, child = children[draw(st.integers(0, len(children) - 1))]
                if not isinstance(child, (dict, list)):
                    key = k
                    break
                node, key = child, None
            if key is not None:
                node[key] = draw(_JSON_VALUES)
                return json.dumps(doc, allow_nan=True).encode()
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "insert", "delete", "dup", "cut"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "set" and data:
            data[i] = draw(st.sampled_from(b'{}[]",:0-9.eE \n\x00\xff<>/=\'' + bytes([draw(st.integers(0, 255))])))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
        elif op == "cut":
            del data[i:]
    return bytes(data)


def _located_or_fine(call):
    """Run ``call``: a result, or a KpconvError (located when it is a LocatedError); anything else fails."""
    try:
        return call()
    except KpconvError as e:
        if isinstance(e, LocatedError):
            assert e.location.file is not None, f"not located: {e}"
        assert str(e)
        return e


@pytest.mark.slow
@pytest.mark.parametrize("fmt,folder,name,given_", READERS, ids=[f"{r[0]}:{r[2]}" for r in READERS])
def test_every_reader_gives_a_located_error_or_records(tmp_path_factory, fmt, folder, name, given_):
    from kpconv.data.formats.base import IngestOptions
    from kpconv.data.ingest import ingest

    work = tmp_path_factory.mktemp(folder)
    shutil.copytree(FIXTURES / folder, work / folder)
    path = work / folder / name
    original = path.read_bytes()

    @PROPERTY
    @given(_mutated(original))
    def check(data):
        path.write_bytes(data)
        out = work / "m.jsonl"
        _located_or_fine(lambda: ingest([str(work / folder / given_)], output=str(out), fmt=fmt,
                                        options=IngestOptions()))

    check()


@pytest.mark.slow
def test_manifest_and_dataset_info_readers_give_a_located_error_or_values(data, tmp_path, shards):
    from kpconv.data.dataset_info import DatasetInfo
    from kpconv.inspect import inspect
    from kpconv.data.manifest import read_manifest

    m = manifest(data, tmp_path)
    original = m.read_bytes()
    info_path = shards / "dataset_info.json"
    info = info_path.read_bytes()

    @PROPERTY
    @given(_mutated(original))
    def manifests(text):
        m.write_bytes(text)
        _located_or_fine(lambda: read_manifest(str(m)))

    @PROPERTY
    @given(_mutated(info))
    def infos(text):
        info_path.write_bytes(text)
        result = _located_or_fine(lambda: DatasetInfo.read(shards))
        if isinstance(result, DatasetInfo):
            _located_or_fine(lambda: inspect(shards))

    manifests()
    infos()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_twenty_random_kills_then_resume_give_the_clean_bytes(tmp_path):
    import random
    import signal
    import subprocess
    import time

    synth = synth_manifest(tmp_path, n_images=100, size=(640, 480), instances=2)
    args = ["shard", synth, "--image-size", "256", "--num-shards", "12", "--split", "train=0.7,test=0.3",
            "--workers", "2"]
    clean = tmp_path / "clean"
    assert run(*args[:1], args[1], "-o", clean, *args[2:]).exit_code == 0
    rng = random.Random(0)
    seen, kills, rounds, attempt = set(), 0, 0, 0
    while kills < 20:           # rounds: a fresh OUT_DIR, killed and resumed until a run finishes
        rounds += 1
        out = tmp_path / f"out{rounds}"
        while True:
            attempt += 1
            assert attempt < 200, "the runs never finish"
            p = subprocess.Popen([*KPCONV, "-q", *map(str, args), "-o", str(out), "--resume"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + rng.uniform(0.2, 0.6)
            kids = set()
            while time.monotonic() < deadline and p.poll() is None:
                kids |= _children(p.pid)
                time.sleep(0.01)
            seen |= kids
            if p.poll() is None and kills < 20:
                workers = sorted(_alive(kids))
                victim = p.pid if not workers or rng.random() < 0.5 else rng.choice(workers)
                os.kill(victim, signal.SIGKILL)
                kills += 1
            try:
                _, err = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                pytest.fail(f"attempt {attempt}: the run did not end after a worker was killed")
            assert "Traceback" not in err, err
            end = time.monotonic() + 10
            while _alive(kids) and time.monotonic() < end:
                time.sleep(0.02)
            assert not _alive(kids), f"attempt {attempt}: processes left behind"
            if p.returncode == 0:
                break
            assert p.returncode == 1 and "worker process died" in err or p.returncode == -signal.SIGKILL, err
            if (out / "dataset_info.json").exists():
                # killed after it wrote dataset_info.json (written last): then the run is complete,
                # checked below byte for byte; a worker's death never leaves one
                assert p.returncode == -signal.SIGKILL, err
                break
        assert shard_bytes_of(out) == shard_bytes_of(clean)
        assert not [n for n in os.listdir(out) if ".tmp" in n]
    assert not _alive(seen)


def shard_bytes_of(out: Path) -> dict:
    from test_shard_helpers import shard_bytes as digests

    return digests(out)


def test_xml_external_entity_is_refused(tmp_path):
    """XXE: defusedxml refuses the declaration; nothing is read from the file it names."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    xml = tmp_path / "annotations.xml"
    xml.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE a [\n<!ENTITY x SYSTEM "file://{secret}">\n]>\n'
                   "<annotations><meta>&x;</meta></annotations>\n")
    res = run("ingest", xml, "-f", "cvat", "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 1 and f"{xml}:3: invalid XML: entity declaration <!ENTITY x ...> refused" in res.output
    assert "SECRET" not in res.output and not (tmp_path / "m.jsonl").exists()


def test_xml_entity_expansion_is_refused(tmp_path):
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    xml = tmp_path / "annotations.xml"
    xml.write_text('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n' + "\n".join(entities) + "\n]>\n"
                   "<annotations><meta>&lol9;</meta></annotations>\n")
    res = run("ingest", xml, "-f", "cvat", "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 1, res.output
    assert f"{xml}:3: invalid XML: entity declaration <!ENTITY lol0 ...> refused (entities can expand without " \
           "bound; annotation files need none)" in res.output
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_shard_file_size_limit(data, tmp_path, workers):
    import resource
    import subprocess

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    m = manifest(data, tmp_path)
    out = tmp_path / "out"
    res = subprocess.run([*KPCONV, "-q", "shard", str(m), "-o", str(out), "--image-size", "64", "--num-shards", "2",
                          "--split", "train=1", "--workers", str(workers)], capture_output=True, text=True,
                         preexec_fn=limited, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"kpconv: error: {out}: " in res.stderr and "File too large" in res.stderr
    assert [n for n in os.listdir(out) if not n.startswith(".")] == []         # nothing under a final name
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    assert run("shard", m, "-o", out, "--image-size", "64", "--split", "train=1").exit_code == 0   # not blocked


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("command", ["ingest", "shard"])
def test_ctrl_c_stops_at_once_without_tracebacks(tmp_path, command):
    """Ctrl-C (SIGINT to the whole process group) while ingest writes its manifest, or while shard's workers
    run: the command says 'Aborted!' and exits 1 at once, no worker prints a traceback or outlives it, and no
    output is left, not even a temporary file."""
    import signal
    import subprocess
    import time

    from synth import make_coco     # (benchmarks/, on the path through test_shard_helpers)

    ann = make_coco(tmp_path / "data", 3000, size=(64, 48), instances_per_image=2, seed=0, ext="jpg")
    out = tmp_path / ("m.jsonl" if command == "ingest" else "out")
    args = ["ingest", ann, "--images", tmp_path / "data" / "images", "-o", out]
    if command == "shard":
        assert subprocess.run([*KPCONV, "-q", *map(str, args)]).returncode == 0
        args = ["shard", out, "-o", tmp_path / "shards", "--image-size", "128", "--workers", "2"]
        out = tmp_path / "shards" / "dataset_info.json"
    p = subprocess.Popen([*KPCONV, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    kids = set()
    if command == "ingest":
        # The manifest is written while the images are probed: about a second on an idle machine, the only sign
        # of it the temporary file. A fixed pause after seeing that file let a loaded machine finish the command
        # first; instead the command is frozen (SIGSTOP) the moment the file is seen, checked to be mid-write,
        # and Ctrl-C'd there: the SIGINT is pending when SIGCONT lets it run on, wherever it stopped.
        _when_writing(p, out)
        os.killpg(p.pid, signal.SIGSTOP)
        _wait_stopped(p)
        assert not out.exists() and _temporaries(tmp_path), "ingest finished before it could be stopped"
        os.killpg(p.pid, signal.SIGINT)
        os.killpg(p.pid, signal.SIGCONT)
    else:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None and not _children(p.pid):
            time.sleep(0.005)
        kids = _children(p.pid)
        assert kids, "no worker started"
        # the shards take seconds to write: the workers are still at work after this pause
        time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
    err = p.communicate(timeout=120)[1].decode()
    assert p.returncode == 1 and "Aborted!" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(kids) and not out.exists()
    assert not _temporaries(tmp_path)


@pytest.mark.parametrize("body, line, message", [
    (b"skeleton: " + b"[" * 2000 + b"]" * 2000 + b"\n", 1, "invalid YAML: nested deeper than 64 levels"),
    (b"a: &a [x, y]\nskeleton: [*a]\n", 2, "invalid YAML: YAML aliases (*name) are not accepted"),
    (b"Task: m\nscorer: \xe9ric\n", 2, "not a UTF-8 text file (invalid continuation byte at byte 16)"),
    (b"# " + b"x" * (5 << 20) + b"\n", None, "larger than 4 MiB: not a dataset configuration file"),
], ids=["deep", "alias", "latin-1", "huge"])
def test_hostile_deeplabcut_config_yaml(tmp_path, body, line, message):
    """DeepLabCut's config.yaml goes through the one hardened YAML loader (as YOLO's data.yaml)."""
    shutil.copytree(FIXTURES / "dlc", tmp_path / "p")
    config = tmp_path / "p" / "config.yaml"
    config.write_bytes(body)
    res = run("ingest", tmp_path / "p", "-o", tmp_path / "m.jsonl")
    assert res.exit_code == 1, res.output
    assert (f"{config}:{line}: " if line else f"{config}: ") + message in res.output
    assert not (tmp_path / "m.jsonl").exists()
