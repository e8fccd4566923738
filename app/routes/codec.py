"""POST /encode, /decode and /reconstruct: slices to codebook indices and back."""

from __future__ import annotations

import base64
import math
from typing import Annotated, Any, TypedDict

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
from fastapi.responses import Response

from app.inference import InferenceService
from app.negotiation import produces
from app.offload import decode_upload, encode_answer
from app.routes.deps import Service, complete_form, error_responses, one_file, require_content_type
from app.routes.json_body import JSONBodyRoute
from app.schemas import DecodeRequest, EncodeResponse, ReconstructResponse
from app.settings import Settings
from models.config import VQVAEConfig


# What a multipart upload may hold: one file is wanted, a second one is parsed so that one_file can name the
# duplicate (422). FastAPI's defaults, 1,000 files and 1,000 fields of up to 1 MiB each kept in memory, let a
# stalled upload of 19 parts hold 19.5 MB per connection until its body deadline (a security review).
class FormLimits(TypedDict, total=False):
    """FastAPI's ``form_limits`` (its own type is private)."""

    max_files: int
    max_fields: int
    max_part_size: int


FORM_LIMITS = FormLimits(max_files=2, max_fields=16, max_part_size=64 * 1024)
# JSONBodyRoute: a /decode body that cannot be parsed gets one 400 naming the problem, whatever it is.
router = APIRouter(tags=["codec"], route_class=JSONBodyRoute, form_limits=FORM_LIMITS)

JSON, PNG = "application/json", "image/png"
# FastAPI reads the whole body before any check (a form it cannot parse is Starlette's 400); then each route checks,
# in this order: content type (415), Accept (406), a form cut short (400), the file twice (422), then its fields.
_multipart = Depends(require_content_type("multipart/form-data", "upload the image in the 'file' field"))
_json_body = Depends(require_content_type(JSON, 'send {"indices": [[...], ...]}'))
_whole_form = [Depends(complete_form), Depends(one_file)]
_json_or_png = produces(JSON, PNG)  # JSON first: it wins ties, wildcards and no Accept header
Answer = Annotated[str, Depends(_json_or_png)]  # the same call as in the route's dependencies: solved once
_ERRORS = error_responses(400, 406, 408, 413, 415, 422, 431, 503)
ImageFile = Annotated[UploadFile, File(description="PNG, JPEG, TIFF or BMP; colour is converted to grayscale")]
_PNG: dict[str, Any] = {"content": {PNG: {}}}
# The headers of /reconstruct's PNG answer, declared so that generated clients know them (OpenAPI's response headers,
# which are per status, not per content type: each says that the JSON answer has the figures in its body instead).
_SCORE_HEADERS: dict[str, Any] = {
    "X-SSIM": {
        "description": "PNG answer only: SSIM of the reconstruction against the upload (the JSON answer's ssim)",
        "schema": {"type": "number"},
    },
    "X-PSNR": {"description": "PNG answer only: PSNR in dB (the JSON answer's psnr)", "schema": {"type": "number"}},
    "X-Note-1": {
        "description": "PNG answer only: the first of the notes on how the upload was read (X-Note-2... for the "
        "next ones), if any (the JSON answer's notes)",
        "schema": {"type": "string"},
    },
}


def _png_response(png: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=png, media_type=PNG, headers=headers)


@router.post(
    "/encode",
    response_model=EncodeResponse,
    dependencies=[_multipart, Depends(produces(JSON)), *_whole_form],
    responses=_ERRORS,
    summary="Image -> grid of codebook indices",
)
async def encode(file: ImageFile, service: Service) -> EncodeResponse:
    upload = await decode_upload(await file.read(), service.settings, service.check_room)
    indices = await service.encode(upload.image)
    height, width = upload.image.shape
    return EncodeResponse(
        indices=indices.tolist(),
        grid=(indices.shape[0], indices.shape[1]),
        codebook_size=service.config.codebook_size,
        bits=service.config.bits_for(height, width),
        image_size=(height, width),
        decoder_id=service.decoder_id,
        notes=upload.notes,
    )


@router.post(
    "/decode",
    response_class=Response,
    dependencies=[_json_body, Depends(produces(PNG))],
    responses={200: {**_PNG, "description": "8-bit grayscale PNG"}, **_ERRORS},
    summary="Grid of codebook indices -> PNG",
)
async def decode(body: DecodeRequest, service: Service) -> Response:
    grid = _checked_grid(body, service)
    stride = service.config.stride
    size = body.image_size or (grid.shape[0] * stride, grid.shape[1] * stride)
    image = await service.decode(grid, size)
    return _png_response(await encode_answer(image, service.settings))


def _checked_grid(body: DecodeRequest, service: InferenceService) -> np.ndarray:
    """Index rows -> int64 grid, after the checks that need the model: the tags of an /encode answer
    (``_check_tags``), image_size, grid size, codebook range.

    /decode takes the images /encode takes, at the same cost: the pixel limit applies to the image answered (as
    /encode applies it to the image sent; before, to the whole grid's, and a 1023x1025 upload's codes were
    refused), and an ``image_size`` must match the grid and be no smaller than an upload may be. Without that
    floor, a 1-pixel-high ``image_size`` made the decoder run a grid of 8 times the limit's pixels.
    """
    config, settings = service.config, service.settings
    rows, cols = len(body.indices), len(body.indices[0])
    _check_tags(body, service, (rows, cols))
    if body.image_size is not None:
        needed = config.grid_for(*body.image_size)
        height, width = body.image_size
        if needed != (rows, cols):
            raise HTTPException(
                422,
                f"indices form a {rows}x{cols} grid but image_size {height}x{width} needs a "
                f"{needed[0]}x{needed[1]} grid (stride {config.stride})",
            )
        if min(height, width) < settings.min_size:
            raise HTTPException(
                422,
                f"image_size {height}x{width} is under the minimum of {settings.min_size}x{settings.min_size} "
                "that an upload may have",
            )
    height, width = body.image_size or (rows * config.stride, cols * config.stride)
    if height * width > settings.max_pixels:
        raise HTTPException(
            413,
            f"a {rows}x{cols} grid decodes to {height}x{width} (height x width) = {height * width} pixels, over "
            f"the limit of {settings.max_pixels} pixels",
        )
    grid = np.asarray(body.indices, dtype=np.int64)
    top = config.codebook_size
    outside = np.argwhere(grid >= top)  # the schema bounds indices to [0, 2**31); the codebook, to [0, top)
    if len(outside):
        r, c = outside[0]
        raise HTTPException(
            422, f"indices[{r}][{c}] = {grid[r, c]} is out of range: the codebook has {top} codes (0..{top - 1})"
        )
    return grid


