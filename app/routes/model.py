"""GET /model: what is being served, what a slice costs in codes, and where the checkpoint came from."""

from __future__ import annotations

from fastapi import APIRouter

from app.routes.deps import Service, error_responses
from app.schemas import ModelInfo, SliceBudget

router = APIRouter(tags=["model"])

_SHOWN_APART = {"config", "format_version", "metrics"}  # in their own fields of the answer


@router.get("/model", response_model=ModelInfo, responses=error_responses(503), summary="The served checkpoint")
async def model_info(service: Service) -> ModelInfo:
    config, metadata = service.config, service.metadata
    bits = config.bits_for(256, 256)
    recorded = metadata.get("metrics")
    metrics = recorded if isinstance(recorded, dict) else {}  # {split: headline report}, from training / vqvae-eval
    test = metrics.get("test")
    return ModelInfo(
        checkpoint=service.settings.checkpoint.name,
        sha256=service.sha256,
        format_version=int(metadata["format_version"]),
        architecture=config.to_dict(),
        codebook_size=config.codebook_size,
        bits_per_index=config.bits_per_index,
        stride=config.stride,
        slice_256=SliceBudget(
            image_size=(256, 256), grid=config.grid_for(256, 256), bits=bits, compression_ratio=256 * 256 * 8 / bits
        ),
        test_metrics=test if isinstance(test, dict) else None,
        metrics=metrics,
        provenance={key: value for key, value in metadata.items() if key not in _SHOWN_APART},
    )
