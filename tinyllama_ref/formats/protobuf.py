"""A tiny reader for the protobuf wire format: just enough to read a SentencePiece `tokenizer.model`.

A protobuf message is a flat run of fields. Each field starts with a varint key,
`field_number << 3 | wire_type`, and the wire type says how long the value is:

    0  varint            an integer in 7-bit groups, low group first, high bit = "more follows"
    1  64-bit            8 little-endian bytes (double, fixed64)
    2  length-delimited  a varint length, then that many bytes (string, bytes, sub-message)
    5  32-bit            4 little-endian bytes (float, fixed32)

A sub-message is just the bytes of a length-delimited field, read with the same loop.
"""
from __future__ import annotations

import struct

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint starting at `pos`, and the position just after it.

    >>> read_varint(bytes([0x96, 0x01]), 0)   # 0x16 + (0x01 << 7) = 150
    (150, 2)
    """
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(buf: bytes):
    """Yield (field_number, wire_type, value) for each field of one message.

    value is an int for varints, raw bytes for the other wire types.

    >>> list(iter_fields(bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69])))
    [(1, 0, 150), (2, 2, b'hi')]
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise ProtobufError(f"field number 0 at byte {pos}")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire_type == FIXED32:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire_type == FIXED64:
            value, pos = buf[pos:pos + 8], pos + 8
        else:  # 3 and 4 are the long-deprecated groups; nothing we read uses them
            raise ProtobufError(f"unsupported wire type {wire_type} for field {field}")
        if pos > end:
            raise ProtobufError(f"field {field} runs past the end of its message ({pos} > {end} bytes)")
        yield field, wire_type, value


def as_int32(varint: int) -> int:
    """A varint read back as a signed int32 (negative int32s travel as 10-byte two's complement).

    >>> as_int32(2**64 - 1)
    -1
    """
    varint &= 0xFFFFFFFFFFFFFFFF
    return varint - (1 << 64) if varint >= 1 << 63 else varint


def as_float32(raw: bytes) -> float:
    """A 4-byte little-endian IEEE float.

    >>> as_float32(struct.pack('<f', -2.5))
    -2.5
    """
    return struct.unpack("<f", raw)[0]


def parse_message(buf: bytes, schema: dict) -> dict:
    """Read one message into a dict, keeping only the fields named in `schema`.

    schema maps field number -> (name, kind) where kind is one of
    "string", "bytes", "bool", "int32", "uint64", "float", ("message", sub_schema);
    a name ending in "[]" collects a repeated field into a list. Unknown fields are skipped,
    as protobuf readers do.

    >>> parse_message(bytes([0x08, 0x01, 0x12, 0x02, 0x68, 0x69]), {1: ("flag", "bool"), 2: ("name", "string")})
    {'flag': True, 'name': 'hi'}
    """
    out: dict = {}
    for field, wire_type, value in iter_fields(buf):
        if field not in schema:
            continue
        name, kind = schema[field]
        expected = FIXED32 if kind == "float" else LENGTH_DELIMITED if kind in ("string", "bytes") or isinstance(kind, tuple) else VARINT
        if wire_type != expected:
            raise ProtobufError(f"field {field} ({name.rstrip('[]')}) has wire type {wire_type}, expected {expected}")
        if kind == "string":
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProtobufError(f"field {field} ({name.rstrip('[]')}) is not valid UTF-8: {e}") from None
        elif kind == "bytes":
            value = bytes(value)
        elif kind == "bool":
            value = value != 0
        elif kind == "int32":
            value = as_int32(value)
        elif kind == "float":
            value = as_float32(value)
        elif isinstance(kind, tuple):
            value = parse_message(value, kind[1])
        if name.endswith("[]"):
            out.setdefault(name[:-2], []).append(value)
        else:
            out[name] = value
    return out
