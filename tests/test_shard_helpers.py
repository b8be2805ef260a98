"""Helpers for the shard/inspect tests (no tests here): small datasets, manifests and record dumps."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from conftest import REPO
from kpconv.data.ingest import ingest
from kpconv.data.records import decode_record
from kpconv.data.dataset_info import DatasetInfo, dump_json
from kpconv.data.tfrecord import read_records

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import make_coco  # noqa: E402


def synth_manifest(tmp_path, n_images=12, size=(160, 120), instances=1, ext="jpg", seed=0) -> Path:
    """A synthetic COCO dataset ingested into ``tmp_path/manifest.jsonl``."""
    data = tmp_path / "data"
    ann = make_coco(data, n_images, size=size, instances_per_image=instances, seed=seed, ext=ext)
    out = tmp_path / "manifest.jsonl"
    ingest([ann], output=str(out), fmt="coco", images=data / "images")
    return out


def shard_bytes(out_dir) -> dict:
    """{file name: sha256} of every shard and of dataset_info.json / skipped.jsonl / changed.jsonl."""
    out = Path(out_dir)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.is_file() and (".tfrecord-" in p.name or p.name in ("dataset_info.json", "skipped.jsonl",
                                                                       "changed.jsonl"))}


def records(out_dir, split=None):
    """Decoded records of a shard directory, in shard order: [(split, shard, record dict)]."""
    info = DatasetInfo.read(out_dir)
    out = []
    for name, entry in info.shards():
        if split is None or name == split:
            for data in read_records(str(Path(out_dir) / entry["file"]), info.compression_name):
                out.append((name, entry["file"], decode_record(data, info.num_keypoints)))
    return out


def dump(out_dir) -> str:
    """A readable dump of a shard directory for golden files: dataset_info (without byte sizes and
    hashes, which depend on the JPEG library) and every record's decoded content, floats rounded."""
    import json

    from kpconv.data.images import decode

    info = json.loads(json.dumps(DatasetInfo.read(out_dir).raw))
    info.pop("kpconv_version", None)
    info.pop("checksum", None)          # (a hash of the sha256s)
    info["source"] = {k: v for k, v in info.get("source", {}).items() if k != "files"}
    for s in info["splits"].values():
        s.pop("bytes")
        for e in s["shards"]:
            e.pop("bytes")
            e.pop("sha256")
    lines = ["dataset_info.json (bytes and sha256 left out):", dump_json(info), ""]
    for split, shard, r in records(out_dir):
        im = decode(r["image/encoded"])
        kps = " ".join(f"{x:.4f},{y:.4f},{v}" for x, y, v in
                       zip(r["keypoints/x"], r["keypoints/y"], r["keypoints/visibility"]))
        lines.append(f"{shard}: {r['image/source_path']}#{r['instance/id']} {r['image/format']} "
                     f"{r['image/width']}x{r['image/height']} (decodes to {im.size[0]}x{im.size[1]}) "
                     f"from {r['image/original_width']}x{r['image/original_height']}")
        lines.append("  bbox " + " ".join(f"{v:.4f}" for v in r["instance/bbox"]))
        lines.append("  transform " + " ".join(f"{v:.4f}" for v in r["transform/stored_to_original"]))
        lines.append("  keypoints " + kps)
    return "\n".join(lines) + "\n"
