"""A mixed-size, two-set-up DeepLabCut project built from mirror-mouse: the stand-in for issue 18's
second project (frames of 832x747 and 640x470 from two camera set-ups, 5 keypoints, one of them missing
in most frames), which nobody here may redistribute.

* keypoints: ``paw1LH_top``, ``paw4RH_top`` (two hind paws that look alike without context, as the two
  ends of a joystick do), ``nose_top``, ``tailBase_top`` and ``obs_top`` (the obstacle), whose label is
  kept in only about a quarter of the frames (the real project's keypoint missing in 40 of 55);
* set-up A (the first half of the frames): an 832x747 frame, mirror-mouse's 396x406 frame scaled by 1.7
  and placed at (100, 30); set-up B (the second half): a 640x470 frame, scaled by 1.1 at (150, 12). The
  rest of each frame is the scene itself, stretched to the frame and blurred (content without the
  sharp features of the labelled parts, not a constant border);
* labels in DeepLabCut's convention (pixel centres at integer coordinates), moved exactly as the pixels.

::

    python benchmarks/standin.py OUT_DIR [--source ../shared/datasets/mirror-mouse]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the main checkout's ../shared, or a worktree's ../../shared
DEFAULT_SOURCE = next((p for p in (HERE.parent.parent / "shared" / "datasets" / "mirror-mouse",
                                   HERE.parent.parent.parent / "shared" / "datasets" / "mirror-mouse") if p.is_dir()),
                      HERE.parent.parent / "shared" / "datasets" / "mirror-mouse")
KEYPOINTS = ("paw1LH_top", "paw4RH_top", "nose_top", "tailBase_top", "obs_top")
SPARSE = "obs_top"            # labelled in 1 frame of KEEP_SPARSE_EVERY (where the source labels it)
KEEP_SPARSE_EVERY = 4
SETUPS = (((832, 747), 1.7, (100, 30)), ((640, 470), 1.1, (150, 12)))   # (frame size, scale, offset)


def build(out: Path, source: Path = DEFAULT_SOURCE) -> Path:
    """Write the project into ``out`` (``CollectedData.csv`` and ``labeled-data/``); returns ``out``."""
    from PIL import Image, ImageFilter

    rows = list(csv.reader(open(source / "CollectedData.csv", newline="")))
    header, body = rows[:3], rows[3:]
    names = header[1][1::2]
    cols = [names.index(k) for k in KEYPOINTS]
    (out / "labeled-data").mkdir(parents=True, exist_ok=True)
    lines = [[header[0][0]] + [header[0][1]] * (2 * len(KEYPOINTS)),
             ["bodyparts"] + [k for k in KEYPOINTS for _ in (0, 1)],
             ["coords"] + ["x", "y"] * len(KEYPOINTS)]
    half = (len(body) + 1) // 2
    for i, row in enumerate(body):
        (cw, ch), s, (ox, oy) = SETUPS[0 if i < half else 1]
        im = Image.open(source / row[0]).convert("RGB")
        w, h = im.size
        canvas = im.resize((cw, ch), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(12))
        canvas.paste(im.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR), (ox, oy))
        name = f"labeled-data/{'ab'[0 if i < half else 1]}{i:03d}.png"
        canvas.save(out / name)
        vals = [name]
        for k, c in zip(KEYPOINTS, cols):
            x, y = row[1 + 2 * c], row[2 + 2 * c]
            if x == "" or y == "" or (k == SPARSE and i % KEEP_SPARSE_EVERY):
                vals += ["", ""]
                continue
            # DeepLabCut's convention: pixel i's centre at i, so continuous u = x + 0.5 scales about 0
            vals += [f"{(float(x) + 0.5) * s - 0.5 + ox:.4f}", f"{(float(y) + 0.5) * s - 0.5 + oy:.4f}"]
        lines.append(vals)
    with open(out / "CollectedData.csv", "w", newline="") as f:
        csv.writer(f).writerows(lines)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    a = p.parse_args(argv)
    print(build(a.out, a.source))


if __name__ == "__main__":
    main()
