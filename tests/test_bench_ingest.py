"""The ingest benchmark runs end to end on a tiny dataset (so it does not rot); no timing is asserted."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ingest.py"


@pytest.mark.slow
def test_bench_ingest_small(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH), "--images", "40", "--repeat", "1", "--cache", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "40 images (64x48 png), 200 instances" in out
    assert "ratio kpconv/baseline: CLI " in out
    assert "     40 instances: manifest" in out and "    200 instances: manifest" in out   # a fifth, and all
    assert "growth: manifest x" in out
    assert "image headers, 40 files" in out
    assert (tmp_path / "coco-40x5-64x48-png" / ".complete").exists()
