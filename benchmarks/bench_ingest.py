"""Benchmark ``kpconv ingest`` on a large COCO keypoints file against the usual tutorial code.

Baseline (what a tutorial does): ``pycocotools.coco.COCO(path)`` and then ``Image.open(p).size`` on
every image. Measured, each in its own fresh subprocess, best of ``--repeat`` runs, alternating (and
the peak memory of each in one more run, as sampling it takes CPU time):

- the baseline, wall time including interpreter start;
- ``kpconv ingest annotations.json --images DIR -o out.jsonl`` as a user runs it (the console script),
  wall time including interpreter start, and its peak memory (the process tree's PSS, sampled, or
  its own peak RSS from ``os.wait4`` if larger);
- with ``--helper REV``: the CLI of kpconv at git revision ``REV`` (305364a, the last with ingest's helper
  process writing manifest lines) as it ran by default (the helper) and with ``--workers 1`` (without it);
  both must write this tree's manifest, byte for byte; the helper saves what the second takes more (removed:
  it saved under the 10 s a fast path must save on train2017's size);
- with ``--fast-paths REV``: the CLI of kpconv at git revision ``REV`` (c550b99, the last with the
  hand-written fast paths) with every fast path, without each in turn, and without all four; each must
  write this tree's manifest and report, byte for byte, and a fast path pays only when it saves 10 s
  on COCO person keypoints train2017's size (``--images 57000 --instances 150000``);
- ``kpconv.data.ingest.ingest()`` called from Python: time of the call only, and the baseline's own
  in-process time for comparison;
- the CLI again on a dataset a fifth of the size, to show how peak memory grows with the manifest;
- reading the 20,000 image headers with ``kpconv.data.imageinfo`` and with Pillow.

The synthetic dataset (``benchmarks/synth.py``, plain images, 5 figures each) is generated once and
cached under ``--cache`` (default ``$KPCONV_BENCH_CACHE`` or ``<tmp>/kpconv-bench/ingest``); a warm-up
pass reads every file first, so timings are of a warm page cache. The machine is shared: compare
the ratio, not the absolute times.

    python benchmarks/bench_ingest.py                 # 20,000 images, 100,000 instances
    python benchmarks/bench_ingest.py --images 2000   # quick look
    python benchmarks/bench_ingest.py --images 57000 --instances 150000 --fast-paths c550b99 --repeat 1
    python benchmarks/bench_ingest.py --images 57000 --instances 150000 --helper 305364a --repeat 2 --no-headers
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BASELINE = r"""
import os, sys, time, resource, json
t0 = time.perf_counter()
from pycocotools.coco import COCO
from PIL import Image
path, root = sys.argv[1], sys.argv[2]
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):   # COCO() prints progress
    coco = COCO(path)
n = 0
for im in coco.dataset["images"]:
    w, h = Image.open(os.path.join(root, im["file_name"])).size
    n += 1
