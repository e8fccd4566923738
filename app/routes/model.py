"""GET /model: what is being served, what a slice costs in codes, and where the checkpoint came from."""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import APIRouter

from app.routes.deps import Service, error_responses
from app.schemas import ModelInfo, SliceBudget
from models.checkpoint import recorded

router = APIRouter(tags=["model"])

_SHOWN_APART = {"config", "format_version", "metrics"}  # in their own fields of the answer
# Metadata fields that hold a file or folder of the machine that trained or evaluated the checkpoint (training's
# --data, --out and splits, the data root, vqvae-eval's --checkpoint and split folder). A split may be a folder.
_PATH_KEYS = {"checkpoint", "data", "out", "root", "split", "train_split", "val_split"}
# Left out: a sha256 of the training images (what --resume compares) would let anyone holding a candidate data set
# confirm that it trained the model.
_HIDDEN_KEYS = {"fingerprint"}


@router.get("/model", response_model=ModelInfo, responses=error_responses(503), summary="The served checkpoint")
async def model_info(service: Service) -> ModelInfo:
    config, metadata = service.config, service.metadata
    bits = config.bits_for(256, 256)
    metrics = recorded(metadata, "metrics")  # {split: headline report}, from training / vqvae-eval
    test = metrics.get("test")
    return ModelInfo(
        checkpoint=service.settings.checkpoint.name,
        sha256=service.sha256,
        decoder_id=service.decoder_id,
        format_version=int(metadata["format_version"]),
        architecture=config.to_dict(),
        codebook_size=config.codebook_size,
        bits_per_index=config.bits_per_index,
        stride=config.stride,
        slice_256=SliceBudget(
            image_size=(256, 256), grid=config.grid_for(256, 256), bits=bits, compression_ratio=256 * 256 * 8 / bits
        ),
        test_metrics=_names_only(test) if isinstance(test, dict) else None,
        metrics=_names_only(_by_split_name(metrics)),
        provenance=_names_only({key: value for key, value in metadata.items() if key not in _SHOWN_APART}),
    )


def _names_only(value: Any) -> Any:
    """``value`` with every recorded path cut to its last name (``/data/site-a/patients/oasis`` -> ``oasis``), as the
    answer's ``checkpoint`` is: a path of the machine the checkpoint was made on means nothing to a caller, and
    would show anyone who can reach the service that machine's folders."""
    if isinstance(value, dict):
        return {
            key: _name(item) if key in _PATH_KEYS and isinstance(item, str) else _names_only(item)
            for key, item in value.items()
            if key not in _HIDDEN_KEYS
        }
    if isinstance(value, list):
        return [_names_only(item) for item in value]
    return value


def _by_split_name(metrics: dict[str, Any]) -> dict[str, Any]:
    """Recorded metrics keyed by their split's last name (``vqvae-eval --split /data/site-a/test --record`` is
    recorded under that whole path); a name already taken gets a number (``test (2)``). Names recorded as such
    (``test``, an OASIS split's, which is also ``test_metrics``) come first, so that a folder named alike and
    recorded earlier does not take theirs."""
    renamed: dict[str, Any] = {}
    bare_first = sorted(metrics.items(), key=lambda item: _name(item[0]) != item[0])  # stable: else as recorded
    for split, report in bare_first:
        name = _name(split)
        key, copy = name, 2
        while key in renamed:
            key, copy = f"{name} ({copy})", copy + 1
        renamed[key] = report
    return renamed


def _name(path: str) -> str:
    """The last name of a POSIX or a Windows path (a checkpoint may have been trained on either)."""
    flavour: type[PurePath] = PureWindowsPath if "\\" in path else PurePosixPath
    return flavour(path).name or path