def _check_tags(body: DecodeRequest, service: InferenceService, shape: tuple[int, int]) -> None:
    """The fields of an /encode answer that say what the indices are, where the caller kept them: they must agree
    with the indices and with the served model (422). Codes of another model decode without an error into a
    different image, so they are refused, with the way to decode them anyway."""
    config, (rows, cols) = service.config, shape
    if body.grid is not None and body.grid != shape:
        raise HTTPException(422, f"grid says {body.grid[0]}x{body.grid[1]} but the indices form a {rows}x{cols} grid")
    if body.decoder_id is not None and body.decoder_id != service.decoder_id:
        advice = ", or leave decoder_id out to decode them with this one anyway"
        if body.image_size is not None and config.grid_for(*body.image_size) != shape:
            height, width = body.image_size
            advice = (
                f"; a {rows}x{cols} grid for a {height}x{width} image is another stride than this model's "
                f"{config.stride}, so this one cannot decode them"
            )
        raise HTTPException(
            422,
            f"decoder_id {body.decoder_id[:12]}... is not the served model's ({service.decoder_id[:12]}..., GET "
            f"/model): these codes were made by another model and would decode into a different image. Decode them "
            f"with the model that made them{advice}",
        )
    if body.codebook_size is not None and body.codebook_size != config.codebook_size:
        raise HTTPException(
            422,
            f"codebook_size says {body.codebook_size} but the served model has {config.codebook_size} codes: these "
            "codes were made by another model",
        )
    bits = rows * cols * config.bits_per_index
    if body.bits is not None and body.bits != bits:
        raise HTTPException(
            422, f"bits says {body.bits} but a {rows}x{cols} grid of {config.bits_per_index}-bit codes is {bits} bits"
        )


def largest_encode_answer_bytes(config: VQVAEConfig, settings: Settings) -> int:
    """An upper bound on the size of an /encode answer: an upload of at most ``max_pixels`` (h * w), both sides at
    least ``min_size``, has at most ``(h/s + 1)(w/s + 1)`` cells, each its digits and a comma, and a row costs
    its brackets and comma; then the other fields: about 170 bytes, ``decoder_id`` 80 and a note (one kind
    today) up to about 260."""
    stride, pixels, side = config.stride, settings.max_pixels, settings.min_size
    cells = pixels / stride**2 + (side + pixels / side) / stride + 1
    rows = pixels / side / stride + 1
    return int(cells * (len(str(config.codebook_size - 1)) + 1) + 3 * rows) + 510


def json_limit_problem(config: VQVAEConfig, settings: Settings) -> str | None:
    """Whether an /encode answer may be too large for /decode's JSON limit, said in the start-up log; else None.

    With the defaults the bound is about 160 KB against 256 KiB, but raising ``VQVAE_MAX_PIXELS`` (or serving a
    finer grid) could make /decode refuse /encode's own answers without a word to the operator."""
    size = largest_encode_answer_bytes(config, settings)
    if size <= settings.max_json_bytes:
        return None
    return (
        f"VQVAE_MAX_PIXELS={settings.max_pixels} lets /encode answer up to about {size} bytes of JSON, over "
        f"VQVAE_MAX_JSON_BYTES={settings.max_json_bytes}: /decode would refuse the codes of the largest uploads "
        f"(413); raise VQVAE_MAX_JSON_BYTES to {size} to take them"
    )


@router.post(
    "/reconstruct",
    response_model=ReconstructResponse,
    dependencies=[_multipart, Depends(_json_or_png), *_whole_form],
    responses={
        200: {
            **_PNG,
            "description": "JSON, or with `Accept: image/png` the PNG itself (X-SSIM, X-PSNR headers; the notes, "
            "if any, as X-Note-1, X-Note-2...)",
            "headers": _SCORE_HEADERS,
        },
        **_ERRORS,
    },
    summary="Image -> reconstruction through the codebook, with SSIM and PSNR",
)
async def reconstruct(file: ImageFile, service: Service, answer: Answer) -> ReconstructResponse | Response:
    upload = await decode_upload(await file.read(), service.settings, service.check_room)
    result = await service.reconstruct(upload.image)
    png = await encode_answer(result.image, service.settings)
    if answer == PNG:
        notes = {f"X-Note-{number}": note for number, note in enumerate(upload.notes, 1)}
        return _png_response(png, {"X-SSIM": repr(result.ssim), "X-PSNR": repr(result.psnr), **notes})
    height, width = upload.image.shape
    return ReconstructResponse(
        ssim=result.ssim,
        psnr=result.psnr if math.isfinite(result.psnr) else None,
        image_png_base64=base64.b64encode(png).decode("ascii"),
        grid=service.config.grid_for(height, width),
        bits=service.config.bits_for(height, width),
        image_size=(height, width),
        notes=upload.notes,
    )