print(json.dumps({"seconds": time.perf_counter() - t0, "images": n,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

LIBRARY = r"""
import sys, time, resource, json
from kpconv.data.ingest import ingest
t0 = time.perf_counter()
r = ingest([sys.argv[1]], output=sys.argv[3], images=sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t0, "written": r.written,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

HEADERS = r"""
import sys, os, time, json
from kpconv.data import imageinfo
root = sys.argv[1]
paths = sorted(os.path.join(root, n) for n in os.listdir(root))
out = {"images": len(paths)}

def best(fn, k=3):
    times = []
    for _ in range(k):
        t = time.perf_counter(); r = fn(); times.append(time.perf_counter() - t)
    return min(times), r

out["serial"], ref = best(lambda: imageinfo.read_sizes(paths))
def pil():
    from PIL import Image
    return {p: Image.open(p).size for p in paths}
out["pil"], r = best(pil)
assert r == ref, "fast header reader disagrees with Pillow"
print(json.dumps(out))
"""


# The CLI with some of the fast paths that kpconv had until commit c550b99 turned off (monkeypatched into the
# exact way they were measured against): "reader" the forked reader process (its patched report.add, its
# problems replayed here), "dense" DenseRows blocks and their second validator _check_dense, "serializer"
# the second manifest serializer (numpy rounding, text surgery on orjson's output), "splitter" the streaming
# JSON splitter. argv: the names turned off (comma-separated, or "-"), then the CLI's arguments.
FAST_PATHS = ("reader", "dense", "serializer", "splitter")
VARIANT = r"""
import contextlib, sys
from itertools import chain
off = set(sys.argv[1].split(",")) - {"-"}
import kpconv.data.ingest as I, kpconv.data.manifest as M, kpconv.data.jsonparse as J
import os
assert I.__file__.startswith(os.environ["PYTHONPATH"]), I.__file__
from kpconv.data.formats import coco as C
if "reader" in off:
    @contextlib.contextmanager
    def prepared(finalizer, instances, report):
        chunks = I._chunks(instances)
        first = next(chunks, None)
        if first is None:
            yield iter(())
            return
        first = finalizer.prepare(first)
        finalizer.helpers.processes = I._processes(finalizer.options.workers, len(first[0]), len(first[2]))
        yield chain([first], map(finalizer.prepare, chunks))
    I._prepared = prepared
if "dense" in off:
    instances = C.CocoReader._instances
    C.CocoReader._instances = lambda self, loaded, k, slots, ctx, dense: instances(self, loaded, k, slots, ctx, False)
if "serializer" in off:
    def exact_dumps(records):
        if isinstance(records, M.RecordBatch):
            records = [records.record(i) for i in range(len(records))]
        return b"".join(map(M._json_line, records))
    M.dumps_records = I.dumps_records = exact_dumps
if "splitter" in off:
    J.loads_streaming = lambda data, key, required=(), chunk_bytes=0: (J.loads(data), None)
from kpconv.cli import main
sys.argv = ["kpconv", *sys.argv[2:]]
main()
"""


def export_rev(rev: str, into: Path) -> Path:
    """kpconv's package as of git revision ``rev`` (exported into ``into``, for PYTHONPATH)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "kpconv"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def dataset(cache: Path, n_images: int, instances: int, size, ext: str) -> Path:
    """The cached synthetic dataset folder (generated on first use): ``instances`` figures spread evenly over
    ``n_images`` images (the first ones get one more when it does not divide)."""
    from synth import make_coco

    per, more = divmod(instances, n_images)
    d = cache / f"coco-{n_images}x{per}{f'+{more}' if more else ''}-{size[0]}x{size[1]}-{ext}"
    marker = d / ".complete"
    if not marker.exists():
        if d.exists():
            shutil.rmtree(d)
        t = time.perf_counter()
        print(f"generating {d} ...", file=sys.stderr, flush=True)
        make_coco(d, n_images, size=size, instances_per_image=[per + (i < more) for i in range(n_images)],
                  draw=False, ext=ext)
        marker.write_text("ok\n")
        print(f"  done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return d


def run(cmd):
    """Run ``cmd``; its stdout parsed as JSON lines (a list of dicts). Exits on failure."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True)
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr.decode()[-2000:]}")
    return [json.loads(line) for line in p.stdout.decode().splitlines() if line.startswith("{")]


# Wall time and peak RSS of exactly one child: a tiny wrapper spawns it and waits with os.wait4.
# The child's own JSON line (if any) comes first on stdout, the wrapper's last.
WRAP = r"""
import os, sys, json, time
t = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
code = os.waitstatus_to_exitcode(status)
sys.stdout.flush()
print(json.dumps({"wall": wall, "rss_mb": ru.ru_maxrss / 1024}))
sys.exit(code)
"""


SAMPLE = [True]     # whether run_measured samples the memory of the process tree (see main())


def run_measured(cmd, env=None, cwd=None):
    """(wall seconds of the command itself, its peak memory MiB, its own JSON output or None). The
    memory is the peak sum of PSS over the command's process tree, sampled every 20 ms while ``SAMPLE[0]``
    (kpconv at an older revision may read in a forked reader process or write lines in a forked helper,
    whose pages shared with their parent PSS counts once), or the command's own peak RSS (os.wait4) when larger."""
    from bench_shard import _tree_memory

    proc = subprocess.Popen([sys.executable, "-c", WRAP, *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd)
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_memory(proc.pid)[1])
            done.wait(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    if SAMPLE[0]:
        sampler.start()
    out, err = proc.communicate()
    done.set()
    if SAMPLE[0]:
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{err.decode()[-2000:]}")
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return lines[-1]["wall"], max(lines[-1]["rss_mb"], peak[0] / 2**20), (lines[-2] if len(lines) > 1 else None)


def kpconv_command() -> list:
    exe = Path(sys.executable).parent / "kpconv"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("kpconv")
    return [found] if found else [sys.executable, "-m", "kpconv.cli"]


def json_parser() -> str:
    """Which parser kpconv's COCO reader uses here: orjson when installed (a third of json's time;
    its peak memory while parsing is higher: 446 against 330 MiB for this 43 MiB file), else json."""
    try:
        import orjson
    except ImportError:
        return "json (orjson not installed)"
    return f"orjson {orjson.__version__}"


def warm(d: Path) -> None:
    for p in (d / "images").iterdir():
        p.read_bytes()
    (d / "annotations.json").read_bytes()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000, help="images in the full dataset (default 20000)")
    ap.add_argument("--per-image", type=int, default=5, help="figures (instances) per image (default 5)")
    ap.add_argument("--instances", type=int, default=None,
                    help="figures in all, spread over the images (default: images x per-image); COCO person "
                         "keypoints train2017 is about --images 57000 --instances 150000")
    ap.add_argument("--size", default="64x48", help="image size WxH (default 64x48)")
    ap.add_argument("--ext", default="png", choices=["png", "jpg"])
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    ap.add_argument("--cache", default=os.environ.get("KPCONV_BENCH_CACHE",
                                                      os.path.join(tempfile.gettempdir(), "kpconv-bench", "ingest")))
    ap.add_argument("--fast-paths", metavar="REV", default=None,
                    help="also time the CLI of kpconv at git revision REV (c550b99: the last with the fast paths) "
                         "with each fast path turned off in turn, and compare its manifest and report with this "
                         "tree's (sha256)")
    ap.add_argument("--helper", metavar="REV", default=None,
                    help="also time the CLI of kpconv at git revision REV (305364a: the last with ingest's helper "
                         "process) with the helper (its default) and without it (--workers 1)")
    ap.add_argument("--no-headers", action="store_true", help="skip the image headers' comparison")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    instances = args.instances or args.images * args.per_image
    full = dataset(cache, args.images, instances, size, args.ext)
    small = dataset(cache, max(1, args.images // 5), max(1, instances // 5), size, args.ext)
    kp = kpconv_command()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=cache))
    try:
        for d in (full, small):
            warm(d)
        rev_tree = export_rev(args.fast_paths, work / "rev") if args.fast_paths else None
        helper_tree = export_rev(args.helper, work / "helper-rev") if args.helper else None
        helper_steps = ["helper", "nohelper"] if helper_tree else []
        # the fast paths' variants: none off, each off alone, all off; and without the reader process (which
        # pickles what it sends: a fast path's saving may be in part the reader's cost it avoids), each other off
        variants = ["-", *FAST_PATHS, ",".join(FAST_PATHS),
                    *[f"reader,{v}" for v in FAST_PATHS[1:]]] if rev_tree else []

        def cli(d, out, *extra):
            return run_measured([*kp, "-q", "ingest", d / "annotations.json", "--images", d / "images", "-o", out,
                                 *extra])

        def variant(off, out, report):
            env = {**os.environ, "PYTHONPATH": str(rev_tree)}
            return run_measured([sys.executable, "-c", VARIANT, off, "-q", "ingest", full / "annotations.json",
                                 "--images", full / "images", "-o", out, "--report", report], env=env,
                                cwd=rev_tree)   # (python -c puts the working directory first on the path)

        res = {k: [] for k in ("base_wall", "base_rss", "base_in", "cli_wall", "cli_rss", "lib", "lib_rss",
                               "small_wall", "small_rss")}
        res.update({f"{k}_{v}": [] for v in [*variants, *helper_steps] for k in ("wall", "rss")})
        out_full, out_small, out_lib = work / "full.jsonl", work / "small.jsonl", work / "lib.jsonl"
        for i in range(args.repeat + 1):
            # run 0 samples memory (the sampler takes CPU that two cores miss); the times are of the others
            SAMPLE[0] = i == 0
            print(f"run {i}/{args.repeat} ({'memory' if i == 0 else 'time'}) ...", file=sys.stderr, flush=True)
            steps = ["base", "cli", "lib", "small", *helper_steps, *variants]
            if i % 2:
                steps.reverse()   # alternate the order: a noisy neighbour hurts both sides alike
            for step in steps:
                if step == "base":
                    w, r, inner = run_measured([sys.executable, "-c", BASELINE, full / "annotations.json",
                                                full / "images"])
                    res["base_wall"].append(w)
                    res["base_rss"].append(r)
                    res["base_in"].append(inner["seconds"])
                elif step == "cli":
                    w, r, _ = cli(full, out_full, "--report", work / "full.report")
                    res["cli_wall"].append(w)
                    res["cli_rss"].append(r)
                elif step == "lib":
                    _, r, inner = run_measured([sys.executable, "-c", LIBRARY, full / "annotations.json",
                                                full / "images", out_lib])
                    res["lib"].append(inner["seconds"])
                    res["lib_rss"].append(r)
                elif step in helper_steps:
                    w, r, _ = run_measured([sys.executable, "-c", "from kpconv.cli import main; main()", "-q", "ingest",
                                            full / "annotations.json", "--images", full / "images",
                                            "-o", work / f"{step}.jsonl", *(["--workers", "1"] if step == "nohelper" else [])],
                                           env={**os.environ, "PYTHONPATH": str(helper_tree)}, cwd=helper_tree)
                    res[f"wall_{step}"].append(w)
                    res[f"rss_{step}"].append(r)
                elif step == "small":
                    w, r, _ = cli(small, out_small)
                    res["small_wall"].append(w)
                    res["small_rss"].append(r)
                else:
                    w, r, _ = variant(step, work / f"v{variants.index(step)}.jsonl", work / f"v{variants.index(step)}.report")
                    res[f"wall_{step}"].append(w)
                    res[f"rss_{step}"].append(r)
        if not out_full.read_bytes() == out_lib.read_bytes():
            raise SystemExit("CLI and library wrote different manifests")
        for step in helper_steps:
            if sha256(work / f"{step}.jsonl") != sha256(out_full):
                raise SystemExit(f"kpconv at {args.helper} ({step}) wrote another manifest")
        for j, v in enumerate(variants):
            if sha256(work / f"v{j}.jsonl") != sha256(out_full) or sha256(work / f"v{j}.report") != sha256(work / "full.report"):
                raise SystemExit(f"kpconv at {args.fast_paths} (fast paths off: {v}) wrote another manifest or report")
        n_full = sum(1 for _ in open(out_full)) - 1
        n_small = sum(1 for _ in open(out_small)) - 1
        m_full, m_small = out_full.stat().st_size / 2**20, out_small.stat().st_size / 2**20
        # times: best of runs 1..N; memory: run 0
        best = {k: min(v[1:]) if k.startswith("wall") or k.endswith(("wall", "_in", "lib")) else v[0]
                for k, v in res.items()}
        ann_mb = (full / "annotations.json").stat().st_size / 2**20

        print(f"kpconv ingest benchmark: {args.images} images ({size[0]}x{size[1]} {args.ext}), {n_full} instances; "
              f"best of {args.repeat}, warm page cache, {len(os.sched_getaffinity(0))} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"dataset: {full} (annotations.json {ann_mb:.1f} MiB); kpconv parses JSON with {json_parser()}")
        print()
        print(f"{'':48s}{'seconds':>9s}{'peak MiB':>14s}")
        print(f"{'baseline: COCO() + PIL .size, CLI-style run':48s}{best['base_wall']:9.2f}{best['base_rss']:14.0f}")
        print(f"{'kpconv ingest (CLI, incl. interpreter start)':48s}{best['cli_wall']:9.2f}{best['cli_rss']:14.0f}")
        print(f"{'baseline, in-process time':48s}{best['base_in']:9.2f}")
        print(f"{'kpconv.data.ingest.ingest() call':48s}{best['lib']:9.2f}{best['lib_rss']:14.0f}")
        for v in helper_steps:
            name = f"kpconv at {args.helper}, " + ("helper process" if v == "helper" else "--workers 1")
            print(f"{name:48s}{best[f'wall_{v}']:9.2f}{best[f'rss_{v}']:14.0f}")
        for v in variants:
            name = f"kpconv at {args.fast_paths}, " + ("all fast paths" if v == "-" else "without " + v.replace(",", ", "))
            print(f"{name:48s}{best[f'wall_{v}']:9.2f}{best[f'rss_{v}']:14.0f}")
        print()
        print(f"ratio kpconv/baseline: CLI {best['cli_wall'] / best['base_wall']:.2f}x (target at most 2x), "
              f"library {best['lib'] / best['base_in']:.2f}x (below 1: kpconv faster)")
        if helper_steps:
            print(f"helper process saves {best['wall_nohelper'] - best['wall_helper']:.1f} s on {n_full:,} instances "
                  f"(kpconv at {args.helper}; kept only from 10 s); this tree takes "
                  f"{best['cli_wall'] - best['wall_helper']:+.1f} s against it with the helper, "
                  f"{best['cli_wall'] - best['wall_nohelper']:+.1f} s without; same manifest, sha256 {sha256(out_full)}")
        if variants:
            every = best["wall_-"]
            for v in FAST_PATHS:
                alone = f"; without the reader process {best[f'wall_reader,{v}'] - best['wall_reader']:.1f} s" \
                    if v != "reader" else ""
                print(f"fast path {v} saves {best[f'wall_{v}'] - every:.1f} s on {n_full:,} instances "
                      f"(kpconv at {args.fast_paths}{alone}; kept only from 10 s)")
            print(f"all four save {best['wall_' + ','.join(FAST_PATHS)] - every:.1f} s together; dense and serializer "
                  f"together, without the reader process and the splitter, "
                  f"{best['wall_' + ','.join(FAST_PATHS)] - best['wall_reader,splitter']:.1f} s; this tree takes "
                  f"{best['cli_wall'] - every:+.1f} s against kpconv at {args.fast_paths}")
            print(f"manifest and report identical to kpconv at {args.fast_paths} with every variant: sha256 "
                  f"{sha256(out_full)} and {sha256(work / 'full.report')}")
        print("peak MiB: the command's process tree, PSS summed (forked processes' shared pages once), in a "
              "run of its own (run 0)")
        print()
        print("memory vs manifest size (CLI):")
        print(f"  {n_small:7d} instances: manifest {m_small:7.1f} MiB, peak {best['small_rss']:6.0f} MiB, "
              f"{best['small_wall']:.2f} s")
        print(f"  {n_full:7d} instances: manifest {m_full:7.1f} MiB, peak {best['cli_rss']:6.0f} MiB, "
              f"{best['cli_wall']:.2f} s")
        grow_m, grow_r = m_full / m_small, best["cli_rss"] / best["small_rss"]
        per = (best["cli_rss"] - best["small_rss"]) / (m_full - m_small)
        print(f"  growth: manifest x{grow_m:.2f}, peak memory x{grow_r:.2f} "
              f"({'no faster' if grow_r <= grow_m else 'FASTER'} than the manifest); "
              f"{per:.2f} MiB of memory per MiB of manifest")
        if not args.no_headers:
            h = run([sys.executable, "-c", HEADERS, full / "images"])[-1]
            print()
            print(f"image headers, {h['images']} files (best of 3, in-process): kpconv.data.imageinfo.read_sizes "
                  f"{h['serial']:.2f} s, PIL Image.open().size {h['pil']:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
