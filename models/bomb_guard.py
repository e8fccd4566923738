"""What an image's header claimed when Pillow's own decompression-bomb guard refused it, for the refusal's message."""

from __future__ import annotations

import re

from PIL import Image

# Pillow's words: "Image size (225000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb ..."
_CLAIMED = re.compile(r"\((\d+) pixels\)")


def claimed_pixels(exc: Image.DecompressionBombError) -> str:
    """The size the header claimed ("225000000 pixels"), where Pillow's message gives it; else "over" Pillow's
    threshold. The size is what tells a caller how far over the limit the image is (a review: a 15000x15000 header
    was refused as "over 178956970 pixels", a 10000x10000 one with its size)."""
    found = _CLAIMED.search(str(exc))
    return f"{found.group(1)} pixels" if found else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels"
