"""Typed errors: library code raises these, only ``kpconv.cli`` prints them and exits. A message says where,
what was found and what was expected: ``labels.csv:7: column 'elbow_x': expected a number, got 'abc'``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Location:
    """Where something is: a file and a line, or a file and a record id, and optionally a field."""

    file: Optional[str] = None
    line: Optional[int] = None
    record: Optional[str] = None
    field: Optional[str] = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
            parts.append(where)
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.record is not None:
            parts.append(f"record {self.record}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ": ".join(parts)

    def with_field(self, field: str) -> "Location":
        return Location(self.file, self.line, self.record, field)

    def to_json(self) -> dict:
        return {k: v for k, v in (("file", self.file), ("line", self.line),
                                  ("record", self.record), ("field", self.field)) if v is not None}


class KpconvError(Exception):
    """Base of every error kpconv raises on purpose. The CLI turns it into exit code 1."""

    exit_code = 1


class LocatedError(KpconvError):
    """An error with a :class:`Location`; ``str()`` gives ``location: message``."""

    def __init__(self, message: str, location: Optional[Location] = None):
        self.message = message
        self.location = location or Location()
        where = str(self.location)
        super().__init__(f"{where}: {message}" if where else message)


class AnnotationError(LocatedError):
    """An annotation file cannot be read at all (malformed JSON/CSV/YAML, wrong structure)."""


class FormatDetectionError(KpconvError):
    """``--format auto`` could not decide, or the named format does not exist."""


class ManifestError(LocatedError):
    """A manifest line does not follow ``schemas/manifest.schema.json``."""


class ProblemsFound(KpconvError):
    """``--strict`` and at least one problem: nothing was written."""

    def __init__(self, problems, summary: str):
        self.problems = list(problems)
        super().__init__(summary)


class NothingToWrite(KpconvError):
    """Every record was skipped: there is nothing to write."""


class ImageError(LocatedError):
    """An image is missing, unreadable or not an image."""


class OutputError(LocatedError):
    """An output cannot be written: a directory where a file is expected, a read-only folder, a full disk,
    a file-size limit. Located at the path."""


def os_error_text(e: OSError) -> str:
    """One line for a filesystem error: ``path: reason`` (``path -> other: reason`` for a rename)."""
    where = e.filename if e.filename is not None else None
    if where is not None and getattr(e, "filename2", None) is not None:
        where = f"{where} -> {e.filename2}"
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where is not None else reason


class ShardError(KpconvError):
    """``kpconv shard`` cannot proceed (bad options, existing output, failed worker)."""


class DatasetInfoError(LocatedError):
    """``dataset_info.json`` is missing, malformed or lacks what the command needs."""


class VerifyError(LocatedError):
    """``kpconv inspect --verify`` found a bad shard or record."""


class TrainError(KpconvError):
    """Training cannot start or had to stop (NaN loss, bad run directory, unreachable weights)."""


class VideoError(LocatedError):
    """A video cannot be opened or a frame cannot be decoded; ``reason`` names the kind."""

    def __init__(self, reason: str, message: str, location: Optional[Location] = None):
        self.reason = reason
        super().__init__(message, location)


class InputsFailed(KpconvError):
    """Some inputs could not be read (each one reported); the others were processed and written."""

    def __init__(self, failures, summary: str):
        self.failures = list(failures)
        super().__init__(summary)


class MissingDependency(KpconvError):
    """An optional package an option needs is not installed; the message names the extra that brings it
    (``pip install 'kpconv[h5]'``). Exit code 2: the option cannot be used here."""

    exit_code = 2


class ExportError(KpconvError):
    """``kpconv export`` cannot export the run (missing shards for calibration, a converter failure)."""
