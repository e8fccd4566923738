"""models.jpeg_markers: the refusal of a JPEG over the bounds, the text the service and the training CLIs both say."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.jpeg_markers import MAX_EXTRANEOUS, MAX_SCANS, MAX_SEGMENTS, marker_refusal
from tests.conftest import crafted_jpegs
from training.synthetic import synthetic_slice

SAID = {
    "scans": f"the JPEG holds over {MAX_SCANS} scans, each decoded over the whole image",
    "segments": f"the JPEG holds over {MAX_SEGMENTS} segments (markers)",
    "stray bytes": f"the JPEG holds over {MAX_EXTRANEOUS} bytes between its segments that belong to none",
}


@pytest.mark.parametrize("kind", SAID)
def test_a_jpeg_over_a_bound_has_a_refusal_naming_it(kind: str) -> None:
    refusal = marker_refusal(crafted_jpegs()[kind])
    assert refusal is not None and refusal.startswith(SAID[kind]), refusal


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"progressive": True, "optimize": True}])
def test_jpegs_as_pillow_writes_them_and_other_data_have_none(mode: str, options: dict[str, bool]) -> None:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_slice(np.random.default_rng(0), (64, 48))).convert(mode).save(
        buffer, format="JPEG", **options
    )
    assert marker_refusal(buffer.getvalue()) is None
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    for other in (png.getvalue(), b"", b"\xff\xd8", b"\xff\xd8\xff"):  # not a JPEG, or too short for a marker
        assert marker_refusal(other) is None, other
