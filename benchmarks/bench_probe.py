"""Does the hand-written image-header probe (``kpconv/data/imageinfo.py``: ``_jpeg``, ``_png``,
``_exif_orientation``) earn its place against Pillow? (issue 19: keep it only with a gain of at least
1.5x on a user-visible time.)

Two variants, measured in one process, alternating, best of ``--repeat``, on a warm page cache:

- ``header``: kpconv as it is (the parsers, Pillow for anything they do not fully understand);
- ``pillow``: every probe through ``imageinfo._pillow`` (``Image.open`` + size + EXIF orientation,
  loading a PNG, whose ``eXIf`` chunk may follow the pixel data: what Pillow's ``getexif`` does too).

Times: reading the sizes of every image (``imageinfo.read_sizes``, serial), and ``kpconv.data.ingest.ingest()``
of the COCO file (what a user waits for; serial, as ``--workers 0``). Both variants must give the same
sizes and the same manifest bytes.

    python benchmarks/bench_probe.py                 # 10,000 JPEG + 10,000 PNG, 64x48
    python benchmarks/bench_probe.py --images 1000
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def dataset(cache: Path, n: int, ext: str) -> Path:
    from synth import make_coco

    d = cache / f"probe-{n}-{ext}"
    if not (d / ".complete").exists():
        if d.exists():
            shutil.rmtree(d)
        print(f"generating {d} ...", file=sys.stderr, flush=True)
        make_coco(d, n, size=(64, 48), instances_per_image=1, draw=False, ext=ext)
        (d / ".complete").write_text("ok\n")
    return d / "annotations.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10000, help="images per format (JPEG and PNG)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", default=os.environ.get("KPCONV_BENCH_CACHE",
                                                      os.path.join(tempfile.gettempdir(), "kpconv-bench")))
    args = ap.parse_args()
    from kpconv.data import imageinfo
    from kpconv.data.ingest import ingest

    cache = Path(args.cache)
    files = [dataset(cache, args.images, ext) for ext in ("jpg", "png")]
    paths = sorted(str(p) for f in files for p in (f.parent / "images").iterdir())
    for p in paths:             # warm the page cache
        Path(p).read_bytes()
    header_probe = imageinfo._probe

    def pillow_probe(src, name, limit):
        return imageinfo._pillow(src, name, imageinfo.max_pixels() if limit is None else limit)

    variants = {"header": header_probe, "pillow": pillow_probe}
    best = {(v, what): float("inf") for v in variants for what in ("probe", "ingest")}
    out = Path(tempfile.mkdtemp(prefix="kpconv-bench-probe-"))
    sizes, manifests = {}, {}
    try:
        for _ in range(args.repeat):
            for name, fn in variants.items():
                imageinfo._probe = fn
                try:
                    t = time.perf_counter()
                    sizes[name] = imageinfo.read_sizes(paths)
                    best[name, "probe"] = min(best[name, "probe"], time.perf_counter() - t)
                    t = time.perf_counter()
                    for i, f in enumerate(files):
                        ingest([str(f)], output=str(out / f"{name}-{i}.jsonl"), fmt="coco",
                               images=f.parent / "images")
                    best[name, "ingest"] = min(best[name, "ingest"], time.perf_counter() - t)
                    manifests[name] = [(out / f"{name}-{i}.jsonl").read_bytes() for i in range(len(files))]
                finally:
                    imageinfo._probe = header_probe
    finally:
        shutil.rmtree(out)
    assert sizes["header"] == sizes["pillow"], "the header parsers disagree with Pillow"
    assert manifests["header"] == manifests["pillow"], "the manifests differ"
    print(f"{len(paths)} images ({args.images} JPEG + {args.images} PNG, 64x48), best of {args.repeat}, "
          f"Pillow {__import__('PIL').__version__}")
    print(f"{'':<32}{'header':>9}{'pillow':>9}{'gain':>8}")
    for what, label in (("probe", "read_sizes (serial)"), ("ingest", "ingest() of the two COCO files")):
        h, p = best["header", what], best["pillow", what]
        print(f"{label:<32}{h:>8.2f}s{p:>8.2f}s{p / h:>7.2f}x")


if __name__ == "__main__":
    main()
