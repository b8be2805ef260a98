"""Per-record problems found while ingesting (a ``reason``, a located message, a severity: ``error`` skips the
record, ``warning`` keeps it, ``note`` is counted, not failed on by ``--strict``), and the report."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import IO, List, Optional

from ..errors import Location

ERROR, WARNING, NOTE = "error", "warning", "note"

# reason -> (severity, one-line description used in the summary table and the README)
REASONS = {
    "malformed_record": (ERROR, "record cannot be parsed"),
    "missing_field": (ERROR, "a required field is missing"),
    "wrong_type": (ERROR, "a field has the wrong type or value"),
    "unknown_keypoint": (ERROR, "keypoint name not in the keypoint list"),
    "bad_coordinate": (ERROR, "coordinate is NaN or infinite"),
    "bad_visibility": (ERROR, "visibility is not 0, 1 or 2"),
    "out_of_image": (ERROR, "coordinate outside the image beyond the tolerance"),
    "missing_image": (ERROR, "image file does not exist"),
    "unreadable_image": (ERROR, "image file cannot be read as an image"),
    "path_outside_root": (ERROR, "image path escapes the images root"),
    "duplicate_instance": (ERROR, "same image and instance id seen before"),
    "duplicate_image_id": (ERROR, "an image id given twice for different images (its annotations skipped)"),
    "duplicate_annotation": (ERROR, "an annotation given twice (same id, or same image and keypoints)"),
    "ambiguous_label": (ERROR, "a keypoint label repeats in one instance (points cannot be told apart)"),
    "no_keypoints": (NOTE, "instance has no labelled keypoint (skipped)"),
    "crowd": (NOTE, "COCO iscrowd=1 annotation (skipped)"),
    "other_category": (NOTE, "annotation of another category (skipped)"),
    "size_swapped": (ERROR, "stated image size is the file's size turned by 90 degrees (a rotated photo)"),
    "size_mismatch": (WARNING, "stated image size differs from the image file"),
    "clamped": (NOTE, "coordinate at most 1 px outside the image, clamped"),
    "bad_bbox": (WARNING, "given bbox unusable, derived from keypoints"),
    "duplicate_box": (WARNING, "several boxes for one instance: none used, derived from keypoints"),
    "no_label_file": (WARNING, "YOLO image without a label file (no instance read)"),
    "other_annotation": (WARNING, "a task's other annotators' annotations not read (one is)"),
    "bad_skeleton": (WARNING, "skeleton edges out of range, dropped"),
    "image_in_two_splits": (WARNING, "image listed in two splits, kept in the first (the later listing skipped)"),
    "skeleton_0_based": (NOTE, "0-based skeleton recognised and converted"),
    "generated_names": (NOTE, "no keypoint names in the source: named kp0, kp1, ..."),
    "several_categories": (NOTE, "categories read together, each record keeps its category"),
    "predicted": (NOTE, "SLEAP predicted instance (skipped: user-labelled instances only)"),
    "not_visible": (NOTE, "SLEAP point marked not visible, taken as not labelled"),
}


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    location: Location = Location()

    @property
    def severity(self) -> str:
        return REASONS[self.reason][0]

    @property
    def skips_record(self) -> bool:
        return self.severity == ERROR or self.reason in ("no_keypoints", "crowd", "other_category", "predicted",
                                                         "image_in_two_splits")

    def __str__(self) -> str:
        where = str(self.location)
        return f"{where}: {self.message}" if where else self.message

    def to_json(self) -> dict:
        d = {"reason": self.reason, "severity": self.severity}
        d.update(self.location.to_json())
        d["message"] = self.message
        return d


class Report:
    """Collects problems: counts by reason, and the full list (streamed to ``--report`` if given)."""

    def __init__(self, stream: Optional[IO[str]] = None, keep: int = 1000):
        self.counts: Counter = Counter()
        self.skipped = 0  # records dropped: one skipping problem is reported per dropped record
        self.first: List[Problem] = []  # the first `keep` problems, for messages and tests
        self._keep = keep
        self._stream = stream

    def add(self, reason: str, message: str, location: Location = Location()) -> Problem:
        if reason not in REASONS:
            raise ValueError(f"unknown problem reason {reason!r}")
        p = Problem(reason, message, location)
        self.counts[reason] += 1
        if p.skips_record:
            self.skipped += 1
        if len(self.first) < self._keep:
            self.first.append(p)
        if self._stream is not None:
            self._stream.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
        return p

    def count(self, severity: Optional[str] = None) -> int:
        if severity is None:
            return sum(self.counts.values())
        return sum(n for r, n in self.counts.items() if REASONS[r][0] == severity)

    @property
    def fails_strict(self) -> bool:
        return self.count(ERROR) + self.count(WARNING) > 0

    def first_failing(self) -> Optional[Problem]:
        return next((p for p in self.first if p.severity in (ERROR, WARNING)), None)

    def summary_table(self) -> str:
        """Counts by reason, most serious first, as an aligned text table."""
        if not self.counts:
            return "no problems"
        order = {ERROR: 0, WARNING: 1, NOTE: 2}
        rows = sorted(self.counts.items(), key=lambda kv: (order[REASONS[kv[0]][0]], kv[0]))
        w = max(len(r) for r, _ in rows)
        lines = [f"{'reason':<{w}}  {'severity':<8}  {'count':>7}  meaning"]
        for r, n in rows:
            sev, desc = REASONS[r]
            lines.append(f"{r:<{w}}  {sev:<8}  {n:>7}  {desc}")
        return "\n".join(lines)
