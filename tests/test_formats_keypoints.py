"""Keypoint metadata shared by every reader: flip pairs inferred from names, ``--skeleton``."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import FIXTURES
from kpconv.cli import cli
from kpconv.data.keypoints import infer_flip_pairs, parse_edges


@pytest.mark.parametrize("names, pairs", [
    (["nose", "left_eye", "right_eye"], [(1, 2)]),
    (["front_left", "front_right", "hind_left", "hind_right"], [(0, 1), (2, 3)]),
    (["l_knee", "r_knee", "ear_L", "ear_R", "LEye", "REye"], [(0, 1), (2, 3), (4, 5)]),
    (["FL_paw", "FR_paw", "HL_paw", "HR_paw"], [(0, 1), (2, 3)]),
    (["paw_LF", "paw_RF"], [(0, 1)]),
    (["earL", "earR", "nose"], [(0, 1)]),
    (["Lknee", "Rknee"], [(0, 1)]),
    # SLEAP's fly skeleton (two-flies): a side letter before the segment number
    (["head", "wingL", "wingR", "forelegL4", "forelegR4", "hindlegL4", "hindlegR4"], [(1, 2), (3, 4), (5, 6)]),
    # no partner, or markers that only look like sides: nothing
    (["Lip", "nose", "FL_paw"], []),
    (["segL12", "segM12", "LL4"], []),
    (["paw1LH_top", "paw4RH_top", "paw2LF_top", "paw3RF_top"], []),
])
def test_flip_pairs_inferred_from_names(names, pairs):
    assert infer_flip_pairs(names) == pairs


def test_parse_edges():
    assert parse_edges("nose-tail, a:b-c") == [("nose", "tail"), ("a", "b-c")]
    for bad in ("nose", "a-b-c", "a-", ""):
        with pytest.raises(ValueError, match="expected edges like"):
            parse_edges(bad)


def _ingest(*args):
    return CliRunner().invoke(cli, ["ingest", *map(str, args)])


def test_skeleton_option_for_a_source_without_one():
    csv = FIXTURES / "csv" / "labels.csv"
    r = _ingest(csv)
    assert r.exit_code == 0 and json.loads(r.stdout.splitlines()[0])["skeleton"] == []
    r = _ingest(csv, "--skeleton", "nose-tail,left_eye-nose")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["skeleton"] == [[0, 5], [1, 0]]
    r = _ingest(csv, "--skeleton", "nose-whisker")
    assert r.exit_code == 1 and "--skeleton: unknown keypoint name(s) whisker" in r.stderr
    r = _ingest(csv, "--skeleton", "nose")
    assert r.exit_code == 2 and "Invalid value for '--skeleton'" in r.stderr


def test_no_format_found_says_what_each_format_expects(tmp_path):
    from kpconv.data import formats

    (tmp_path / "notes.txt").write_text("hello, world\n")
    r = _ingest(tmp_path / "notes.txt")
    assert r.exit_code == 1
    for name in formats.names():
        cls = formats.get(name)
        assert cls.expects, f"{name}: no 'expects' text for the detection message"
        assert f"{name}: {cls.expects}" in r.stderr
