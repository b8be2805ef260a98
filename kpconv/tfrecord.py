"""TFRecord files and ``tf.train.Example`` protobufs, without TensorFlow.

Writers (``kpconv shard``) run in worker processes where TensorFlow must not be imported, so the
framing and the protobuf wire format are written here by hand:

- TFRecord framing: ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``
  (little endian; mask: ``((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32``). CRC32C comes from the
  ``google-crc32c`` package (C implementation; a pure-Python CRC would be the bottleneck).
- ``encode_example`` gives exactly the bytes of ``tf.train.Example.SerializeToString(deterministic=True)``
  (features sorted by name, packed floats and int64s); the tests check both against TensorFlow.
- gzip: a standard gzip stream with mtime 0 and no file name, so it is deterministic and readable by
  ``tf.data.TFRecordDataset(..., compression_type="GZIP")``.

``read_records`` and ``decode_example`` read them back (for ``kpconv inspect`` and the tests).
"""
from __future__ import annotations

import gzip
import struct
from typing import IO, Dict, Iterator, List, Sequence, Tuple, Union

import google_crc32c

from .errors import Location, VerifyError

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


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
        self._raw = fileobj
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
                data = f.read(length)
                tail = f.read(4)
                if len(data) < length or len(tail) < 4:
                    raise VerifyError("truncated record", loc)
                if check_crc and masked_crc32c(data) != _U32.unpack(tail)[0]:
                    raise VerifyError("data CRC mismatch", loc)
                yield data
                index += 1
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise VerifyError(f"cannot read: {e}", Location(str(path), record=str(index))) from None


# --------------------------------------------------------------------------------- protobuf encoding
Value = Union[bytes, str, int, float]
# name -> ("bytes" | "float" | "int64", list of values)
Features = Dict[str, Tuple[str, Sequence[Value]]]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7)) if n >= 0x80 else bytes((n,))
    if n < 0:
        n += 1 << 64  # int64 two's complement: 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_VARINT1 = [bytes((i,)) for i in range(0x80)]   # one-byte varints


