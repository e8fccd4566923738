"""Crafted PNG uploads, the worst small files the event loop may be handed: shared by ``bench_app`` (which times
them) and the imaging tests (which check that they are refused or decoded in time)."""

from __future__ import annotations

import struct
import zlib


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk as the format lays it out: length, type, data, CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


EMPTY_CHUNK = png_chunk(b"prVt", b"")  # a private chunk Pillow skips, after parsing it in Python
TEXT_BOMB_CHUNK = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(bytes(1 << 20), 9))  # 1 KiB -> 1 MiB of text


def with_header_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (valid CRC): a decompression bomb's header."""
    ihdr = bytearray(png[16:29])  # the IHDR chunk's data, after the signature, its length and its type
    ihdr[0:8] = struct.pack(">II", width, height)
    return png[:8] + png_chunk(b"IHDR", bytes(ihdr)) + png[33:]


def padded_png(png: bytes, chunk: bytes, size: int) -> bytes:
    """The same PNG padded to about ``size`` bytes with copies of ``chunk`` before its image data."""
    count = max(0, size - len(png)) // len(chunk)
    return png[:33] + chunk * count + png[33:]  # after the signature (8 bytes) and the IHDR chunk (25)
