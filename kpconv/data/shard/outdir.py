"""The life of OUT_DIR (docs/shard.md, *Output* and *Safety*): prepared once the plan is frozen, shards committed
one by one (state file in ``.kpconv-shard/``, then the rename), ``skipped.jsonl`` and ``changed.jsonl``, then
``dataset_info.json`` last."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Dict, List, Optional

from ... import __version__
from .. import jsonparse
from ..dataset_info import INFO_FILE, DatasetInfo, checksum, sha256_stream
from ...errors import NothingToWrite, ShardError
from ..records import SPEC_VERSION
from .files import LocalFiles
from .options import DEFAULT_SHARD_SIZE, ShardOptions
from .plan import Plan, ShardTask

STATE_DIR = ".kpconv-shard"
SKIPPED_FILE = "skipped.jsonl"
CHANGED_FILE = "changed.jsonl"


def prepare(out: str, plan: Plan, options: ShardOptions, files: LocalFiles) -> None:
    """Make OUT_DIR ready for ``plan``: refuse a non-empty one without --overwrite/--resume, remove
    ``dataset_info.json`` (nothing looks finished from now on), the shards of another plan and the
    temporary files of an interrupted run."""
    names = files.list_dir(out)
    if names and not (options.overwrite or options.resume) and any(not _leftover(n) for n in names):
        raise ShardError(f"{out}: output directory exists and is not empty "
                         "(use --overwrite to replace it, or --resume to finish an interrupted run)")
    if not files.is_remote(out):
        for name in (INFO_FILE, SKIPPED_FILE, CHANGED_FILE, *(t.name for t in plan.tasks)):
            if os.path.isdir(files.join(out, name)):
                raise ShardError(f"{files.join(out, name)}: a directory is in the way of an output file "
                                 "(remove it)")
    files.makedirs(out)
    files.delete(files.join(out, INFO_FILE))
    state = files.join(out, STATE_DIR)
    if options.overwrite:
        files.delete(files.join(out, SKIPPED_FILE))
        files.delete(files.join(out, CHANGED_FILE))
        files.delete_tree(state)
    wanted = {t.name for t in plan.tasks}
    for name in names:
        if ".tfrecord-" in name and (options.overwrite or name not in wanted):
            files.delete(files.join(out, name))
    remove_temporaries(out, files)
    files.makedirs(state)
    for name in files.list_dir(state):
        if name.endswith(".json") and name[:-5] not in wanted:
            files.delete(files.join(state, name))


def _leftover(name: str) -> bool:
    """What a run that stopped before writing any shard leaves: the state directory, temporary files."""
    return name == STATE_DIR or (name.startswith(".") and name.endswith(".tmp") or ".tmp-" in name) and (
        ".tfrecord-" in name or name.startswith((f".{SKIPPED_FILE}.", f".{CHANGED_FILE}.", f".{INFO_FILE}.")))


def discard(out: str, plan: Plan, created: bool, files: LocalFiles) -> None:
    """After a run that can never finish (every record skipped): remove its shards, their states and
    ``skipped.jsonl``/``changed.jsonl``, and OUT_DIR itself when this run created it and nothing else is left, so that
    nothing blocks the next run."""
    for task in plan.tasks:
        files.delete(files.join(out, task.name))
    files.delete(files.join(out, SKIPPED_FILE))
    files.delete(files.join(out, CHANGED_FILE))
    files.delete_tree(files.join(out, STATE_DIR))
    remove_temporaries(out, files)
    if created and not files.list_dir(out) and not files.is_remote(out):
        try:
            os.rmdir(out)
        except OSError:
            pass


def remove_temporaries(out: str, files: LocalFiles) -> None:
    for name in files.list_dir(out):
        if name.startswith(".") and ".tmp" in name and name != STATE_DIR:
            files.delete(files.join(out, name))


def kept_state(out: str, task: ShardTask, files: LocalFiles) -> Optional[dict]:
    """The state of a complete, correct shard from an earlier run (``--resume``), else None."""
    path = files.join(out, STATE_DIR, f"{task.name}.json")
    if not files.is_remote(path) and not os.path.isfile(path):
        return None         # (missing, or a FIFO or device that a read would block on)
    try:
        state = jsonparse.loads(files.read_text(path))
    except (OSError, ValueError):
        return None
    # a damaged or edited state (not an object, a key missing, a count changed) is not trusted: its
    # shard is written again
    if not isinstance(state, dict) or state.get("checksum") != checksum(state) \
            or state.get("fingerprint") != task.fingerprint or state.get("file") != task.name:
        return None
    state.pop("checksum")
    try:
        with files.open_read(files.join(out, task.name)) as f:
            digest, _ = sha256_stream(f)
    except OSError:  # missing, or a directory
        return None
    return state if digest == state.get("sha256") else None


def commit_shard(out: str, state: dict, files: LocalFiles) -> None:
    """Write the state file of a shard written under ``state["tmp"]``, then rename the shard into place:
    a shard under its final name always has its state. Removes ``"tmp"`` from ``state``."""
    tmp = files.join(out, state.pop("tmp"))
    files.write_atomic(files.join(out, STATE_DIR, f"{state['file']}.json"),
                       json.dumps(dict(state, checksum=checksum(state)), sort_keys=True).encode())
    try:
        files.rename(tmp, files.join(out, state["file"]))
    except BaseException:
        files.delete(tmp)
        raise
    files.sync_dir(out)


def finish(out: str, plan: Plan, states: Dict[str, dict], options: ShardOptions, files: LocalFiles) -> dict:
    """Write ``skipped.jsonl``, ``changed.jsonl`` (records written with keypoints the stored image does
    not show, made unlabelled: per record, which) then ``dataset_info.json``; returns the dataset info."""
    header = plan.header
    k = len(header.keypoints)
    splits: Dict[str, dict] = {}
    skipped: List[dict] = []
    changed: List[dict] = []
    reasons: Counter = Counter()
    changed_reasons: Counter = Counter()
    for task in plan.tasks:
        st = states[task.name]
        s = splits.setdefault(task.split, {"records": 0, "bytes": 0, "shards": [],
                                           "visibility": [[0, 0, 0] for _ in range(k)]})
        s["records"] += st["records"]
        s["bytes"] += st["bytes"]
        s["shards"].append({"file": st["file"], "records": st["records"], "bytes": st["bytes"],
                            "sha256": st["sha256"]})
        for i in range(k):
            for v in range(3):
                s["visibility"][i][v] += st["visibility"][i][v]
        for item in st["skipped"]:
            skipped.append(item)
            reasons[item["reason"]] += 1
        for item in st.get("changed", ()):
            names = [header.keypoints[i] for i in item["keypoints"]]
            where = "outside the --crop bbox box" if item["reason"] == "outside_crop" else "outside the stored image"
            changed.append({**item, "keypoints": names, "message": f"{len(names)} labelled keypoint(s) {where} "
                            f"made unlabelled: {', '.join(names)}"})
            changed_reasons[item["reason"]] += 1
    written = sum(s["records"] for s in splits.values())
    if written == 0:
        first = skipped[0] if skipped else None
        raise NothingToWrite(f"no record could be written: all {len(skipped)} record(s) were skipped"
                             + (f"; first: {first['image']}: {first['message']}" if first else ""))
    img = options.image
    info = {
        "kpconv_version": __version__,
        "spec_version": SPEC_VERSION,
        "keypoints": list(header.keypoints),
        "skeleton": [list(p) for p in header.skeleton],
        "flip_pairs": [list(p) for p in header.flip_pairs],
        "image": {"size": list(img.size) if img.size else None, "resize": img.resize if img.size else None,
                  "crop": img.crop, "crop_pad": img.crop_pad if img.crop == "bbox" else None,
                  "encoding": "jpeg (re-encoded) or the original bytes (passthrough)", "quality": img.quality,
                  "background": [128, 128, 128]},
        "compression": options.compression,
        "splits": splits,
        "records": written,
        "skipped": {"records": len(skipped), "reasons": dict(sorted(reasons.items())), "file": SKIPPED_FILE},
        "changed": {"records": len(changed), "keypoints": sum(len(c["keypoints"]) for c in changed),
                    "reasons": dict(sorted(changed_reasons.items())), "file": CHANGED_FILE},
        "warnings": list(plan.warnings),
        "instances": {"max_per_image": max(st.get("max_instances", 1) for st in states.values())},
        "options": {"image_size": list(img.size) if img.size else None, "resize": img.resize, "crop": img.crop,
                    "crop_pad": img.crop_pad, "split": options.split, "split_from": plan.split_source,
                    "split_by": options.split_by, "split_by_used": plan.split_by,
                    "shard_size": None if options.num_shards else options.shard_size or DEFAULT_SHARD_SIZE,
                    "num_shards": options.num_shards, "seed": options.seed, "quality": img.quality,
                    "compression": options.compression},
        "source": header.source,
    }
    files.write_atomic(files.join(out, SKIPPED_FILE),
                       "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in skipped).encode())
    files.write_atomic(files.join(out, CHANGED_FILE),
                       "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in changed).encode())
    path = files.join(out, INFO_FILE)
    files.write_atomic(path, DatasetInfo.from_json(info, path).to_bytes())
    files.sync_dir(out)
    return info
