"""Encode / decode / reconstruct in-process: results equal the model's own, whatever the batching."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image, ImageFile
from prometheus_client import CollectorRegistry

from app.inference import StartupError
from app.negotiation import MAX_ACCEPT_CHARS, AcceptTooLongError, choose
from app.routes import codec
from app.settings import DEFAULT_CHECKPOINT, Settings
from models.checkpoint import MAX_METADATA_DEPTH, load, read_metadata, save
from models.decoder_id import decoder_id
from models.grayscale import to_uint8, to_unit_float
from models.quality import psnr, ssim
from models.vqvae import VQVAE
from training.data import SliceSet, read_grayscale
from training.evaluate import score

pytestmark = pytest.mark.anyio

Files = Callable[..., dict[str, tuple[str, bytes, str]]]
Serve = Callable[..., Any]


def in_process(model: VQVAE, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: ``model.reconstruct`` on one image -> (indices, reconstruction)."""
    indices, reconstruction = model.reconstruct(torch.from_numpy(image)[None, None])
    return indices[0].numpy(), reconstruction[0, 0].numpy()


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        return np.asarray(image)


def batch_sizes(registry: CollectorRegistry, operation: str) -> tuple[float, float]:
    """(number of batches, number of requests in them) from the batch-size histogram."""
    labels = {"operation": operation}
    count = registry.get_sample_value("vqvae_inference_batch_size_count", labels) or 0.0
    total = registry.get_sample_value("vqvae_inference_batch_size_sum", labels) or 0.0
    return count, total


async def test_encode_matches_the_model(
    client: httpx.AsyncClient, model: VQVAE, as_upload: Files, image_file: Any, noise: Any
) -> None:
    pixels = noise(37, 53)
    response = await client.post("/encode", files=as_upload(image_file(pixels), "named-like-a.jpg"))
    assert response.status_code == 200, response.text
    body = response.json()
    expected, _ = in_process(model, pixels.astype(np.float32) / 255.0)
    assert np.array_equal(np.array(body["indices"]), expected)
    config = model.config
    assert body["grid"] == [10, 14] == list(config.grid_for(37, 53))
    assert body["bits"] == 10 * 14 * config.bits_per_index
    assert body["codebook_size"] == config.codebook_size
    assert body["image_size"] == [37, 53]
    assert body["decoder_id"] == decoder_id(model)


