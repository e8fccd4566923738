"""libtiff's own messages kept off the service's stderr.

Pillow decodes compressed TIFFs with libtiff, which writes its errors and warnings straight to the process's stderr
(``ZIPDecode: Decoding error at scanline 0, incorrect data check.``): a line per corrupt upload, written at a caller's
will, outside the log's format (every line of ``VQVAE_LOG_FORMAT=json`` is otherwise a JSON object), while the
caller's 400 already says that the file could not be decoded. The service's loggers likewise drop
python-multipart's messages about malformed forms (``app.main``). The offline tools keep libtiff's messages: there
they name a damaged file of the operator's own data set.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import PIL._imaging  # noqa: F401  (loads the libtiff that Pillow decodes with)

logger = logging.getLogger(__name__)

MAPS = Path("/proc/self/maps")  # Linux: the files mapped into this process, the shared libraries among them


def loaded_libtiff(maps: Path = MAPS) -> str | None:
    """The path of the libtiff loaded into this process (Pillow's wheels bundle their own), or None where it cannot
    be told (not Linux, a Pillow built without libtiff)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith("libtiff"):
            return fields[5]
    return None


@functools.cache
def silence_libtiff() -> bool:
    """Set libtiff's error and warning handlers to none (they are process-wide; once per process). Whether it was
    done: where it cannot be, libtiff's lines still reach stderr, and nothing else changes."""
    path = loaded_libtiff()
    if path is None:
        return False
    try:
        library = ctypes.CDLL(path)  # the same library instance: dlopen of a loaded file returns its handle
        for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
            setter = getattr(library, name)
            setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
            setter(None)
    except (OSError, AttributeError) as exc:
        logger.debug("libtiff's messages are left on stderr: %s", exc)
        return False
    return True
