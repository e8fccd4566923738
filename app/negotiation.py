"""Content negotiation: which of the types an endpoint can produce the Accept header allows, and 406 when none.

RFC 9110, 12.5.1: a type's weight is the q of the most specific range that matches it (``image/png`` over
``image/*`` over ``*/*``), so ``*/*, image/png;q=0`` excludes PNG; q=0 means "not acceptable"; no Accept header
means anything goes. Entries that cannot be read (a q that is not a number from 0 to 1, a range that is not
``type/subtype``) are skipped rather than refusing the request for them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi import HTTPException, Request

_MAX_SHOWN = 60  # characters of the caller's Accept header quoted back in a 406
# Characters of an Accept header read: browsers send a few hundred. It is parsed on the event loop, and uvicorn
# takes headers of megabytes, which held every other request for seconds. A longer one is refused (431): reading
# part of it misread it, as a ``image/png;q=0`` past the bound was then not read and PNG was answered.
MAX_ACCEPT_CHARS = 4096
_HEADER_TOO_LARGE = 431  # RFC 6585: Request Header Fields Too Large


class AcceptTooLongError(ValueError):
    """An Accept header over ``MAX_ACCEPT_CHARS``."""


@dataclass(frozen=True)
class MediaRange:
    """One Accept entry: ``type/subtype`` (either may be ``*``) and its weight."""

    type: str
    subtype: str
    quality: float

    def specificity(self, media_type: str) -> int | None:
        """How closely this range names ``media_type``: 2 exactly, 1 ``type/*``, 0 ``*/*``; None if it does not."""
        kind, _, subtype = media_type.partition("/")
        if self.type == "*":
            return 0
        if self.type != kind:
            return None
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == subtype else None


def parse_accept(header: str) -> list[MediaRange]:
    """An Accept header's readable entries, lower case, media type parameters other than q ignored;
    ``AcceptTooLongError`` over ``MAX_ACCEPT_CHARS``."""
    if len(header) > MAX_ACCEPT_CHARS:
        raise AcceptTooLongError(
            f"the Accept header is {len(header)} characters long, over the {MAX_ACCEPT_CHARS} read; send a shorter one"
        )
    ranges = []
    for entry in _split(header, ","):
        media, *parameters = (part.strip() for part in _split(entry, ";"))
        kind, slash, subtype = media.lower().partition("/")
        quality = _quality(parameters)
        if slash and _is_range(kind, subtype) and quality is not None:
            ranges.append(MediaRange(kind, subtype, quality))
    return ranges


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside quoted strings: a parameter value may be ``"a,b"`` (RFC 9110, 5.6.4)."""
    return _SPLITTERS[separator].findall(text) or [""]


# A run of characters other than the separator and '"', or a whole quoted string (backslash escapes included). The
# alternatives start differently, so matching is linear; an unpaired '"' is dropped.
_SPLITTERS = {sep: re.compile(rf'(?:"(?:\\.|[^"\\])*"|[^{sep}"])+') for sep in ",;"}


def _is_range(kind: str, subtype: str) -> bool:
    """``type/subtype``, ``type/*`` or ``*/*``: a ``*`` stands for a whole part only, and ``*/subtype`` is none."""
    if not kind or not subtype:
        return False
    if subtype == "*":
        return kind == "*" or "*" not in kind
    return "*" not in kind + subtype


def _quality(parameters: Sequence[str]) -> float | None:
    """The q parameter's value (1 when absent); None when it is not a number from 0 to 1."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                return None
            return quality if math.isfinite(quality) and 0 <= quality <= 1 else None
    return 1.0


def weight(ranges: Sequence[MediaRange], media_type: str) -> float:
    """``media_type``'s weight: the q of the most specific matching range (the highest q among equals), else 0."""
    best = (-1, 0.0)
    for media_range in ranges:
        specificity = media_range.specificity(media_type)
        if specificity is not None:
            best = max(best, (specificity, media_range.quality))
    return best[1]


def choose(accept: str, offers: Sequence[str]) -> str | None:
    """The offer the Accept header ranks highest, the first offer on ties; None when it allows none of them.

    An empty or unreadable header allows anything, like no header: the first offer.
    """
    ranges = parse_accept(accept)
    if not ranges:
        return offers[0]
    weights = [weight(ranges, offer) for offer in offers]
    best = max(weights)
    return offers[weights.index(best)] if best > 0 else None


def produces(*offers: str) -> Callable[[Request], Awaitable[str]]:
    """A dependency giving the media type to answer in (``offers`` in order of preference), or 406."""

    async def negotiate(request: Request) -> str:
        accept = ", ".join(request.headers.getlist("accept"))  # a header sent on several lines counts whole
        try:
            chosen = choose(accept, offers)
        except AcceptTooLongError as exc:
            raise HTTPException(_HEADER_TOO_LARGE, f"{exc} (this endpoint answers {', '.join(offers)})") from exc
        if chosen is None:
            shown = accept if len(accept) <= _MAX_SHOWN else accept[:_MAX_SHOWN] + "..."
            raise HTTPException(
                406, f"the Accept header ({shown!r}) allows none of what this endpoint answers: {', '.join(offers)}"
            )
        return chosen

    return negotiate
