"""The released checkpoints: each loads, meets its release targets, and its numbers are the README's."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from models.checkpoint import load
from models.config import PRESETS
from models.decoder_id import decoder_id
from training.data import load_split
from training.evaluate import score

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "models" / "weights"
SHIPPED = WEIGHTS / "vqvae.safetensors"  # the one the service serves by default
GRID16 = WEIGHTS / "vqvae_grid16.safetensors"  # 4x fewer bits, for VQVAE_CHECKPOINT

# (checkpoint, grid of a 256x256 slice, bits per slice, test-split floors for mean SSIM and 5th percentile, training
# images recorded, distinct ones); the floors sit below the recorded figures, so a checkpoint swapped for a worse one
# fails here. Both releases trained on a GPU on part of the training slices, each linked 8 times (docs/experiments.md,
# Runs 2c and 4): grid16 on 1,000, the default on 1,200; their metadata says so beside the images training counted, and
# GET /model shows it.
FILES = [pytest.param(SHIPPED, id="default"), pytest.param(GRID16, id="grid16")]
RELEASES = [
    pytest.param(SHIPPED, (32, 32), 10_240, 0.96, 0.95, 9_600, 1_200, id="default"),
    pytest.param(GRID16, (16, 16), 2_560, 0.90, 0.88, 8_000, 1_000, id="grid16"),
]
# What /encode tags each release's codes with (models.decoder_id), as the README quotes them: a retrained file must
# change it, and a metadata rewrite (vqvae-eval --record, grid16's distinct_images) must not.
DECODER_IDS = [
    pytest.param(SHIPPED, "eb2dae456043f2d95e51d6c234b7eee45614bf8d41d8f79eff9ff20c3cddddee", id="default"),
    pytest.param(GRID16, "de54612ebfa27b1ffc8705c4b28ea2b737391d19afe63f580ba002eb75e17cde", id="grid16"),
]


@pytest.mark.parametrize(("path", "grid", "bits", "mean_floor", "p5_floor", "train_images", "distinct"), RELEASES)
def test_released_checkpoint_loads_and_meets_its_targets(
    path: Path, grid: tuple[int, int], bits: int, mean_floor: float, p5_floor: float, train_images: int, distinct: int
) -> None:
    model, metadata = load(path)
    assert path.stat().st_size < 32 * 1024 * 1024  # the default's 7.4M parameters take 28.4 MiB in float32
    assert model.config.grid_for(256, 256) == grid
    assert model.config.bits_for(256, 256) == bits
    test = metadata["metrics"]["test"]
    assert test["images"] == 544
    assert test["ssim"]["mean"] >= mean_floor and test["ssim"]["p5"] >= p5_floor
    assert test["codebook_usage"] >= 0.90
    assert metadata["data"]["train"]["images"] == train_images and metadata["git_commit"]
    assert metadata["data"]["train"].get("distinct_images", train_images) == distinct


@pytest.mark.parametrize(
    ("path", "preset"), [pytest.param(SHIPPED, "wide", id="default"), pytest.param(GRID16, "grid16")]
)
def test_released_checkpoint_is_its_preset(path: Path, preset: str) -> None:
    """`vqvae-train --preset NAME`, the README's recipe, builds the released architecture (the default's metadata
    names the experiment's 'wboth', which became 'wide')."""
    assert load(path)[0].config == PRESETS[preset]


@pytest.mark.parametrize(("path", "expected"), DECODER_IDS)
def test_released_checkpoint_keeps_its_decoder_id_and_the_readme_quotes_it(path: Path, expected: str) -> None:
    assert decoder_id(load(path)[0]) == expected
    assert f"{expected[:12]}..." in (REPO / "README.md").read_text()  # its examples cut the id short
    assert f"`{expected}`" in (WEIGHTS / "README.md").read_text()  # the model card, whole


@pytest.mark.parametrize("path", FILES)
def test_readme_and_model_card_quote_the_recorded_test_ssim(path: Path) -> None:
    _, metadata = load(path)
    figure = f"{metadata['metrics']['test']['ssim']['mean']:.4f}"
    for document in (REPO / "README.md", WEIGHTS / "README.md"):
        assert figure in document.read_text(), f"{document} does not quote {path.name}'s mean SSIM {figure}"


def test_readme_headline_is_the_served_checkpoint() -> None:
    _, metadata = load(SHIPPED)
    quoted = re.findall(r"mean SSIM \*\*(0\.\d{4})\*\*", (REPO / "README.md").read_text())[0]
    assert quoted == f"{metadata['metrics']['test']['ssim']['mean']:.4f}"


@pytest.mark.parametrize("path", FILES)
def test_mean_ssim_on_the_genuine_test_split(path: Path, shared_oasis: Path) -> None:
    """Scored again now, on all 544 slices: the recorded figures are this file's."""
    model, metadata = load(path)
    report, _ = score(model, load_split(shared_oasis, "test"))
    recorded = metadata["metrics"]["test"]
    assert report["images"] == 544
    assert report["ssim"]["mean"] == pytest.approx(recorded["ssim"]["mean"], abs=1e-4)
    assert report["ssim"]["p5"] == pytest.approx(recorded["ssim"]["p5"], abs=1e-4)


def test_the_committed_rate_distortion_table_is_the_shipped_checkpoints() -> None:
    """docs/rate_distortion.json (and its figure) are the README's: once a check of bad input run with the script's
    default outputs left a table of a 2-image test in their place, committed unseen. Its points must be the test
    reports of the shipped checkpoints, and its codecs measured on every 4th slice of that split."""
    docs = REPO / "docs"
    table = json.loads((docs / "rate_distortion.json").read_text())
    reports = {
        path.stem: json.loads(path.read_text())
        for path in (docs / "eval_grid16_release_test.json", docs / "eval_default_test.json")
    }
    for stem, report in reports.items():
        _, metadata = load(SHIPPED if stem == "eval_default_test" else GRID16)
        assert report["ssim"] == metadata["metrics"]["test"]["ssim"]  # the report of the file shipped
    assert table["points"] == [
        {"label": stem, "bits": report["bits_per_slice"], "ssim": report["ssim"]["mean"]}
        for stem, report in reports.items()
    ]
    assert table["codec_images"] == math.ceil(reports["eval_default_test"]["images"] / 4) == 136
    assert all(row["images"] == 136 for rows in table["codecs"].values() for row in rows)
