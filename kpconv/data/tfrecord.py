"""TFRecord framing without TensorFlow (docs/shard.md, *Record spec*): ``uint64 length | uint32
masked_crc32c(length) | data | uint32 masked_crc32c(data)``, little endian, CRC32C from ``google-crc32c``;
gzip streams with mtime 0 and no file name, so that they are deterministic. ``read_records`` reads them back."""
from __future__ import annotations

import gzip
import struct
import zlib
from typing import IO, Iterator

import google_crc32c

from ..errors import Location, VerifyError

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
MAX_RECORD_BYTES = 1 << 30      # no record kpconv writes comes near this (an image is capped at 256 MiB)
_CHUNK = 1 << 24


def crc32c(data: bytes) -> int:
    return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = _U64.pack(len(data))
    return b"".join((length, _U32.pack(masked_crc32c(length)), data, _U32.pack(masked_crc32c(data))))


class TFRecordWriter:
    """Writes framed records to an open binary file; ``compression="gzip"`` wraps it in gzip (mtime 0)."""

    def __init__(self, fileobj: IO[bytes], compression: str = "none"):
        if compression not in ("none", "gzip"):
            raise ValueError(f"compression must be 'none' or 'gzip', got {compression!r}")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, mtime=0) if compression == "gzip" else None
        self._out = self._gz or fileobj
        self.count = 0

    def write(self, data: bytes) -> None:
        self._out.write(frame(data))
        self.count += 1

    def close(self) -> None:
        """Finish the gzip stream (if any); the underlying file stays open."""
        if self._gz is not None:
            self._gz.close()
            self._gz = None


def read_records(path: str, compression: str = "none", check_crc: bool = True) -> Iterator[bytes]:
    """Yield the data of each record in a TFRecord file; raises VerifyError naming the record index
    on a truncated record or (``check_crc``) a CRC mismatch."""
    opener = gzip.open if compression == "gzip" else open
    index = 0
    try:
        with opener(path, "rb") as f:
            while True:
                head = f.read(12)
                if not head:
                    return
                loc = Location(str(path), record=str(index))
                if len(head) < 12:
                    raise VerifyError("truncated record header", loc)
                length_bytes, crc = head[:8], _U32.unpack(head[8:])[0]
                if check_crc and masked_crc32c(length_bytes) != crc:
                    raise VerifyError("length CRC mismatch", loc)
                (length,) = _U64.unpack(length_bytes)
                if length > MAX_RECORD_BYTES:
                    raise VerifyError(f"record length {length} is more than the {MAX_RECORD_BYTES} bytes "
                                      "any kpconv record can have", loc)
                data = _read_exactly(f, length)
                tail = f.read(4)
                if len(data) < length or len(tail) < 4:
                    raise VerifyError("truncated record", loc)
                if check_crc and masked_crc32c(data) != _U32.unpack(tail)[0]:
                    raise VerifyError("data CRC mismatch", loc)
                yield data
                index += 1
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise VerifyError(f"cannot read: {e}", Location(str(path), record=str(index))) from None


def _read_exactly(f, length: int) -> bytes:
    """Up to ``length`` bytes, read a chunk at a time: a length header that claims more than the file holds
    costs no more memory than the file."""
    if length <= _CHUNK:
        return f.read(length)
    parts, left = [], length
    while left:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
