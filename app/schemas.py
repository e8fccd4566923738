"""Request and response models: they are the OpenAPI contract shown on /docs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

# Strict: 3.0, true and "3" are not indices. The upper bound keeps numbers sane; the codebook size is checked
# by the route, which knows the model.
CodeIndex = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
# Far above any side the pixel limit lets through (the route checks that), so that every grid /encode answers
# decodes: an 8x32776 upload has a 1x4097 grid, which 4096 refused. What binds first is the JSON body limit.
MAX_GRID_SIDE = 2**20
# A side no grid of MAX_GRID_SIDE can reach at any stride the presets use (at most 16); bounded so that a
# 4000-digit number is refused with its own short message, not echoed back in full by the grid check.
MAX_IMAGE_SIDE = MAX_GRID_SIDE * 16
Side = Annotated[int, Field(strict=True, ge=1, le=MAX_IMAGE_SIDE)]
GridSide = Annotated[int, Field(strict=True, ge=1, le=MAX_GRID_SIDE)]
# 2**53: the largest integer every JSON client reads exactly (a JavaScript number); bounded, like Side, so that a
# 4000-digit number gets its own short message.
Count = Annotated[int, Field(strict=True, ge=0, le=2**53)]
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")  # models.decoder_id: a sha256 in hex


NOTES_TEXT = (
    "how the upload was read, where it matters for the answer; empty for almost every image. Today one note: a "
    "16-bit image whose values reach 4095 at most (12-bit data) is read on the 16-bit scale and is nearly black "
    "(nearly white, for a MinIsWhite TIFF)"
)


class ErrorResponse(BaseModel):
    """Every error, whatever its status code."""

    detail: str = Field(examples=["image is 1x1 (height x width) pixels; the minimum is 8x8"])


class EncodeResponse(BaseModel):
    """A slice as a grid of codebook indices: what you store or transmit instead of the pixels."""

    indices: list[list[int]] = Field(description="grid rows of codebook indices", examples=[[[12, 907, 3], [5, 5, 61]]])
    grid: tuple[int, int] = Field(description="[rows, cols] of the index grid", examples=[[2, 3]])
    codebook_size: int = Field(description="indices lie in [0, codebook_size)", examples=[1024])
    bits: int = Field(description="grid_h * grid_w * ceil(log2 codebook_size)", examples=[60])
    image_size: tuple[int, int] = Field(description="[height, width] of the encoded image", examples=[[16, 20]])
    decoder_id: str = Field(
        description="sha256 (hex) of the codebook and decoder weights that give the indices their meaning; /decode "
        "refuses indices tagged with another model's"
    )
    notes: list[str] = Field(description=NOTES_TEXT, examples=[[]])


class DecodeRequest(BaseModel):
    """An index grid as returned by /encode; ``image_size`` crops the decoded image back to the original size.

    The whole /encode answer can be posted back as it is. Its ``grid``, ``codebook_size``, ``bits`` and
    ``decoder_id`` are optional here, and checked when present: codes kept from another model (a checkpoint
    replaced by a retrained one of the same shape) are refused, not decoded into a different image. Codes kept
    from before /encode gave ``decoder_id`` carry none, so only their shape is checked. Fields that no check needs
    (``notes``) are ignored.
    """

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"indices": [[12, 907, 3], [5, 5, 61]], "image_size": [16, 20]}]},
    )

    # fail_fast: validation stops at the first bad row and index. Without it, a 2 MB body of -1s built 700,000
    # errors on the event loop and a 50 MB answer listing them: 8 s with every other request held up (four such
    # requests: 32 s and 1.6 GB). The per-index checks stay pydantic's (a valid 2 MB grid: 36 ms) and strict,
    # which a numpy check would not be: np.asarray([1, True]) is [1, 1].
    indices: list[Annotated[list[CodeIndex], Field(max_length=MAX_GRID_SIDE, fail_fast=True)]] = Field(
        min_length=1,
        max_length=MAX_GRID_SIDE,
        fail_fast=True,
        description="rows of codebook indices, all the same length",
    )
    image_size: tuple[Side, Side] | None = Field(
        default=None,
        description="[height, width] to crop to; must need exactly this grid (as /encode reports it)",
    )
    grid: tuple[GridSide, GridSide] | None = Field(default=None, description="if given, the indices' [rows, cols]")
    codebook_size: Count | None = Field(default=None, description="if given, the served model's codebook size")
    bits: Count | None = Field(default=None, description="if given, what the grid costs with the served model")
    decoder_id: str | None = Field(
        default=None,
        min_length=64,
        max_length=64,
        description="if given, the served model's (GET /model); leave it out to decode codes of another model anyway",
    )

    @field_validator("indices")
    @classmethod
    def _rectangular(cls, rows: list[list[int]]) -> list[list[int]]:
        """A grid, not a ragged list: every row non-empty and as long as the first."""
        width = len(rows[0])
        if width == 0:
            raise PydanticCustomError("empty_row", "rows must not be empty")
        for number, row in enumerate(rows):
            if len(row) != width:
                raise PydanticCustomError(
                    "ragged_rows",
                    "ragged rows: row {number} has {length} indices but row 0 has {width}; "
                    "the grid must be rectangular",
                    {"number": number, "length": len(row), "width": width},
                )
        return rows

    @field_validator("decoder_id")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        """A sha256 in hex, in either case (some tools print digests in capitals); compared in lower case."""
        if value is None:
            return None
        if not HEX_DIGEST.fullmatch(value.lower()):
            raise PydanticCustomError("decoder_id", "must be 64 hexadecimal digits, as /encode and GET /model give it")
        return value.lower()


class ReconstructResponse(BaseModel):
    """Round trip through the codebook and the quality it kept."""

    ssim: float = Field(description="SSIM of the reconstruction against the input (DESIGN.md settings)")
    psnr: float | None = Field(description="PSNR in dB; null when the reconstruction is exact (infinite)")
    image_png_base64: str = Field(description="the reconstruction as an 8-bit grayscale PNG, base64")
    grid: tuple[int, int] = Field(description="[rows, cols] of the index grid", examples=[[32, 32]])
    bits: int = Field(description="bits to store the slice as indices", examples=[10240])
    image_size: tuple[int, int] = Field(description="[height, width], the same as the input", examples=[[256, 256]])
    notes: list[str] = Field(description=NOTES_TEXT, examples=[[]])

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ssim": 0.8731,
                    "psnr": 29.84,
                    "image_png_base64": "iVBORw0KGgoAAAANSUhEUgAA...",
                    "grid": [32, 32],
                    "bits": 10240,
                    "image_size": [256, 256],
                    "notes": [],
                }
            ]
        }
    )


class SliceBudget(BaseModel):
    """What one slice of a given size costs in codes."""

    image_size: tuple[int, int] = Field(examples=[[256, 256]])
    grid: tuple[int, int] = Field(examples=[[32, 32]])
    bits: int = Field(examples=[10240])
    compression_ratio: float = Field(description="8-bit raw size / code size", examples=[51.2])


class ModelInfo(BaseModel):
    """The served checkpoint: architecture, code budget and where it came from."""

    checkpoint: str = Field(description="file name of the checkpoint", examples=["vqvae.safetensors"])
    sha256: str = Field(description="sha256 of the checkpoint file")
    decoder_id: str = Field(
        description="what /encode tags its answers with: sha256 of the codebook and decoder weights, which alone "
        "decide what codes decode to (unlike sha256, it survives a metadata rewrite such as vqvae-eval --record)"
    )
    format_version: int
    architecture: dict[str, Any] = Field(description="VQVAEConfig stored in the checkpoint")
    codebook_size: int = Field(examples=[1024])
    bits_per_index: int = Field(examples=[10])
    stride: int = Field(description="pixels per grid cell along each axis", examples=[8])
    slice_256: SliceBudget = Field(description="the budget for a 256x256 OASIS slice")
    test_metrics: dict[str, Any] | None = Field(
        description="headline metrics on the test split (SSIM mean/median/p5, PSNR, codebook use), if recorded"
    )
    metrics: dict[str, Any] = Field(description="every split's recorded metrics, by split name")
    provenance: dict[str, Any] = Field(description="the rest of the checkpoint metadata (data, training, commit...)")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
