"""libtiff's messages about corrupt uploads are kept off the service's stderr (app.libtiff)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app import main
from app.libtiff import MAPS, loaded_libtiff

REPO_ROOT = Path(__file__).resolve().parents[2]
# In a child process: libtiff's handlers are process-wide, and the one process shows the line before and not after.
SCRIPT = """
import sys
from app.imaging import ImageError, decode_image
from app.libtiff import silence_libtiff
data = sys.stdin.buffer.read()
for attempt in ("before", "after"):
    if attempt == "after":
        print("silenced", silence_libtiff(), flush=True)
    print(attempt, file=sys.stderr, flush=True)
    try:
        decode_image(data, max_pixels=1 << 20, min_size=8)
    except ImageError as exc:
        print(attempt, exc, flush=True)
"""


@pytest.mark.skipif(not MAPS.is_file(), reason=f"{MAPS} is Linux's; elsewhere libtiff's lines stay on stderr")
def test_libtiff_writes_to_stderr_until_silenced(corrupt_tiff: bytes) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], input=corrupt_tiff, capture_output=True, cwd=REPO_ROOT, timeout=120, check=True
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert "silenced True" in out
    assert out.count("could not decode the TIFF image") == 2  # the caller's 400 says so either way
    before, after = err.split("after")
    assert "ZIPDecode" in before, err
    assert after.strip() == "", err


@pytest.mark.skipif(not MAPS.is_file(), reason=f"{MAPS} is Linux's; elsewhere libtiff's lines stay on stderr")
def test_the_loaded_libtiff_is_found_in_the_process_maps(tmp_path: Path) -> None:
    found = loaded_libtiff()
    assert found is not None and Path(found).name.startswith("libtiff") and Path(found).is_file()
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 08:01 42 /usr/lib/libz.so.1\n"
        "7f02-7f03 r-xp 00000000 00:00 0 \n"
        "7f04-7f05 r--p 00000000 08:01 43 /opt/my libs/libtiff.so.6\n"
    )
    assert loaded_libtiff(maps) == "/opt/my libs/libtiff.so.6"
    assert loaded_libtiff(tmp_path / "absent") is None


def test_a_json_log_is_warned_when_libtiff_cannot_be_silenced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make_settings: Any
) -> None:
    monkeypatch.setattr(main, "silence_libtiff", lambda: False)
    with caplog.at_level(logging.DEBUG, logger="app.main"):
        main.create_app(make_settings(log_format="json"))
        main.create_app(make_settings())
    levels = [record.levelno for record in caplog.records if "libtiff" in record.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]
