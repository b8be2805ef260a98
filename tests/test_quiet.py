"""kpconv.quiet: TensorFlow's start-up lines and (kpconv -q shard --runner beam) Beam's logs filtered out of
stderr at the file-descriptor level; everything else passes, in order."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796086446.819205    5057 port.cc:153] oneDNN custom operations are on. You may see\n",
    b"I0000 00:00:1796086446.819515    5057 cudart_stub.cc:31] Could not find cuda drivers on your machine\n",
    b"E0000 00:00:1796086448.775143    5057 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    b"appropriate compiler flags.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
]


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, timeout=60)


def test_filter_drops_start_up_lines_and_keeps_the_rest():
    writes = [b"kpconv: error: a.png: cannot read image\n", *NOISE[:3], b"50%|#####", b"\r100%|##########\n",
              NOISE[3][:10], NOISE[3][10:], b"E0000 00:00:1.0 1 model.cc:1] a real error\n", *NOISE[4:],
              b"no newline at the end"]
    code = ("import os, sys; from kpconv import quiet; assert quiet.filter_stderr(); "
            f"[os.write(2, w) for w in {writes!r}]; print('out')")
    p = _run(code)
    assert p.returncode == 0 and p.stdout == b"out\n"
    assert p.stderr == (b"kpconv: error: a.png: cannot read image\n50%|#####\r100%|##########\n"
                        b"E0000 00:00:1.0 1 model.cc:1] a real error\nno newline at the end")


def test_python_log_lines_only_when_asked():
    code = ("import os; from kpconv import quiet; quiet.filter_stderr(python_logs=%s); "
            "os.write(2, b'WARNING:root:x\\nINFO:__main__:y\\nERROR:root:z\\n')")
    assert _run(code % "False").stderr == b"WARNING:root:x\nINFO:__main__:y\nERROR:root:z\n"
    assert _run(code % "True").stderr == b"ERROR:root:z\n"


def test_no_filter_under_a_captured_stderr(capsys):
    from kpconv import quiet

    assert quiet.filter_stderr() is False     # sys.stderr is pytest's capture, not descriptor 2


@pytest.mark.slow
def test_quiet_beam_shard_prints_nothing(tmp_path):
    pytest.importorskip("apache_beam")
    manifest = tmp_path / "m.jsonl"
    p = subprocess.run([sys.executable, "-m", "kpconv.cli", "-q", "ingest", str(REPO / "fixtures/coco/annotations.json"),
                        "-o", str(manifest)], capture_output=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "kpconv.cli", "shard", str(manifest), "-o", str(tmp_path / "s"),
                        "--runner", "beam", "--image-size", "32", "--workers", "1", "-q"],
                       capture_output=True, env=ENV, timeout=300)
    assert p.returncode == 0 and p.stderr == b"" and p.stdout == b""
    assert json.loads((tmp_path / "s" / "dataset_info.json").read_text())["records"] > 0