async def test_an_upload_is_encoded_and_reconstructed_the_way_its_viewer_shows_it(
    client: httpx.AsyncClient, model: VQVAE, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """A PNG stored 40x64 with EXIF orientation 6 (turned a quarter clockwise) is a 64x40 slice to its owner."""
    stored = noise(40, 64, seed=6)
    exif = Image.Exif()
    exif[274] = 6  # Orientation
    upload = as_upload(image_file(stored, exif=exif))
    viewed = np.rot90(stored, -1).astype(np.float32) / 255.0  # (64, 40)
    encoded = (await client.post("/encode", files=upload)).json()
    expected, reconstruction = in_process(model, viewed)
    assert encoded["image_size"] == [64, 40]
    assert encoded["grid"] == list(model.config.grid_for(64, 40))
    assert np.array_equal(np.array(encoded["indices"]), expected)
    answer = await client.post("/reconstruct", files=upload, headers={"accept": "image/png"})
    assert np.array_equal(png_pixels(answer.content), to_uint8(reconstruction))


@pytest.mark.parametrize(("height", "width"), [(37, 53), (9, 30)])  # 9 rows: below the 11x11 SSIM window
async def test_reconstruct_keeps_size_and_reports_the_projects_metric(
    client: httpx.AsyncClient, model: VQVAE, as_upload: Files, image_file: Any, noise: Any, height: int, width: int
) -> None:
    pixels = noise(height, width, seed=4)
    image = pixels.astype(np.float32) / 255.0
    response = await client.post("/reconstruct", files=as_upload(image_file(pixels)))
    assert response.status_code == 200, response.text
    body = response.json()
    _, reconstruction = in_process(model, image)
    assert body["image_size"] == [height, width]
    assert body["grid"] == list(model.config.grid_for(height, width))
    assert body["ssim"] == pytest.approx(ssim(image, reconstruction), abs=1e-9)
    assert body["psnr"] == pytest.approx(psnr(image, reconstruction), abs=1e-9)
    assert np.array_equal(png_pixels(base64.b64decode(body["image_png_base64"])), to_uint8(reconstruction))


async def test_decode_of_encode_is_byte_identical_to_reconstruct(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any
) -> None:
    upload = as_upload(image_file(noise(30, 41, seed=5)))
    encoded = (await client.post("/encode", files=upload)).json()
    decoded = await client.post("/decode", json={"indices": encoded["indices"], "image_size": encoded["image_size"]})
    as_json = (await client.post("/reconstruct", files=upload)).json()
    as_png = await client.post("/reconstruct", files=upload, headers={"accept": "image/png"})
    assert decoded.status_code == 200
    assert decoded.headers["content-type"] == "image/png"
    assert decoded.content == base64.b64decode(as_json["image_png_base64"]) == as_png.content
    assert as_png.headers["content-type"] == "image/png"
    assert float(as_png.headers["x-ssim"]) == as_json["ssim"]
    assert float(as_png.headers["x-psnr"]) == as_json["psnr"]
    # declared in the OpenAPI schema, for generated clients (before, named only in the answer's description)
    spec = (await client.get("/openapi.json")).json()
    declared = spec["paths"]["/reconstruct"]["post"]["responses"]["200"]["headers"]
    assert {"X-SSIM", "X-PSNR", "X-Note-1"} == declared.keys()


async def test_codes_kept_from_another_model_are_refused_not_decoded_into_another_image(
    client: httpx.AsyncClient, serve: Serve, model: VQVAE, as_upload: Files, image_file: Any, noise: Any, tmp_path: Path
) -> None:
    """The whole /encode answer posted back decodes as its indices do. The same answer posted to a service whose
    checkpoint has the same shape but another decoder (as when the shipped grid16 file was replaced by a retrained
    one) was decoded into a different image without a word; now it is a 422, unless the caller leaves the tag out."""
    encoded = (await client.post("/encode", files=as_upload(image_file(noise(30, 41, seed=5))))).json()
    bare = {"indices": encoded["indices"], "image_size": encoded["image_size"]}
    here = await client.post("/decode", json=encoded)
    assert here.status_code == 200, here.text
    assert here.content == (await client.post("/decode", json=bare)).content
    shouted = await client.post("/decode", json={**encoded, "decoder_id": encoded["decoder_id"].upper()})
    assert shouted.content == here.content  # a digest in capitals, as some tools print them, is the same digest
    retrained = VQVAE(model.config)
    retrained.load_state_dict(model.state_dict())
    with torch.no_grad():
        retrained.decoder.net[-1].bias.add_(0.5)  # the last conv: every pixel brighter
    async with serve(checkpoint=save(retrained, tmp_path / "retrained.safetensors")) as elsewhere:
        refused = await elsewhere.post("/decode", json=encoded)
        anyway = await elsewhere.post("/decode", json={k: v for k, v in encoded.items() if k != "decoder_id"})
        served_id = (await elsewhere.get("/model")).json()["decoder_id"]
    assert refused.status_code == 422, refused.text
    assert "these codes were made by another model" in refused.json()["detail"]
    assert served_id[:12] in refused.json()["detail"] and served_id == decoder_id(retrained) != encoded["decoder_id"]
    assert anyway.status_code == 200, anyway.text
    assert png_pixels(anyway.content).shape == png_pixels(here.content).shape == (30, 41)
    assert not np.array_equal(png_pixels(anyway.content), png_pixels(here.content))


async def test_decode_without_image_size_gives_the_whole_grid(client: httpx.AsyncClient, model: VQVAE) -> None:
    response = await client.post("/decode", json={"indices": [[0, 1, 2], [3, 4, 5]]})
    assert response.status_code == 200
    stride = model.config.stride
    assert png_pixels(response.content).shape == (2 * stride, 3 * stride)


async def test_sixteen_bit_and_colour_uploads(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """A 16-bit PNG encodes like the same grey levels in 8 bits; RGB like its luminance."""
    pixels = noise(24, 24, seed=6)
    eight = (await client.post("/encode", files=as_upload(image_file(pixels)))).json()
    sixteen = (await client.post("/encode", files=as_upload(image_file(pixels.astype(np.uint16) * 257)))).json()
    assert sixteen["indices"] == eight["indices"]
    rgb = np.stack([noise(24, 24, seed=s) for s in (7, 8, 9)], axis=-1)
    luminance = np.asarray(Image.fromarray(rgb).convert("L"))
    from_rgb = (await client.post("/encode", files=as_upload(image_file(rgb)))).json()
    from_grey = (await client.post("/encode", files=as_upload(image_file(luminance)))).json()
    assert from_rgb["indices"] == from_grey["indices"]


async def test_twelve_bit_data_in_a_sixteen_bit_file_gets_a_note(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """Values up to 4095 read on the 16-bit scale are nearly black: the answer says so, as vqvae-eval does, in
    JSON and in the PNG answer's headers; a full-range 16-bit file and an 8-bit one get no note."""
    pixels = noise(24, 24, seed=6)
    twelve_bit = as_upload(image_file((pixels.astype(np.uint16) * 16).clip(1, 4000)))  # top 4000
    for path in ("/encode", "/reconstruct"):
        notes = (await client.post(path, files=twelve_bit)).json()["notes"]
        assert len(notes) == 1
        assert "integer values only up to 4000" in notes[0] and "grey levels 0 to 16 (nearly black)" in notes[0]
    as_png = await client.post("/reconstruct", files=twelve_bit, headers={"Accept": "image/png"})
    assert as_png.status_code == 200 and "up to 4000" in as_png.headers["X-Note-1"]
    # a MinIsWhite TIFF reads nearly white; a TIFF goes to a worker thread, not the event loop
    inverted = image_file((pixels.astype(np.uint16) * 16).clip(1, 4000), "TIFF", tiffinfo={262: 0})
    notes = (await client.post("/encode", files=as_upload(inverted, "scan.tif"))).json()["notes"]
    assert len(notes) == 1 and "grey levels 239 to 255 (nearly white)" in notes[0]
    for quiet in (pixels.astype(np.uint16) * 257, pixels):
        upload = as_upload(image_file(quiet))
        assert (await client.post("/encode", files=upload)).json()["notes"] == []
        answer = await client.post("/reconstruct", files=upload, headers={"Accept": "image/png"})
        assert not [name for name in answer.headers if name.lower().startswith("x-note")]


async def test_transparent_pixels_are_read_on_black_with_a_note(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """A slice whose background is transparent white is answered as the slice on black, and says so in JSON and in
    the PNG answer's headers; an RGBA file whose alpha is opaque everywhere gets no note."""
    on_black = noise(24, 24, seed=11)
    on_black[:, :6] = 0
    hidden = np.where(on_black == 0, 255, on_black).astype(np.uint8)
    alpha = np.where(on_black == 0, 0, 255).astype(np.uint8)
    transparent = as_upload(image_file(np.stack([hidden, hidden, hidden, alpha], axis=-1)))
    expected = (await client.post("/encode", files=as_upload(image_file(on_black)))).json()["indices"]
    answer = (await client.post("/encode", files=transparent)).json()
    assert answer["indices"] == expected
    hidden_count = int((alpha == 0).sum())
    assert answer["notes"] == [
        f"{hidden_count} of {alpha.size} pixels are transparent or partly so: they were read on black, a slice's "
        "background, as a viewer on black shows them"
    ]
    as_png = await client.post("/reconstruct", files=transparent, headers={"Accept": "image/png"})
    assert as_png.status_code == 200 and as_png.headers["X-Note-1"].startswith(f"{hidden_count} of {alpha.size}")
    opaque = np.stack([hidden, hidden, hidden, np.full_like(alpha, 255)], axis=-1)
    assert (await client.post("/encode", files=as_upload(image_file(opaque)))).json()["notes"] == []


async def test_model_metadata(client: httpx.AsyncClient, model: VQVAE, checkpoint: Path) -> None:
    body = (await client.get("/model")).json()
    assert body["checkpoint"] == checkpoint.name
    assert body["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert body["decoder_id"] == decoder_id(model)
    assert body["architecture"]["codebook_size"] == model.config.codebook_size
    budget = body["slice_256"]
    assert budget["grid"] == list(model.config.grid_for(256, 256))
    assert budget["bits"] == model.config.bits_for(256, 256)
    assert budget["compression_ratio"] == pytest.approx(256 * 256 * 8 / budget["bits"])
    stored = read_metadata(checkpoint)
    assert body["test_metrics"]["ssim"]["mean"] == 0.5
    assert body["metrics"] == stored["metrics"]
    assert body["provenance"] == {"data": stored["data"], "git_commit": "0123abc"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_model_metadata_names_no_folder_of_the_machine_that_made_the_checkpoint(
    serve: Serve, model: VQVAE, tmp_path: Path
) -> None:
    """A checkpoint records the paths it was trained and evaluated with (the shipped one: ``/work/shared/...``).
    Before, /model served them whole, showing any caller the training machine's folders; now only their names."""
    test = {"checkpoint": "/home/jdoe/runs/r32/best.safetensors", "data": "D:\\scans\\test"}
    config = {"data": "/srv/site-a/oasis", "out": "/home/jdoe/runs/r32", "train_split": "/srv/smith/train", "epochs": 2}
    metadata = {
        "data": {
            "root": "/srv/site-a/patients/oasis",
            "train": {"split": "/srv/site-a/smith/train", "images": 3, "fingerprint": "5f1d" * 16},
        },
        "training": {"config": config},
        # a folder's metrics recorded before the OASIS split's: the bare name keeps its own
        "metrics": {"/srv/site-b/jones/test": {"images": 5}, "test": test, "/srv/site-c/test": {"images": 6}},
    }
    path = save(model, tmp_path / "paths.safetensors", metadata)
    async with serve(checkpoint=path) as client:
        answer = await client.get("/model")
    body = answer.json()
    assert "/srv" not in answer.text and "/home" not in answer.text and "scans" not in answer.text
    assert "smith" not in answer.text and "jones" not in answer.text
    assert body["provenance"]["data"] == {"root": "oasis", "train": {"split": "train", "images": 3}}  # no fingerprint
    assert "5f1d" not in answer.text
    assert body["provenance"]["training"]["config"] == {
        "data": "oasis",
        "out": "r32",
        "train_split": "train",
        "epochs": 2,
    }
    assert body["test_metrics"] == {"checkpoint": "best.safetensors", "data": "test"}
    assert body["metrics"] == {"test": body["test_metrics"], "test (2)": {"images": 5}, "test (3)": {"images": 6}}


def _metrics_nested(levels: int) -> dict[str, Any]:
    """Metadata whose test SSIM is a list ``levels`` deep; the whole is ``levels + 3`` deep."""
    value: Any = 0.5
    for _ in range(levels):
        value = [value]
    return {"metrics": {"test": {"ssim": value}}}


async def test_model_answers_for_metadata_at_the_depth_bound_and_deeper_is_refused_at_start(
    serve: Serve, model: VQVAE, tmp_path: Path
) -> None:
    """Before, metadata ~300 levels deep loaded, and then every GET /model was a 500 (pydantic's serialization
    depth; a RecursionError at 800). Now the service answers at the bound, and refuses to start past it."""
    bound = save(model, tmp_path / "bound.safetensors", _metrics_nested(MAX_METADATA_DEPTH - 3))
    async with serve(checkpoint=bound) as client:
        answer = await client.get("/model")
    assert answer.status_code == 200
    assert answer.json()["test_metrics"] == _metrics_nested(MAX_METADATA_DEPTH - 3)["metrics"]["test"]
    deeper = save(model, tmp_path / "deeper.safetensors", _metrics_nested(MAX_METADATA_DEPTH - 2))
    with pytest.raises(StartupError) as caught:
        async with serve(checkpoint=deeper):
            pass
    assert str(caught.value) == (
        f"cannot load checkpoint: {deeper}: checkpoint metadata is nested more than {MAX_METADATA_DEPTH} levels deep"
    )


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("image/png", "image/png"),
        ("IMAGE/*", "image/png"),
        ("application/json, image/png", "application/json"),
        ("application/json;q=0.5, image/png", "image/png"),
        ("image/png;q=0.1, */*", "application/json"),
        ("*/*, application/json;q=0", "image/png"),  # the most specific range decides, not the highest q
        ("image/png;q=1, application/json;q=0.999", "image/png"),
        ("application/json;charset=utf-8;q=0.2, image/png;q=0.3", "image/png"),
        ("text/html", None),
        ("image/png;q=0, application/json;q=0", None),
        ("*/*;q=0", None),
        ("image/png;q=2, application/json;q=0.1", "application/json"),  # q over 1 is unreadable: the entry skipped
        ("image/png;q=nan", "application/json"),
        ("*/png, garbage", "application/json"),  # nothing readable: as if no header
        ("application/*+json", "application/json"),  # "*" for part of a subtype: no range, skipped (was a 406)
        ("ima*/*", "application/json"),
        ('image/png;foo="a,b";q=0.1, application/json;q=0.5', "application/json"),  # a comma in quotes splits nothing
        ('image/png;foo="a;q=0.9";q=0.1, application/json;q=0.5', "application/json"),
    ],
)
def test_accept_negotiation(accept: str, chosen: str | None) -> None:
    assert choose(accept, ("application/json", "image/png")) == chosen


@pytest.mark.parametrize(
    "accept",
    [
        "text/html, " * 1_000_000 + "image/png",  # held other requests for 2.7 s when parsed whole
        "image/png;q=0;p=" + "x" * MAX_ACCEPT_CHARS,  # read up to the bound, this was "anything goes": PNG
    ],
)
def test_an_accept_header_over_the_bound_is_refused_not_misread(accept: str) -> None:
    with pytest.raises(AcceptTooLongError, match=f"characters long, over the {MAX_ACCEPT_CHARS} read"):
        choose(accept, ("image/png",))


async def test_an_accept_header_over_the_bound_is_a_431(client: httpx.AsyncClient) -> None:
    accept = "image/png;q=0;p=" + "x" * MAX_ACCEPT_CHARS
    response = await client.post("/decode", json={"indices": [[1, 2]]}, headers={"accept": accept})
    assert response.status_code == 431, response.text
    assert response.json()["detail"].endswith("send a shorter one (this endpoint answers image/png)")
    exactly = "image/png, " + "x/y, " * ((MAX_ACCEPT_CHARS - 11) // 5)
    ok = await client.post("/decode", json={"indices": [[1, 2]]}, headers={"accept": exactly[:MAX_ACCEPT_CHARS]})
    assert ok.status_code == 200, ok.text


async def test_real_oasis_slice_ssim_equals_vqvae_eval(
    serve: Serve, checkpoint: Path, oasis_slice: Path, as_upload: Files
) -> None:
    """Acceptance: the service's SSIM for a real slice is what vqvae-eval computes (also for the shipped model)."""
    checkpoints = [checkpoint] + ([DEFAULT_CHECKPOINT] if DEFAULT_CHECKPOINT.is_file() else [])
    one_slice = SliceSet([read_grayscale(oasis_slice)], [oasis_slice.name], oasis_slice.parent)
    with Image.open(oasis_slice) as decoded:
        image = to_unit_float(decoded)
    for path in checkpoints:
        model = load(path)[0]
        report, _ = score(model, one_slice)
        _, reconstruction = in_process(model, image)
        async with serve(checkpoint=path) as client:
            body = (await client.post("/reconstruct", files=as_upload(oasis_slice.read_bytes()))).json()
        assert body["image_size"] == list(image.shape)
        assert body["ssim"] == pytest.approx(report["per_image"][0]["ssim"], abs=1e-6)
        assert body["ssim"] == pytest.approx(ssim(image, reconstruction), abs=1e-6)


async def test_the_grid16_release_serves_16x16_codes(
    serve: Serve, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """The second shipped checkpoint, as an operator serves it (VQVAE_CHECKPOINT): a 256x256 slice becomes 16x16
    codes, 2,560 bits, the model's own, and /decode of them is the model's own reconstruction."""
    path = DEFAULT_CHECKPOINT.with_name("vqvae_grid16.safetensors")
    model = load(path)[0]
    pixels = noise(256, 256, seed=6)
    upload = as_upload(image_file(pixels))
    expected, reconstruction = in_process(model, pixels.astype(np.float32) / 255.0)
    async with serve(checkpoint=path) as client:
        encoded = (await client.post("/encode", files=upload)).json()
        decoded = await client.post("/decode", json={"indices": encoded["indices"]})
        served = (await client.get("/model")).json()
    assert encoded["grid"] == [16, 16] and encoded["bits"] == 2_560
    assert np.array_equal(np.array(encoded["indices"]), expected)
    assert np.array_equal(png_pixels(decoded.content), to_uint8(reconstruction))
    assert served["checkpoint"] == path.name


class HeldModel:
    """Holds the model's first forward pass so that the requests behind it queue up."""

    def __init__(self, model: VQVAE, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        original = getattr(model, method)

        def held(*args: Any) -> Any:
            self.entered.set()
            self.gate.wait(10)
            return original(*args)

        monkeypatch.setattr(model, method, held)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_concurrent_requests_share_a_forward_pass_and_keep_their_results(
    app: FastAPI,
    client: httpx.AsyncClient,
    model: VQVAE,
    as_upload: Files,
    image_file: Any,
    noise: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = app.state.service
    held = HeldModel(service.model, monkeypatch, "reconstruct")
    images = [noise(20, 28, seed=100 + n) for n in range(9)]

    async def post(pixels: np.ndarray) -> dict[str, Any]:
        response = await client.post("/reconstruct", files=as_upload(image_file(pixels)))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    first = asyncio.ensure_future(post(images[0]))
    await wait_for(held.entered.is_set)
    held_since = time.monotonic()
    rest = [asyncio.ensure_future(post(pixels)) for pixels in images[1:]]
    await wait_for(lambda: service.batcher.queued == len(rest))
    await asyncio.sleep(0.05)
    held_s = time.monotonic() - held_since
    held.gate.set()
    bodies = await asyncio.gather(first, *rest)

    batches, requests = batch_sizes(app.state.metrics.registry, "reconstruct")
    per_pass = app.state.settings.max_batch_size
    assert per_pass > 1
    # the held one alone, then the 8 queued behind it in full batches
    assert (batches, requests) == (1 + math.ceil(len(rest) / per_pass), len(images))
    assert batches < len(images)
    for pixels, body in zip(images, bodies, strict=True):
        image = pixels.astype(np.float32) / 255.0
        _, reconstruction = in_process(model, image)
        assert body["ssim"] == pytest.approx(ssim(image, reconstruction), abs=1e-5)
        got = png_pixels(base64.b64decode(body["image_png_base64"])).astype(int)
        assert np.abs(got - to_uint8(reconstruction)).max() <= 1
    metrics = (await client.get("/metrics")).text
    assert 'vqvae_inference_batch_size_sum{operation="reconstruct"} 9.0' in metrics
    # one pass time per batch; the held batch's alone spans the wait for the other eight to queue
    registry, labels = app.state.metrics.registry, {"operation": "reconstruct"}
    assert registry.get_sample_value("vqvae_inference_batch_duration_seconds_count", labels) == batches
    assert (registry.get_sample_value("vqvae_inference_batch_duration_seconds_sum", labels) or 0.0) >= held_s


@pytest.mark.parametrize(
    ("settings", "side", "detail"),
    [
        ({"max_queue": 2}, 16, "2 requests"),
        # VQVAE_MAX_QUEUE_PIXELS: two 64x64 images fill 8192 pixels; a 16x16 one more is refused, in a queue of 256
        ({"max_queue_pixels": 2 * 64 * 64, "max_pixels": 64 * 64}, 64, "2 requests of 8192 pixels in all"),
    ],
)
@pytest.mark.parametrize("refused_format", ["PNG", "TIFF"])  # decoded on the event loop, on a worker thread
async def test_full_queue_answers_503_with_retry_after_before_decoding(
    make_app: Callable[..., FastAPI],
    run: Callable[[FastAPI], Any],
    as_upload: Files,
    image_file: Any,
    noise: Any,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, int],
    side: int,
    detail: str,
    refused_format: str,
) -> None:
    """The refused image's pixels are never decoded: the queue is asked once its header is read. Before, a flood
    refused with 503s paid for decoding each of its images first (a security review)."""
    decoded: list[str | None] = []
    pillow_load = ImageFile.ImageFile.load

    def counted(image: ImageFile.ImageFile) -> Any:
        decoded.append(image.format)
        return pillow_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)  # where Pillow decodes pixels, whichever thread
    app = make_app(max_batch_size=1, **settings)
    async with run(app) as client:
        service = app.state.service
        held = HeldModel(service.model, monkeypatch, "encode")
        small, queued_upload = as_upload(image_file(noise(16, 16))), as_upload(image_file(noise(side, side)))
        running = asyncio.ensure_future(client.post("/encode", files=small))
        await wait_for(held.entered.is_set)
        queued = [asyncio.ensure_future(client.post("/encode", files=queued_upload)) for _ in range(2)]
        await wait_for(lambda: service.batcher.queued == 2)
        decoded_before = len(decoded)
        refused = await client.post("/encode", files=as_upload(image_file(noise(16, 16), refused_format)))
        decoded_after = len(decoded)
        held.gate.set()
        answered = await asyncio.gather(running, *queued)
    assert decoded_before > 0 and decoded_after == decoded_before  # the three answered ones were decoded
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["detail"] == f"server busy: {detail} already waiting for the model; retry shortly"
    assert [response.status_code for response in answered] == [200, 200, 200]


async def test_start_up_warns_when_encode_answers_may_outgrow_the_json_limit(
    serve: Serve, model: VQVAE, as_upload: Files, image_file: Any, noise: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A raised VQVAE_MAX_PIXELS could make /decode refuse /encode's own answers (413), without a word to the
    operator. The bound is checked against real answers: the squarest and the thinnest largest uploads."""
    settings = Settings(checkpoint=DEFAULT_CHECKPOINT, max_pixels=64 * 64)
    bound = codec.largest_encode_answer_bytes(model.config, settings)
    async with serve(max_pixels=64 * 64) as client:
        uploads = [image_file(noise(h, w)) for h, w in ((64, 64), (9, 455), (8, 512), (17, 240))]
        uploads.append(image_file((noise(9, 455).astype(np.uint16) * 16).clip(1, 4000)))  # 12-bit data: a note
        answers = [await client.post("/encode", files=as_upload(upload)) for upload in uploads]
        sizes = [len(answer.content) for answer in answers]
    assert answers[-1].json()["notes"] and answers[-1].json()["grid"] == answers[1].json()["grid"]
    assert max(sizes) <= bound <= 3 * max(sizes), (sizes, bound)  # safe, and not absurdly loose
    with caplog.at_level(logging.WARNING, logger="app.main"):
        async with serve(max_pixels=64 * 64, max_json_bytes=bound - 1):
            pass
        assert f"raise VQVAE_MAX_JSON_BYTES to {bound} to take them" in caplog.text
        caplog.clear()
        async with serve(max_pixels=64 * 64, max_json_bytes=bound):
            pass
        assert "VQVAE_MAX_JSON_BYTES" not in caplog.text


@pytest.mark.parametrize("name", ["vqvae.safetensors", "vqvae_grid16.safetensors"])
def test_the_default_json_limit_takes_the_shipped_models_largest_encode_answers(name: str) -> None:
    """VQVAE_MAX_JSON_BYTES went from 2 MiB to 256 KiB (a body of one-index rows held the event loop for 1.2 s at
    2 MiB, a review): /decode must still take every /encode answer of the defaults, with no start-up warning."""
    config = load(DEFAULT_CHECKPOINT.with_name(name))[0].config
    assert codec.json_limit_problem(config, Settings()) is None
    assert codec.largest_encode_answer_bytes(config, Settings()) <= Settings().max_json_bytes
