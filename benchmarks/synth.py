"""Synthetic keypoint datasets for the benchmarks: stick figures with 17 COCO keypoints.

``make_coco(out_dir, n_images, ...)`` writes ``out_dir/images/*.jpg`` (or .png) and
``out_dir/annotations.json`` (COCO keypoints), deterministically from ``seed``. Each figure is drawn
with its limbs and joints, left side and right side in different colours, on a noisy background with
distractor shapes, so the keypoints are learnable from the pixels. Used by every benchmark.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
         "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
         "left_knee", "right_knee", "left_ankle", "right_ankle"]
SKELETON_1B = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
               [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
_LEFT = (230, 60, 40)
_RIGHT = (40, 90, 230)
_MID = (240, 220, 40)


def _pose(rng, cx, cy, s):
    """17 (x, y) points of a standing figure of height ~s, with random limb angles."""
    def at(p, ang, length):
        return (p[0] + length * math.sin(ang), p[1] + length * math.cos(ang))

    tilt = rng.uniform(-0.3, 0.3)
    neck = (cx, cy - 0.25 * s)
    pelvis = at(neck, tilt, 0.3 * s)
    sw, hw = 0.11 * s, 0.07 * s
    ls, rs = (neck[0] + sw, neck[1]), (neck[0] - sw, neck[1])     # figure faces the viewer
    lh, rh = (pelvis[0] + hw, pelvis[1]), (pelvis[0] - hw, pelvis[1])
    head = at(neck, math.pi + tilt * 0.5, 0.1 * s)
    pts = {"nose": head,
           "left_eye": (head[0] + 0.025 * s, head[1] - 0.02 * s), "right_eye": (head[0] - 0.025 * s, head[1] - 0.02 * s),
           "left_ear": (head[0] + 0.05 * s, head[1] - 0.005 * s), "right_ear": (head[0] - 0.05 * s, head[1] - 0.005 * s),
           "left_shoulder": ls, "right_shoulder": rs, "left_hip": lh, "right_hip": rh}
    for side, sh, hip, sign in (("left", ls, lh, 1), ("right", rs, rh, -1)):
        elbow = at(sh, sign * rng.uniform(0.1, 1.4), 0.15 * s)
        pts[f"{side}_elbow"] = elbow
        pts[f"{side}_wrist"] = at(elbow, sign * rng.uniform(-0.4, 2.0), 0.14 * s)
        knee = at(hip, sign * rng.uniform(-0.1, 0.5), 0.2 * s)
        pts[f"{side}_knee"] = knee
        pts[f"{side}_ankle"] = at(knee, sign * rng.uniform(-0.4, 0.2), 0.2 * s)
    return [pts[n] for n in NAMES]


def _colour(name):
    return _LEFT if name.startswith("left") else _RIGHT if name.startswith("right") else _MID


def make_coco(out_dir, n_images, size=(640, 480), instances_per_image=1, seed=0, ext="jpg",
              quality=90, draw=True, split_name="annotations", figures=None):
    """Write a synthetic COCO keypoints dataset; returns the annotation file path.

    ``instances_per_image``: figures on every image, or a list of one count per image.
    ``figures=(lo, hi)``: each image holds between lo and hi figures (drawn uniformly) of random sizes at
    random places, free to overlap (the multi-instance benchmark); otherwise ``instances_per_image``
    figures side by side, as before (the same bytes for the same arguments)."""
    out = Path(out_dir)
    counts = [instances_per_image] * n_images if isinstance(instances_per_image, int) else list(instances_per_image)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    images, anns = [], []
    for i in range(n_images):
        instances_per_image = counts[i]
        fname = f"img_{i:06d}.{ext}"
        if draw:
            base = rng.integers(0, 120, size=3)
            noise = rng.integers(0, 60, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            bg = np.kron(noise, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w] + base.astype(np.uint8)
            im = Image.fromarray(bg.astype(np.uint8), "RGB")
            d = ImageDraw.Draw(im)
            for _ in range(3):  # distractors
                x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
                r = rng.uniform(5, 0.08 * w)
                d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=tuple(int(c) for c in rng.integers(60, 200, 3)), width=2)
        count = instances_per_image if figures is None else int(rng.integers(figures[0], figures[1] + 1))
        for j in range(count):
            if figures is None:
                s = rng.uniform(0.55, 0.85) * h / max(1.0, instances_per_image ** 0.5)
                cx = rng.uniform(0.2 * w, 0.8 * w) if instances_per_image == 1 else (j + 0.5) * w / instances_per_image
                cy = rng.uniform(0.45 * h, 0.55 * h)
            else:   # overlapping figures: random size and place (the centre kept 0.1 x the size inside)
                s = rng.uniform(0.3, 0.55) * h
                cx = rng.uniform(0.15 * w, 0.85 * w)
                cy = rng.uniform(0.35 * h, 0.65 * h)
            pts = _pose(rng, cx, cy, s)
            kps, xs, ys = [], [], []
            for (x, y) in pts:
                inside = 0 <= x < w and 0 <= y < h
                # written as COCO labels them (pixel centres at integers: the drawing's continuous
                # coordinate - 0.5); ingest's +0.5 (the COCO reader's PIXEL_ORIGIN) gives the drawn point back
                kps += [round(x - 0.5, 2), round(y - 0.5, 2), 2] if inside else [0, 0, 0]
                if inside:
                    xs.append(x)
                    ys.append(y)
            if draw:
                lw = max(1, int(s / 60))
                for a, b in SKELETON_1B:
                    pa, pb = pts[a - 1], pts[b - 1]
                    d.line([pa, pb], fill=_colour(NAMES[b - 1]), width=lw)
                for n, (x, y) in zip(NAMES, pts):
                    r = max(1.5, s / 70)
                    d.ellipse([x - r, y - r, x + r, y + r], fill=_colour(n))
            x0, y0 = max(0.0, min(xs) - 5), max(0.0, min(ys) - 5)
            x1, y1 = min(float(w), max(xs) + 5), min(float(h), max(ys) + 5)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "keypoints": kps, "num_keypoints": len(xs),
                         "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                         "area": round((x1 - x0) * (y1 - y0), 2)})
        if draw:
            if ext == "jpg":
                im.save(out / "images" / fname, quality=quality)
            else:
                im.save(out / "images" / fname)
        else:
            Image.new("RGB", (w, h), (int(i % 255), 0, 0)).save(out / "images" / fname)
        images.append({"id": i + 1, "file_name": fname, "width": w, "height": h})
    coco = {"info": {"description": "kpconv synthetic benchmark"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": NAMES, "skeleton": SKELETON_1B}]}
    path = out / f"{split_name}.json"
    path.write_text(json.dumps(coco))
    return path


if __name__ == "__main__":  # python benchmarks/synth.py OUT_DIR [N_IMAGES [WIDTH HEIGHT [SEED]]]
    import sys

    a = sys.argv[1:]
    print(make_coco(a[0], int(a[1]) if len(a) > 1 else 8,
                    size=(int(a[2]), int(a[3])) if len(a) > 3 else (640, 480), seed=int(a[4]) if len(a) > 4 else 0))


# ----------------------------------------------------------------------- small animals, multi-animal DLC
MOUSE_PARTS = ["snout", "leftear", "rightear", "spine", "tailbase", "tailtip"]
MOUSE_SKELETON = [("snout", "leftear"), ("snout", "rightear"), ("leftear", "spine"), ("rightear", "spine"),
                  ("spine", "tailbase"), ("tailbase", "tailtip")]
# (along the heading, across it to the animal's left) in units of the body length (snout to tail base)
_MOUSE_SHAPE = {"snout": (0.5, 0.0), "leftear": (0.22, 0.2), "rightear": (0.22, -0.2), "spine": (0.0, 0.0),
                "tailbase": (-0.5, 0.0), "tailtip": (-0.85, 0.12)}


def _mouse(cx, cy, heading, length):
    """The keypoints {part: (x, y)} of a top-view animal of ``length`` px (snout to tail base) at (cx, cy)."""
    c, s = math.cos(heading), math.sin(heading)
    return {p: (cx + length * (u * c - v * s), cy + length * (u * s + v * c)) for p, (u, v) in _MOUSE_SHAPE.items()}


def make_dlc_multi(project_dir, n_images: int, size=(1920, 1080), animals=(3, 7), length=(22.0, 30.0),
                   touching: float = 0.5, seed: int = 0, quality: int = 90) -> Path:
    """A multi-animal DeepLabCut project of small top-view animals in wide frames (issue 16's hidden check, in
    small): ``project_dir/config.yaml`` and ``labeled-data/arena/CollectedData_synth.csv`` (four header rows,
    individuals ``animal1``...) with ``img_NNNN.jpg`` frames of ``size``, each with ``animals`` (lo, hi) animals
    of ``length`` (lo, hi) px (bodies about length x length/2, e.g. 25x12 px), ``touching`` of them placed
    against an earlier one. Coordinates are written as DeepLabCut labels them (pixel centres at integers: the
    drawing's continuous coordinate - 0.5). Also writes ``coco.json``: the same labels as a COCO keypoint
    dataset (file names relative to the project folder, boxes around the labelled points) to score
    predictions with pycocotools. Deterministic from ``seed``; returns the project folder."""
    out = Path(project_dir)
    folder = out / "labeled-data" / "arena"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    most = animals[1]
    rows, images, anns = [], [], []
    for i in range(n_images):
        base = rng.integers(90, 150)
        noise = rng.integers(0, 40, size=(h // 16 + 1, w // 16 + 1, 1), dtype=np.uint8)
        bg = np.kron(noise, np.ones((16, 16, 3), dtype=np.uint8))[:h, :w] + np.uint8(base)
        im = Image.fromarray(bg, "RGB")
        d = ImageDraw.Draw(im)
        for _ in range(12):   # distractors: droppings, bedding
            x0, y0, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 6)
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.integers(40, 90, 3)))
        placed = []
        for _ in range(int(rng.integers(animals[0], animals[1] + 1))):
            length_px = rng.uniform(*length)
            for _try in range(50):
                if placed and rng.uniform() < touching:     # against an earlier animal, side by side or nose to tail
                    ox, oy, ol = placed[int(rng.integers(len(placed)))]
                    ang = rng.uniform(0, 2 * math.pi)
                    dist = rng.uniform(0.5, 0.8) * (ol + length_px) / 2
                    cx, cy = ox + dist * math.cos(ang), oy + dist * math.sin(ang)
                else:
                    cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
                ok = 0.05 * w < cx < 0.95 * w and 0.05 * h < cy < 0.95 * h
                if ok and all(math.hypot(cx - px, cy - py) > 0.45 * (pl + length_px) / 2 for px, py, pl in placed):
                    break
            else:
                continue
            placed.append((cx, cy, length_px))
        bodies = []
        for cx, cy, length_px in placed:
            kp = _mouse(cx, cy, rng.uniform(0, 2 * math.pi), length_px)
            bodies.append(kp)
            fur = tuple(int(v) for v in rng.integers(190, 250, 3))
            d.line([kp["tailbase"], kp["tailtip"]], fill=(110, 70, 70), width=2)
            r = length_px / 4
            body = [(kp["spine"][0] + (kp["snout"][0] - kp["spine"][0]) * t, kp["spine"][1] + (kp["snout"][1] - kp["spine"][1]) * t)
                    for t in (-0.9, -0.45, 0.0, 0.4)]
            for (x, y), rr in zip(body, (0.9 * r, r, r, 0.8 * r)):
                d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fur)
            x, y = kp["snout"]
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(240, 120, 140))
            for part, col in (("leftear", (200, 40, 40)), ("rightear", (40, 60, 200))):
                x, y = kp[part]
                d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=col)
        name = f"img_{i:04d}.jpg"
        im.save(folder / name, quality=quality)
        row = ["labeled-data", "arena", name]
        for kp in bodies:
            row += [f"{v - 0.5:.2f}" for p in MOUSE_PARTS for v in kp[p]]
        row += [""] * (2 * len(MOUSE_PARTS) * (most - len(bodies)))
        rows.append(row)
        images.append({"id": i + 1, "file_name": f"labeled-data/arena/{name}", "width": w, "height": h})
        for kp in bodies:
            xs = [kp[p][0] for p in MOUSE_PARTS]
            ys = [kp[p][1] for p in MOUSE_PARTS]
            x0, y0 = min(xs), min(ys)
            bw, bh = max(xs) - x0, max(ys) - y0
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "keypoints": [round(v, 2) for p in MOUSE_PARTS for v in (kp[p][0] - 0.5, kp[p][1] - 0.5, 2)],
                         "num_keypoints": len(MOUSE_PARTS), "bbox": [round(x0, 2), round(y0, 2), round(bw, 2), round(bh, 2)],
                         "area": round(bw * bh, 2)})
    inds = [f"animal{j + 1}" for j in range(most)]
    header = [["scorer", "", ""] + ["synth"] * (2 * len(MOUSE_PARTS) * most),
              ["individuals", "", ""] + [a for a in inds for _ in range(2 * len(MOUSE_PARTS))],
              ["bodyparts", "", ""] + [p for _ in inds for p in MOUSE_PARTS for _c in (0, 1)],
              ["coords", "", ""] + [c for _ in inds for _p in MOUSE_PARTS for c in ("x", "y")]]
    with open(folder / "CollectedData_synth.csv", "w", newline="") as f:
        import csv

        csv.writer(f).writerows(header + rows)
    (out / "config.yaml").write_text(
        "Task: synth\nscorer: synth\nmultianimalproject: true\n"
        f"individuals: [{', '.join(inds)}]\nmultianimalbodyparts: [{', '.join(MOUSE_PARTS)}]\n"
        "skeleton:\n" + "".join(f"- [{a}, {b}]\n" for a, b in MOUSE_SKELETON))
    (out / "coco.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "animal", "keypoints": MOUSE_PARTS,
                        "skeleton": [[MOUSE_PARTS.index(a) + 1, MOUSE_PARTS.index(b) + 1] for a, b in MOUSE_SKELETON]}]}))
    return out
