"""A JPEG's scans and segments, counted from its bytes before Pillow (libjpeg) decodes it.

A progressive JPEG is decoded once per scan, over the whole image each time, so its pixel count does not bound its
cost. A reviewer's 606 KB upload, a 1024x1024 image followed by 50,000 copies of a 12-byte scan, took 18 s to
decode, on a worker thread that a caller's hang-up does not stop; one at the 20 MiB body limit would have taken
about 15 minutes. Encoders write a handful of scans: libjpeg's progressive script has 10 for colour and 6 for grey,
a baseline file one per component (at most 4). Segments are bounded too, since each costs Pillow's Python parser
(and this walk) a loop turn: a file has a few dozen (tables, EXIF, ICC profile chunks).
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_SCANS = 100
MAX_SEGMENTS = 1000
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, _SOI, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: no length field
# After a scan's header, its entropy-coded data runs to the next marker: an 0xFF that is not a stuffed 0x00, a
# restart marker (inside the data) or a fill byte (before a marker).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class MarkerCount(NamedTuple):
    scans: int
    segments: int  # markers, scans' included


def count_markers(data: bytes) -> MarkerCount:
    """Scans (SOS) and segments of the JPEG in ``data``, walked by their lengths, so that an EXIF thumbnail's own
    markers are not counted; the walk stops once either passes its bound, at the end of the image, or where the
    file is cut short or corrupt (Pillow reports that)."""
    scans = segments = 0
    at, end = 2, len(data)  # after SOI
    while at < end and data[at] == 0xFF and scans <= MAX_SCANS and segments <= MAX_SEGMENTS:
        while at < end and data[at] == 0xFF:  # fill bytes may precede a marker
            at += 1
        if at >= end:
            break
        marker = data[at]
        at += 1
        segments += 1
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        length = int.from_bytes(data[at : at + 2], "big")
        if length < 2:  # cut short or corrupt
            break
        at += length
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
    return MarkerCount(scans, segments)
