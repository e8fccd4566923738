"""The released checkpoint: it loads, meets the release targets, and its numbers are the README's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.checkpoint import load
from training.data import load_split
from training.evaluate import score

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "weights" / "vqvae.safetensors"


def test_shipped_checkpoint_loads_and_is_small() -> None:
    model, metadata = load(SHIPPED)
    assert SHIPPED.stat().st_size < 20 * 1024 * 1024
    assert model.config.bits_for(256, 256) <= 10_240
    test = metadata["metrics"]["test"]
    assert test["images"] == 544
    assert test["ssim"]["mean"] >= 0.93 and test["ssim"]["p5"] >= 0.88
    assert test["codebook_usage"] >= 0.90
    assert metadata["data"]["train"]["images"] > 0 and metadata["git_commit"]


def test_readme_and_model_card_quote_the_recorded_test_ssim() -> None:
    _, metadata = load(SHIPPED)
    figure = f"{metadata['metrics']['test']['ssim']['mean']:.4f}"
    for document in (REPO / "README.md", REPO / "models" / "weights" / "README.md"):
        assert figure in document.read_text(), f"{document} does not quote the recorded mean SSIM {figure}"


def test_mean_ssim_on_the_genuine_test_split(shared_oasis: Path) -> None:
    model, metadata = load(SHIPPED)
    report, _ = score(model, load_split(shared_oasis, "test"))
    readme = (REPO / "README.md").read_text()
    quoted = float(re.findall(r"mean SSIM \*\*(0\.\d{4})\*\*", readme)[0])
    assert report["images"] == 544
    assert report["ssim"]["mean"] >= quoted - 0.005
    assert report["ssim"]["mean"] == pytest.approx(metadata["metrics"]["test"]["ssim"]["mean"], abs=1e-4)
