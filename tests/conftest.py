"""Shared fixtures: small synthetic slice folders made by the tests, crafted JPEGs, and the genuine OASIS data when
present."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from models.jpeg_markers import MAX_EXTRANEOUS, MAX_SEGMENTS
from training.synthetic import synthetic_slice

# An operator's prometheus_client multiprocess folder would make this process's metric values file-backed (chosen
# when prometheus_client is first imported, which is after this) and shared by every app the tests build.
for _name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
    os.environ.pop(_name, None)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_OASIS = REPO_ROOT.parent / "shared" / "data" / "oasis"


def write_slices(folder: Path, count: int, seed: int, size: tuple[int, int] = (64, 64)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(synthetic_slice(rng, size)).save(folder / f"case_{seed:03d}_slice_{i}.nii.png")
    return folder


def repeated_last_scan(jpeg: bytes, copies: int, before: bytes = b"") -> bytes:
    """A progressive JPEG whose last scan (of a blank image: its header and a byte or two of data) is repeated
    ``copies`` times, after ``before``."""
    last_scan = jpeg[jpeg.rindex(b"\xff\xda") : -2]
    assert len(last_scan) <= 12, last_scan
    return jpeg[:-2] + before + last_scan * copies + b"\xff\xd9"


def crafted_jpegs(side: int = 64) -> dict[str, bytes]:
    """A progressive grey JPEG of ``side`` x ``side`` made over each bound of ``models.jpeg_markers``, by name: with
    its last scan repeated 1,000 times ("scans"), 1,000 one-byte comments before its segments ("segments"), and
    64 KiB and one of fill bytes after its first one ("stray bytes"). libjpeg decodes each of them."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="JPEG", progressive=True)  # scans of nearly no data
    jpeg = buffer.getvalue()
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    return {
        "scans": repeated_last_scan(jpeg, 1000),
        "segments": jpeg[:2] + b"\xff\xfe\x00\x03x" * MAX_SEGMENTS + jpeg[2:],
        "stray bytes": jpeg[:after_app0] + b"\xff" * (MAX_EXTRANEOUS + 1) + jpeg[after_app0:],
    }


def read_strict_json(path: Path) -> Any:
    """``path``'s JSON, failing on the NaN and Infinity that Python's json writes and reads, and JSON has not."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which JSON has not")

    return json.loads(path.read_text(), parse_constant=refuse)


def add_to_metadata(source: Path, target: Path, member: str) -> Path:
    """A copy of checkpoint ``source`` at ``target`` with ``member`` (raw JSON text, ``"name": value``) added to its
    metadata: json.dumps cannot write what some tests need (100,000 levels deep)."""
    with safe_open(str(source), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        text = handle.metadata()["vqvae"]
    save_file(tensors, str(target), metadata={"vqvae": f"{text[:-1]}, {member}}}"})
    return target


@pytest.fixture(scope="session")
def fixture_oasis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature OASIS-shaped root: keras_png_slices_{train,validate,test} of 64x64 synthetic slices."""
    root = tmp_path_factory.mktemp("oasis")
    for seed, split, count in ((1, "train", 24), (2, "validate", 8), (3, "test", 8)):
        write_slices(root / f"keras_png_slices_{split}", count, seed)
    return root


@pytest.fixture(scope="session")
def shared_oasis() -> Path:
    """The genuine OASIS slices beside the repository; tests that need them are skipped where absent."""
    if not (SHARED_OASIS / "keras_png_slices_test").is_dir():
        pytest.skip(f"genuine OASIS data not present at {SHARED_OASIS}")
    return SHARED_OASIS


@pytest.fixture(scope="session")
def oasis_root(fixture_oasis: Path) -> Path:
    """The genuine OASIS root when present, else the synthetic miniature: for tests that run either way."""
    return SHARED_OASIS if (SHARED_OASIS / "keras_png_slices_test").is_dir() else fixture_oasis


@pytest.fixture
def device_node(tmp_path: Path) -> Path:
    """A character device of the test's own in its temporary folder, with /dev/null's numbers (1, 3): an output a
    writer run as root must refuse, not replace with a plain file. Made here, never the real one."""
    if os.geteuid() != 0:
        pytest.skip("making a device node (mknod) needs root, and only root's writers could replace one")
    node = tmp_path / "fakenull"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return node
