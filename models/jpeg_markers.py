"""A JPEG's scans and segments, counted from its bytes before Pillow (libjpeg) decodes it, and the refusal of one
over the bounds: the service (``app.imaging``) and ``vqvae-train`` / ``vqvae-eval`` (``training.data``) say the same.

A progressive JPEG is decoded once per scan, over the whole image each time, so its pixel count does not bound its
cost. A reviewer's 606 KB upload, a 1024x1024 image followed by 50,000 copies of a 12-byte scan, took 18 s to
decode, on a worker thread that a caller's hang-up does not stop; one at the 20 MiB body limit would have taken
about 15 minutes. Encoders write a handful of scans: libjpeg's progressive script has 10 for colour and 6 for grey,
a baseline file one per component (at most 4); a review's 112 files written by Pillow had 18 at most. Segments
are bounded too, since each costs Pillow's Python parser (and this walk) a loop turn: a file has a few dozen (tables,
EXIF, ICC profile chunks).
"""

from __future__ import annotations

import re
from typing import NamedTuple

JPEG_SIGNATURE = b"\xff\xd8\xff"  # SOI and the next marker's first byte
MAX_SCANS = 100
MAX_SEGMENTS = 1000
# Bytes between segments that are no marker (junk, fill bytes, stuffed 0xFF00): libjpeg skips them with a warning,
# but Pillow's parser of the header takes a Python loop turn for each, 5 s for 20 MiB of fill bytes. Encoders write
# none, or a few fill bytes.
MAX_EXTRANEOUS = 64 * 1024
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, _SOI, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: no length field
# The next marker as libjpeg finds it (``next_marker``): any bytes before an 0xFF are skipped as junk, fill bytes
# (0xFF runs) before the marker's code, and a stuffed 0xFF00. No quantifier: the search stays linear on any input.
_MARKER = re.compile(rb"\xff[^\x00\xff]")
# A scan's entropy-coded data runs to its first marker from 0xC0 up that is not a restart marker (RST0-7 sit inside
# the data). libjpeg skips a marker under 0xC0 there when resyncing to a restart marker (``jpeg_resync_to_restart``),
# so the scans after it are decoded: a review hid 54,000 scans in segments of marker 0x02 inside a scan.
_SCAN_END = re.compile(rb"\xff[\xc0-\xcf\xd8-\xfe]")


class MarkerCount(NamedTuple):
    scans: int
    segments: int  # markers, scans' included
    extraneous: int  # bytes between segments that are no marker


def count_markers(data: bytes) -> MarkerCount:
    """Scans (SOS) and segments of the JPEG in ``data``, walked as libjpeg reads them: by their lengths, so that an
    EXIF thumbnail's own markers are not counted; past junk between segments, and past a length under 2 (which
    skips nothing), as libjpeg goes on past both. A walk that stopped there, as the first version did, let a crafted
    file hide 50,000 scans behind 4 bytes. It stops once a count passes its bound, at the end of the image (EOI,
    where libjpeg stops too), or at the end of the data."""
    scans = segments = extraneous = 0
    at = 2  # after SOI
    while scans <= MAX_SCANS and segments <= MAX_SEGMENTS and extraneous <= MAX_EXTRANEOUS:
        found = _MARKER.search(data, at)
        if found is None:
            break
        extraneous += found.start() - at
        marker, at = data[found.start() + 1], found.end()
        segments += 1
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        at += max(int.from_bytes(data[at : at + 2], "big"), 2)  # the length counts its own 2 bytes
        if marker == _SOS:
            scans += 1
            found = _SCAN_END.search(data, at)
            if found is None:
                break
            at = found.start()
    return MarkerCount(scans, segments, extraneous)


def marker_refusal(data: bytes) -> str | None:
    """Why the JPEG in ``data`` is refused before Pillow parses or decodes it: more scans, segments or stray bytes
    than an encoder writes (each scan is decoded over the whole image, so a crafted file's cost grows with its scans,
    not its pixels). None for a JPEG within the bounds, and for data that is no JPEG."""
    if not data.startswith(JPEG_SIGNATURE):
        return None
    found = count_markers(data)
    if found.scans > MAX_SCANS:
        return (
            f"the JPEG holds over {MAX_SCANS} scans, each decoded over the whole image; encoders write 20 at most "
            "(a crafted file?)"
        )
    if found.segments > MAX_SEGMENTS:
        return f"the JPEG holds over {MAX_SEGMENTS} segments (markers); encoders write a few dozen (a crafted file?)"
    if found.extraneous > MAX_EXTRANEOUS:
        return (
            f"the JPEG holds over {MAX_EXTRANEOUS} bytes between its segments that belong to none; encoders write none "
            "(a crafted or damaged file?)"
        )
    return None