def _len_field(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return bytes((tag,)) + _varint(n) + payload


def _len_prefix(n: int) -> bytes:
    return _VARINT1[n] if n < 0x80 else _varint(n)


_FLOAT_PACK: Dict[int, struct.Struct] = {}


def _feature(kind: str, values: Sequence[Value]) -> bytes:
    # (written out rather than composed of _len_field calls: it runs 13 times per record)
    if kind == "bytes":
        if len(values) == 1:
            v = values[0]
            v = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            item = _len_prefix(len(v))
            body_len = 1 + len(item) + len(v)
            return b"".join((b"\x0a", _len_prefix(body_len), b"\x0a", item, v))
        body = b"".join(_len_field(0x0A, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values)
        return _len_field(0x0A, body)
    if kind == "float":
        if not values:
            return b"\x12\x00"
        n = len(values)
        pack = _FLOAT_PACK.get(n)
        if pack is None:
            pack = _FLOAT_PACK.setdefault(n, struct.Struct(f"<{n}f"))
        packed = pack.pack(*values)
        if 4 * n < 0x7E:
            return b"\x12" + _VARINT1[4 * n + 2] + b"\x0a" + _VARINT1[4 * n] + packed
        return _len_field(0x12, _len_field(0x0A, packed))
    if kind == "int64":
        if not values:
            return b"\x1a\x00"
        try:
            packed = bytes(values)   # one byte each when all are ints in 0..255 ...
        except (TypeError, ValueError):
            packed = None
        if packed is None or not packed.isascii():   # ... but a varint byte holds 0..127
            packed = b"".join(_varint(int(v)) for v in values)
        return _len_field(0x1A, _len_field(0x0A, packed))
    raise ValueError(f"unknown feature kind {kind!r}")


_NAME_FIELDS: Dict[str, bytes] = {}


def _name_field(name: str) -> bytes:
    field = _NAME_FIELDS.get(name)
    if field is None:
        field = _NAME_FIELDS[name] = _len_field(0x0A, name.encode("utf-8"))
    return field


_ORDERS: Dict[Tuple[str, ...], List[Tuple[str, bytes]]] = {}


def _order(names: Tuple[str, ...]) -> List[Tuple[str, bytes]]:
    """The serialization order of a set of feature names, with each name's encoded field (cached: the
    records of a shard all have the same names)."""
    order = _ORDERS.get(names)
    if order is None:
        # upb's deterministic map order: bytewise, and a name sorts *before* its own prefixes ("ab" < "a").
        # (C++ protobuf puts prefixes first; the two agree for names where none is a prefix of another,
        # as in kpconv.records.FEATURES.)
        order = [(n, _name_field(n)) for n in sorted(names, key=lambda n: (*n.encode("utf-8"), 256))]
        if len(_ORDERS) < 64:
            _ORDERS[names] = order
    return order


_ENCODERS: Dict[Tuple[Tuple[str, str], ...], "ExampleEncoder"] = {}


def encode_example(features: Features) -> bytes:
    """Serialize a ``tf.train.Example``, byte-identical to TF's deterministic serialization."""
    key = tuple((name, kind) for name, (kind, _) in features.items())
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = ExampleEncoder(dict(key))
        if len(_ENCODERS) < 64:
            _ENCODERS[key] = enc
    return enc.encode([values for _, values in features.values()])


class ExampleEncoder:
    """:func:`encode_example` for records that all have the same feature names and kinds (a shard's):
    the serialization order and each name's field are worked out once. ``encode(values)`` takes one
    list of values per name, in the order of ``kinds``; the bytes are those of ``encode_example``."""

    def __init__(self, kinds: Dict[str, str]):
        names = list(kinds)
        for kind in kinds.values():
            if kind not in ("bytes", "float", "int64"):
                raise ValueError(f"unknown feature kind {kind!r}")
        self.names = tuple(names)
        self._plan = [(names.index(n), kinds[n], name_field) for n, name_field in _order(self.names)]

    def encode(self, values: Sequence[Sequence[Value]]) -> bytes:
        parts = [b""]
        append = parts.append
        total = 0
        v1 = _VARINT1
        for index, kind, name_field in self._plan:
            vals = values[index]
            n = len(vals)
            if kind == "float" and 0 < n < 31:
                pack = _FLOAT_PACK.get(n) or _FLOAT_PACK.setdefault(n, struct.Struct(f"<{n}f"))
                feature = b"\x12" + v1[4 * n + 2] + b"\x0a" + v1[4 * n] + pack.pack(*vals)
            elif kind == "int64" and n == 1:
                packed = _varint(int(vals[0]))
                feature = b"\x1a" + v1[len(packed) + 2] + b"\x0a" + v1[len(packed)] + packed
            elif kind == "bytes" and n == 1 and type(vals[0]) is bytes and len(vals[0]) >= 0x80:
                # a big value (the image): its header here, the value itself joined once, at the end
                v = vals[0]
                item = _varint(len(v))
                body = b"\x0a" + _len_prefix(1 + len(item) + len(v)) + b"\x0a" + item
                fl = len(body) + len(v)
                el = _len_prefix(len(name_field) + 1 + len(_len_prefix(fl)) + fl)
                append(b"\x0a" + el + name_field + b"\x12" + _len_prefix(fl) + body)
                append(v)
                total += 1 + len(el) + len(name_field) + 1 + len(_len_prefix(fl)) + fl
                continue
            else:
                feature = _feature(kind, vals)
            fl = len(feature)
            entry_len = len(name_field) + fl + (2 if fl < 0x80 else 1 + len(_varint(fl)))
            if entry_len < 0x80 and fl < 0x80:
                append(b"\x0a" + v1[entry_len] + name_field + b"\x12" + v1[fl] + feature)
                total += 2 + entry_len
            else:
                el = _len_prefix(entry_len)
                append(b"\x0a" + el + name_field + b"\x12" + _len_prefix(fl))
                append(feature)
                total += 1 + len(el) + entry_len
        parts[0] = b"\x0a" + _len_prefix(total)
        return b"".join(parts)


# --------------------------------------------------------------------------------- protobuf decoding
def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """(field number, wire type, value) of each field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def decode_example(data: bytes) -> Dict[str, Tuple[str, List[Value]]]:
    """Parse a serialized ``tf.train.Example`` into ``{name: (kind, values)}``. Raises ValueError."""
    out: Dict[str, Tuple[str, List[Value]]] = {}
    for number, _, features in _fields(data):
        if number != 1:
            continue
        for fnum, _, entry in _fields(features):
            if fnum != 1:
                continue
            name, feature = "", b""
            for enum, _, v in _fields(entry):
                if enum == 1:
                    name = v.decode("utf-8")
                elif enum == 2:
                    feature = v
            kind, values = "bytes", []
            for knum, _, lst in _fields(feature):
                kind = {1: "bytes", 2: "float", 3: "int64"}.get(knum)
                if kind is None:
                    raise ValueError(f"feature {name!r}: unknown kind field {knum}")
                values = []
                for vnum, wire, v in _fields(lst):
                    if vnum != 1:
                        continue
                    if kind == "bytes":
                        values.append(bytes(v))
                    elif kind == "float":
                        values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
                    else:
                        if wire == 2:
                            p = 0
                            while p < len(v):
                                x, p = _read_varint(v, p)
                                values.append(x - (1 << 64) if x >= 1 << 63 else x)
                        else:
                            values.append(v - (1 << 64) if v >= 1 << 63 else v)
            out[name] = (kind, values)
    return out
