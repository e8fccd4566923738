"""The error matrix, in-process: every caller mistake gets its status code and a message naming the problem."""

from __future__ import annotations

import gzip
import io
import logging
import struct
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from app.errors import format_validation_errors
from app.main import create_app
from app.settings import Settings

pytestmark = pytest.mark.anyio

Files = Callable[..., dict[str, tuple[str, bytes, str]]]
Serve = Callable[..., Any]


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"


async def test_empty_file(client: httpx.AsyncClient, as_upload: Files) -> None:
    assert_error(await client.post("/encode", files=as_upload(b"")), 400, "empty")


async def test_text_file(client: httpx.AsyncClient, as_upload: Files) -> None:
    response = await client.post("/reconstruct", files=as_upload(b"not an image\n", "notes.png"))
    assert_error(response, 400, "PNG, JPEG, TIFF or BMP")


async def test_truncated_png(client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any) -> None:
    png = image_file(noise(64, 64))
    assert_error(await client.post("/encode", files=as_upload(png[:-200])), 400, "truncated")


async def test_float_tiff_with_nan_pixels(client: httpx.AsyncClient, as_upload: Files, image_file: Any) -> None:
    """Before: 200 with "ssim": null, which the schema says cannot happen."""
    pixels = np.full((32, 32), 0.5, np.float32)
    pixels[5, 5] = np.nan
    response = await client.post("/reconstruct", files=as_upload(image_file(pixels, "TIFF"), "scan.tif"))
    assert_error(response, 400, "1 NaN pixel")


async def test_float_tiff_of_0_to_255(client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any) -> None:
    """Before: clipped to [0, 1], so read nearly white: 200 with an SSIM of 0.90 and no note."""
    pixels = noise(32, 32).astype(np.float32)
    response = await client.post("/reconstruct", files=as_upload(image_file(pixels, "TIFF"), "scan.tif"))
    found = f"pixel values from {pixels.min():g} to {pixels.max():g}, outside [0, 1]"
    assert_error(response, 400, found, "send unsigned 8- or 16-bit integers, or floats in [0, 1]")


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
async def test_a_tiff_stack_or_an_animated_png(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any, fmt: str
) -> None:
    """Before: 200 with "notes": [] for the first frame alone, the other 4 dropped without a word."""
    rest = [Image.fromarray(noise(32, 32, seed)) for seed in range(1, 5)]
    stack = image_file(noise(32, 32), fmt, save_all=True, append_images=rest)
    response = await client.post("/encode", files=as_upload(stack, "stack"))
    assert_error(response, 400, f"the {fmt} file holds 5 frames", "send one slice per file")


async def test_one_pixel_image(client: httpx.AsyncClient, as_upload: Files, image_file: Any) -> None:
    png = image_file(np.zeros((1, 1), np.uint8))
    assert_error(await client.post("/reconstruct", files=as_upload(png)), 422, "1x1", "minimum is 8x8")


async def test_image_over_the_pixel_limit(serve: Serve, as_upload: Files, image_file: Any, noise: Any) -> None:
    async with serve(max_pixels=32 * 32) as client:
        response = await client.post("/encode", files=as_upload(image_file(noise(32, 33))))
    assert_error(response, 413, "32x33 (height x width) = 1056 pixels", "limit of 1024")


async def test_default_pixel_limit_is_1024_squared(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any
) -> None:
    """Before: 4096x4096; one such image took 10 s and 2.4 GB to encode on 2 cores, and held up everyone else."""
    response = await client.post("/encode", files=as_upload(image_file(np.zeros((1024, 1025), np.uint8))))
    assert_error(response, 413, "1024x1025 (height x width) = 1049600 pixels", "limit of 1048576")
    assert (await client.post("/encode", files=as_upload(image_file(np.zeros((1024, 1024), np.uint8))))).is_success


async def test_body_over_the_limit_with_content_length(serve: Serve, as_upload: Files) -> None:
    async with serve(max_body_bytes=1000) as client:
        response = await client.post("/encode", files=as_upload(bytes(2000)))
    assert "content-length" in response.request.headers
    assert_error(response, 413, "limit of 1000 bytes")
    # Written below FastAPI, yet as its answers are: compact JSON (before: '{"detail": "...').
    assert response.content.startswith(b'{"detail":"request body is larger')


async def test_body_over_the_limit_without_content_length(serve: Serve) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"[" * 500

    async with serve(max_body_bytes=1000) as client:
        response = await client.post("/decode", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "limit of 1000 bytes")


async def test_json_has_its_own_lower_limit(serve: Serve, as_upload: Files, image_file: Any, noise: Any) -> None:
    """FastAPI parses JSON on the event loop: before, an 18 MB /decode body held every other request for a second."""
    png = image_file(noise(64, 64))
    grid = {"indices": [[0] * 600]}
    async with serve(max_json_bytes=1000) as client:
        assert_error(await client.post("/decode", json=grid), 413, "limit of 1000 bytes for JSON")
        assert len(png) > 1000 and (await client.post("/encode", files=as_upload(png))).is_success  # not JSON


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/x+json", 413),
        ("Application/Vnd.Api+JSON; charset=utf-8", 413),
        ("text/json", 415),  # FastAPI leaves it unparsed: the route's 415 comes before any parsing cost
        ("application/jsonx", 415),
    ],
)
async def test_the_json_limit_covers_every_type_parsed_as_json(serve: Serve, content_type: str, status: int) -> None:
    """FastAPI parses any application/*+json as JSON, before the route's 415. Before, only application/json had the
    JSON limit: an 18 MB grid sent as application/x+json was parsed on the event loop."""
    body = '{"indices": [[' + ", ".join(["0"] * 600) + "]]}"
    async with serve(max_json_bytes=1000) as client:
        response = await client.post("/decode", content=body, headers={"content-type": content_type})
    assert_error(response, status, *(["limit of 1000 bytes for JSON"] if status == 413 else [content_type]))


@pytest.mark.parametrize(
    ("path", "coding", "compress"),
    [
        ("/decode", "gzip", True),
        ("/decode", "br", False),
        ("/decode", "identity, GZIP", True),
        ("/encode", "gzip", False),
    ],
)
async def test_a_compressed_body_is_a_415(
    client: httpx.AsyncClient, image_file: Any, noise: Any, path: str, coding: str, compress: bool
) -> None:
    """Before: the body was parsed as if plain: gzip JSON got 400 "There was an error parsing the body", and a plain
    body labelled compressed was served."""
    if path == "/decode":
        body, headers = b'{"indices": [[1, 2]]}', {"content-type": "application/json"}
    else:
        body, headers = multipart([("file", ("a.png", image_file(noise(16, 16)), "image/png"))])
    content = gzip.compress(body) if compress else body
    response = await client.post(path, content=content, headers={**headers, "content-encoding": coding})
    assert_error(response, 415, f"compressed request bodies are not accepted (Content-Encoding: {coding})")
    assert response.headers["accept-encoding"] == "identity"


async def test_a_compressed_body_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    """The 415 does not wait for a body that never ends."""

    async def endless() -> AsyncIterator[bytes]:
        yield gzip.compress(b'{"indices": [[1, 2]]}')
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        response = await client.post(
            "/decode", content=endless(), headers={"content-type": "application/json", "content-encoding": "gzip"}
        )
    assert_error(response, 415, "compressed")


async def test_an_identity_content_encoding_is_served(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "identity"}
    response = await client.post("/decode", content=b'{"indices": [[1, 2]]}', headers=headers)
    assert response.status_code == 200, response.text


async def test_a_text_field_instead_of_a_file_is_explained(client: httpx.AsyncClient) -> None:
    """Before: "Expected UploadFile, received: <class 'str'>"."""
    response = await client.post("/encode", files={"file": (None, b"abc")})
    assert_error(response, 422, "send the image as a file part with a filename")


async def test_two_files_in_one_request_are_refused(client: httpx.AsyncClient, image_file: Any, noise: Any) -> None:
    """Before: the last one was used, silently."""
    png = image_file(noise(16, 16))
    response = await client.post("/reconstruct", files=[("file", ("a.png", png)), ("file", ("b.png", png))])
    assert_error(response, 422, "one image per request", "2 times")


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("file", ("a.png", b"x"))] * 3, "Too many files. Maximum number of files is 2."),
        ([("file", ("a.png", b"x"))] + [(f"f{n}", (None, b"y")) for n in range(17)], "Maximum number of fields is 16"),
        ([("file", ("a.png", b"x")), ("note", (None, b"y" * (64 * 1024 + 1)))], "Part exceeded maximum size of 64KB."),
    ],
)
async def test_a_form_of_more_parts_than_an_upload_needs_is_refused(
    client: httpx.AsyncClient, parts: list[tuple[str, tuple[str | None, bytes]]], message: str
) -> None:
    """FastAPI's defaults let a form hold 1,000 files and 1,000 fields of up to 1 MiB each in memory: a stalled
    upload of 19 such parts held 19.5 MB per connection until its body deadline (a security review)."""
    response = await client.post("/encode", files=parts)
    assert_error(response, 400, message)


async def test_an_absurd_image_size_is_refused_without_echoing_it(client: httpx.AsyncClient) -> None:
    """Before: a 4000-digit image_size came back whole in an 8 KB message."""
    body = '{"indices": [[1]], "image_size": [' + "9" * 4000 + ", 8]}"
    response = await client.post("/decode", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "image_size[0]: Input should be less than or equal to 16777216")
    assert len(response.content) < 300


async def test_an_empty_json_body_is_named(client: httpx.AsyncClient) -> None:
    response = await client.post("/decode", content=b"", headers={"content-type": "application/json"})
    assert_error(response, 422, "the request body is empty")


async def test_a_body_under_the_limit_streamed_without_length_is_served(serve: Serve) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"indices": '
        yield b"[[1, 2]]}"

    async with serve(max_body_bytes=1000) as client:
        response = await client.post("/decode", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize("path", ["/encode", "/reconstruct"])
async def test_image_routes_want_multipart(client: httpx.AsyncClient, path: str, image_file: Any, noise: Any) -> None:
    response = await client.post(path, content=image_file(noise(16, 16)), headers={"content-type": "image/png"})
    assert_error(response, 415, "image/png", "multipart/form-data")
    assert_error(await client.post(path), 415, "multipart/form-data")


async def test_multipart_without_the_file_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/encode", files={"image": ("x.png", b"123", "image/png")})
    assert_error(response, 422, "file", "Field required")


def multipart(files: list[tuple[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """A form's encoded body and its content-type header, as httpx sends them."""
    request = httpx.Request("POST", "http://testserver/", files=files)
    return request.read(), {"content-type": request.headers["content-type"]}


def cut(body: bytes, where: str) -> bytes:
    """The body cut short: before its closing boundary's last '--', in the middle, or inside its last part."""
    return {
        "before the closing --": body[: body.rindex(b"--")],
        "in the middle": body[: len(body) // 2],
        "inside the last part": body[: body.rindex(b"\r\n--") - 2],
    }[where]


@pytest.mark.parametrize("where", ["before the closing --", "in the middle", "inside the last part"])
@pytest.mark.parametrize("path", ["/encode", "/reconstruct"])
async def test_a_truncated_multipart_body_is_a_400(
    client: httpx.AsyncClient, image_file: Any, noise: Any, path: str, where: str
) -> None:
    """Before: 422 "file: Field required" (the parser silently drops a part it never saw the end of), or 200 when
    the part cut came after the file."""
    png = image_file(noise(16, 16))
    body, headers = multipart([("file", ("a.png", png, "image/png")), ("note", (None, b"a field after the file"))])
    response = await client.post(path, content=cut(body, where), headers=headers)
    assert_error(response, 400, "multipart body is incomplete", "closing boundary")


async def test_a_cut_body_whose_file_holds_the_closing_delimiter_text_is_a_400(
    client: httpx.AsyncClient, image_file: Any, noise: Any
) -> None:
    """A part's content may hold "--boundary--" itself (only after a line break is it the close). Before: that
    text counted as the close, and the cut body got 422 "Field required"."""
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    body = head + image_file(noise(16, 16)) + b"trailing text --XyZ-- in the file"
    response = await client.post("/encode", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert_error(response, 400, "multipart body is incomplete")


async def test_an_empty_whole_form_is_a_422_not_a_cut_body(client: httpx.AsyncClient) -> None:
    """A form of no parts is its close delimiter alone, at the body's start: whole, so the missing field is named."""
    response = await client.post(
        "/encode", content=b"--XyZ--\r\n", headers={"content-type": "multipart/form-data; boundary=XyZ"}
    )
    assert_error(response, 422, "file", "Field required")


@pytest.mark.parametrize("epilogue", [b"", b"an epilogue after the closing boundary, which parsers ignore\r\n"])
async def test_a_whole_multipart_body_in_small_chunks_is_served(
    client: httpx.AsyncClient, image_file: Any, noise: Any, epilogue: bytes
) -> None:
    """The closing boundary is found wherever the chunks split it, and need not end the body."""
    form, headers = multipart([("file", ("a.png", image_file(noise(16, 16)), "image/png"))])
    body = form + epilogue

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await client.post("/encode", content=chunks(), headers=headers)
    assert response.status_code == 200, response.text


def bmp_with_size(bmp: bytes, width: int, height: int) -> bytes:
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


@pytest.mark.parametrize(("width", "height"), [(-16, 16), (0, 16), (16, 0)])
async def test_a_bmp_with_invalid_dimensions_is_a_400(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any, width: int, height: int
) -> None:
    """Before: 413 "decompression bomb" for a negative width, 400 "not PNG, JPEG, TIFF or BMP" for a zero side."""
    bmp = bmp_with_size(image_file(noise(16, 16), "BMP"), width, height)
    response = await client.post("/encode", files=as_upload(bmp, "scan.bmp"))
    assert_error(response, 400, f"invalid image dimensions, width {width} and height {height}:")


async def test_a_top_down_bmp_is_served(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """A negative height is legal (rows stored top-down)."""
    bmp = bmp_with_size(image_file(noise(16, 12), "BMP"), 12, -16)
    response = await client.post("/encode", files=as_upload(bmp, "scan.bmp"))
    assert response.status_code == 200, response.text
    assert response.json()["image_size"] == [16, 12]


@pytest.mark.parametrize(
    ("path", "accept", "produced"),
    [
        ("/encode", "image/jpeg", "application/json"),
        ("/encode", "image/png", "application/json"),
        ("/encode", "*/*, application/json;q=0", "application/json"),
        ("/encode", "application/*;q=0", "application/json"),
        ("/decode", "application/json", "image/png"),
        ("/decode", "image/*;q=0, */*", "image/png"),
        ("/reconstruct", "image/jpeg", "application/json, image/png"),
        ("/reconstruct", "text/html, application/xml;q=0.9", "application/json, image/png"),
        ("/reconstruct", "application/json;q=0, image/png;q=0", "application/json, image/png"),
    ],
)
async def test_an_accept_header_excluding_every_answer_is_a_406(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, noise: Any, path: str, accept: str, produced: str
) -> None:
    """Before: the endpoint's usual answer whatever the Accept header said."""
    headers = {"accept": accept}
    if path == "/decode":
        response = await client.post(path, json={"indices": [[1, 2]]}, headers=headers)
    else:
        response = await client.post(path, files=as_upload(image_file(noise(16, 16))), headers=headers)
    assert_error(response, 406, accept, f"this endpoint answers: {produced}")


@pytest.mark.parametrize(
    ("path", "accept", "answer"),
    [
        ("/encode", None, "application/json"),
        ("/encode", "*/*", "application/json"),
        ("/encode", "application/*", "application/json"),
        ("/encode", "image/png, application/json;q=0.1", "application/json"),
        ("/encode", "text/html, */*;q=0.8", "application/json"),
        ("/encode", "application/json;q=nonsense", "application/json"),
        ("/decode", "image/*", "image/png"),
        ("/decode", "application/json, */*;q=0.1", "image/png"),
        ("/reconstruct", "*/*", "application/json"),
        ("/reconstruct", "image/png", "image/png"),
        ("/reconstruct", "application/json;q=0, image/*", "image/png"),
        ("/reconstruct", "*/*, image/png;q=0", "application/json"),
    ],
)
async def test_accept_headers_that_allow_an_answer_are_served(
    client: httpx.AsyncClient,
    as_upload: Files,
    image_file: Any,
    noise: Any,
    path: str,
    accept: str | None,
    answer: str,
) -> None:
    headers = {} if accept is None else {"accept": accept}
    if path == "/decode":
        response = await client.post(path, json={"indices": [[1, 2]]}, headers=headers)
    else:
        response = await client.post(path, files=as_upload(image_file(noise(16, 16))), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == answer


async def test_decode_wants_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/decode", content=b"[[1, 2]]", headers={"content-type": "text/plain"})
    assert_error(response, 415, "text/plain", "application/json")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"indices": [[1,', "Expecting value at line 1, column 17"),
        (b'{"indices": [[1]], "note": "caf\xe9"}', "it is not UTF-8 text (byte 31: invalid continuation byte)"),
        (b"[" * 100_000, "its arrays or objects are nested too deeply"),
        (
            b'{"indices": [[' + b"9" * (sys.get_int_max_str_digits() + 700) + b"]]}",
            f"a number has more than {sys.get_int_max_str_digits()} digits",
        ),
        # a review's: Python's json reads these, and the answer was a 422 "(got nan)" as if they were JSON
        (b'{"indices": [[NaN]]}', "NaN is not a JSON value (JSON numbers are finite)"),
        (b'{"indices": [[-Infinity]]}', "-Infinity is not a JSON value (JSON numbers are finite)"),
    ],
)
async def test_a_body_that_cannot_be_parsed_as_json_is_one_400_naming_the_problem(
    client: httpx.AsyncClient, body: bytes, problem: str
) -> None:
    """Before: 422 for a syntax error, 400 "There was an error parsing the body" for the others, naming nothing.
    400 is what the OpenAPI page and the README say."""
    response = await client.post("/decode", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, f"cannot parse the request body as JSON: {problem}")


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"indices": [[1, 2], [3]]}, ("ragged", "row 1 has 1", "row 0 has 2")),
        ({"indices": [1, 2, 3]}, ("indices[0]", "valid list")),
        ({"indices": [[[1]]]}, ("indices[0][0]", "valid integer")),
        ({"indices": [[1, 2], [3, 32]]}, ("indices[1][1] = 32", "out of range", "32 codes")),
        ({"indices": [[0, -1]]}, ("indices[0][1]", "greater than or equal to 0", "-1")),
        ({"indices": [[1.0, 2]]}, ("indices[0][0]", "valid integer", "1.0")),
        ({"indices": [[1, 2.5]]}, ("indices[0][1]", "valid integer", "2.5")),
        ({"indices": [["1"]]}, ("indices[0][0]", "valid integer", "'1'")),
        ({"indices": [[True]]}, ("indices[0][0]", "valid integer", "True")),
        ({"indices": [[None]]}, ("indices[0][0]", "valid integer")),
        ({"indices": []}, ("indices", "at least 1 item")),
        ({"indices": [[]]}, ("indices", "rows must not be empty")),
        ({"indices": "0 1 2"}, ("indices", "valid list")),
        ({}, ("indices", "Field required")),
        ({"indices": [[1, 2]], "image_size": [64, 64]}, ("1x2 grid", "64x64 needs a 16x16 grid")),
        ({"indices": [[1, 2]], "image_size": [4, 0]}, ("image_size[1]", "greater than or equal to 1")),
        ({"indices": [[1, 2]], "image_size": [4.0, 8]}, ("image_size[0]", "valid integer")),
        # the fields of an /encode answer that say what the codes are must agree (the tiny model: 32 codes, 5 bits)
        ({"indices": [[1, 2]], "grid": [2, 1]}, ("grid says 2x1 but the indices form a 1x2 grid",)),
        ({"indices": [[1, 2]], "grid": [1.0, 2]}, ("grid[0]", "valid integer")),
        ({"indices": [[1, 2]], "codebook_size": 1024}, ("codebook_size says 1024", "has 32 codes", "another model")),
        ({"indices": [[1, 2]], "bits": 20}, ("bits says 20 but a 1x2 grid of 5-bit codes is 10 bits",)),
        ({"indices": [[1, 2]], "decoder_id": "0" * 64}, ("decoder_id 000000000000... is not", "leave decoder_id out")),
        ({"indices": [[1, 2]], "decoder_id": "F" * 64}, ("decoder_id ffffffffffff... is not",)),  # either case
        ({"indices": [[1, 2]], "decoder_id": "g" * 64}, ("decoder_id", "must be 64 hexadecimal digits")),
        ({"indices": [[1, 2]], "decoder_id": "abc"}, ("decoder_id", "at least 64 characters")),
    ],
)
async def test_bad_indices(client: httpx.AsyncClient, body: dict[str, Any], fragments: tuple[str, ...]) -> None:
    assert_error(await client.post("/decode", json=body), 422, *fragments)


async def test_one_bad_index_is_named_one_that_is_no_index_first(client: httpx.AsyncClient) -> None:
    """As the README says (a review found it promising "the first bad index"): 32 is outside the tiny model's
    codebook, -1 no index at all, and is named; validation stops there, so "x" is not."""
    response = await client.post("/decode", json={"indices": [[32, -1, "x"]]})
    assert_error(response, 422, "indices[0][1]", "greater than or equal to 0")
    assert "indices[0][0]" not in response.json()["detail"] and "indices[0][2]" not in response.json()["detail"]


async def test_codes_of_another_stride_are_not_said_to_decode_without_their_tag(client: httpx.AsyncClient) -> None:
    """A review's find: grid16 codes posted to the default model were told to leave decoder_id out, which only
    moved them on to the grid's 422; the message says at once that this model cannot decode them."""
    body = {"indices": [[1, 2]], "image_size": [64, 64], "decoder_id": "0" * 64}  # the tiny model: stride 4
    response = await client.post("/decode", json=body)
    assert_error(response, 422, "is not the served model's", "a 1x2 grid for a 64x64 image is another stride than")
    assert "leave decoder_id out" not in response.json()["detail"]


@pytest.mark.parametrize(("element", "shown"), [("-1", "-1"), ("0.5", "0.5"), ('""', "''"), ("null", "None")])
async def test_a_large_invalid_grid_gets_a_short_answer(client: httpx.AsyncClient, element: str, shown: str) -> None:
    """Before: every bad index was listed; a 2 MB body of -1s took 8 s (every other request waiting) to answer
    50 MB. Validation stops at the first bad index now."""
    row = "[" + ",".join([element] * 1000) + "]"
    body = '{"indices": [' + ",".join([row] * 50) + "]}"
    response = await client.post("/decode", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "indices[0][0]: Input should be", f"(got {shown})")
    assert len(response.content) < 200, response.text[:300]


def test_a_validation_message_names_the_first_problems_and_counts_the_rest() -> None:
    errors = [
        {"type": "int_type", "loc": ("body", "indices", 0, n), "msg": "bad", "input": [n] * 10**5} for n in range(12)
    ]
    text = format_validation_errors(errors)
    assert text.startswith("indices[0][0]: bad (got [0, 0, 0, 0, 0, 0, ...]); indices[0][1]: bad")
    assert text.endswith("indices[0][4]: bad (got [4, 4, 4, 4, 4, 4, ...]); and 7 more")


async def test_grid_decoding_to_too_many_pixels(serve: Serve) -> None:
    async with serve(max_pixels=64 * 64) as client:
        response = await client.post("/decode", json={"indices": [[0] * 17] * 16})
        assert_error(response, 413, "16x17 grid decodes to 64x68 (height x width)", "over the limit of 4096")
        cropped = {"indices": [[0] * 17] * 16, "image_size": [63, 66]}  # stride 4; 4158 pixels: still over
        assert_error(await client.post("/decode", json=cropped), 413, "to 63x66 (height x width) = 4158 pixels")
        under = await client.post("/decode", json={**cropped, "image_size": [61, 65]})  # 3965: the limit's side
    assert under.status_code == 200, under.text


async def test_a_thin_image_size_cannot_make_the_decoder_run_past_the_limit(serve: Serve) -> None:
    """A review's find: with the limit on the image answered only, ``image_size`` [1, 4096] let a 1x1024 grid
    through, whose 4x4096 pixels (stride 4 here; 8 times the limit with the shipped model) the decoder runs."""
    async with serve(max_pixels=64 * 64) as client:
        thin = await client.post("/decode", json={"indices": [[0] * 1024], "image_size": [1, 4096]})
        assert_error(thin, 422, "image_size 1x4096 is under the minimum of 8x8")
        mismatch = await client.post("/decode", json={"indices": [[1]], "image_size": [2000, 2000]})
        assert_error(mismatch, 422, "1x1 grid but image_size 2000x2000 needs a 500x500 grid")  # not a 413


@pytest.mark.parametrize(("height", "width"), [(1023, 1025), (8, 32776)])
async def test_every_answer_of_encode_decodes(
    client: httpx.AsyncClient, as_upload: Files, image_file: Any, height: int, width: int
) -> None:
    """Under the 1 MP limit, but /decode refused their codes: the first by its whole grid's pixels (129x128 codes
    are 1056768), the second by a grid side over 4096 (1x4097)."""
    upload = as_upload(image_file(np.full((height, width), 90, np.uint8)))
    encoded = await client.post("/encode", files=upload)
    assert encoded.status_code == 200, encoded.text
    decoded = await client.post("/decode", json=encoded.json())
    assert decoded.status_code == 200, decoded.text
    with Image.open(io.BytesIO(decoded.content)) as image:
        assert image.size == (width, height)


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nowhere"), 404, "Not Found")
    assert_error(await client.get("/encode"), 405, "Method Not Allowed")


async def test_a_malformed_form_is_not_logged_by_the_parser(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: python-multipart's warning ("Expected boundary character ...") reached the server's stderr as a raw
    line for every malformed form a caller sent."""
    body = b"garbage before any boundary\r\n--XyZ\r\n"
    with caplog.at_level(logging.DEBUG):
        response = await client.post(
            "/encode", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"}
        )
    assert response.status_code == 400, response.text
    assert not [record for record in caplog.records if record.name.startswith("python_multipart")]


async def test_a_trailing_slash_is_not_redirected(client: httpx.AsyncClient, as_upload: Files) -> None:
    """Before: a 307 to an absolute http:// URL (wrong behind a TLS proxy), which a client follows by uploading
    the whole body again."""
    assert_error(await client.post("/encode/", files=as_upload(b"not read")), 404, "Not Found")
    assert_error(await client.get("/healthz/"), 404, "Not Found")


async def test_not_ready_without_a_loaded_model(make_settings: Callable[..., Settings], as_upload: Files) -> None:
    """Before the lifespan has loaded the checkpoint, the model routes answer 503 and /readyz says why."""
    app = create_app(make_settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert_error(await client.get("/readyz"), 503, "not loaded")
        response = await client.post("/encode", files=as_upload(b"x"))
        assert_error(response, 503, "not loaded")
        assert response.headers["retry-after"]
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_unexpected_errors_are_json_500_without_internals(
    app: FastAPI,
    client: httpx.AsyncClient,
    as_upload: Files,
    image_file: Any,
    noise: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = app.state.service

    def broken(_: Any) -> Any:
        raise RuntimeError("secret internal state")

    monkeypatch.setattr(service.model, "encode", broken)
    response = await client.post("/encode", files=as_upload(image_file(noise(16, 16))))
    assert_error(response, 500, "internal server error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert (await client.get("/healthz")).status_code == 200  # the worker thread survived


async def test_metrics_count_route_templates_not_urls(serve: Serve) -> None:
    """Early 413s still count under their route; unknown URLs share one label so scanners cannot add series."""
    async with serve(max_body_bytes=100) as client:
        await client.post("/encode", content=bytes(200), headers={"content-type": "multipart/form-data; boundary=x"})
        for path in ("/wp-admin", "/random/123", "/docs", "/docs-assets/swagger-ui.css", "/docs-assets/nothing.js"):
            await client.get(path)
        text = (await client.get("/metrics")).text
    assert 'vqvae_http_requests_total{method="POST",route="/encode",status="413"} 1.0' in text
    assert 'vqvae_http_requests_total{method="GET",route="unmatched",status="404"} 2.0' in text
    assert 'vqvae_http_requests_total{method="GET",route="/docs",status="200"} 1.0' in text
    # The docs pages' files count under their mount, their 404s too (they counted as "unmatched", a review).
    assert 'vqvae_http_requests_total{method="GET",route="/docs-assets",status="200"} 1.0' in text
    assert 'vqvae_http_requests_total{method="GET",route="/docs-assets",status="404"} 1.0' in text


async def test_metrics_count_unusual_methods_under_one_label(client: httpx.AsyncClient) -> None:
    """Each method the HTTP parser takes (34) on each route made its own series: 1,700 tiny requests made 10,000,
    and /metrics grew to 1 MB, rendered on the event loop (a security review)."""
    for method in ("PROPFIND", "MKCALENDAR", "QUERY", "PURGE"):
        await client.request(method, "/encode")
    await client.request("DELETE", "/model")
    text = (await client.get("/metrics")).text
    assert 'vqvae_http_requests_total{method="other",route="/encode",status="405"} 4.0' in text
    assert 'vqvae_http_requests_total{method="DELETE",route="/model",status="405"} 1.0' in text
    assert "PROPFIND" not in text and "MKCALENDAR" not in text


DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css")


async def test_the_docs_pages_and_metrics_can_be_switched_off(
    serve: Serve, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """An ops review: a hospital network may not want the schema, the docs pages or the counters shown to whoever
    reaches the port (VQVAE_DOCS, VQVAE_METRICS). Each is then a JSON 404 like any unknown path; the API is as
    before."""
    async with serve() as client:
        assert [(await client.get(path)).status_code for path in (*DOCS_PATHS, "/metrics")] == [200] * 6
    async with serve(docs=False, metrics=False) as client:
        for path in (*DOCS_PATHS, "/metrics"):
            assert_error(await client.get(path), 404, "Not Found")
        assert (await client.post("/encode", files=as_upload(image_file(noise(16, 16))))).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
    async with serve(docs=False) as client:  # each on its own
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 404


async def test_the_docs_assets_answer_range_errors_in_json(client: httpx.AsyncClient) -> None:
    """Before: a text/plain 400 for a malformed Range header and an empty 416 for one past the end, the only
    answers of the service that were not {"detail": ...}. A satisfiable range is still a 206 of the file."""
    asset = "/docs-assets/swagger-ui.css"
    whole = await client.get(asset)
    assert whole.status_code == 200 and whole.headers["content-type"].startswith("text/css")
    size = len(whole.content)
    past = await client.get(asset, headers={"Range": f"bytes={size + 10}-"})
    assert_error(past, 416, f"the requested range is not satisfiable: the file has {size} bytes")
    assert past.headers["content-range"] == f"bytes */{size}"
    assert_error(await client.get(asset, headers={"Range": "bytes=abc"}), 400, "Range header")
    part = await client.get(asset, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]
    assert part.headers["content-type"].startswith("text/css")
    head = await client.head(asset, headers={"Range": "bytes=abc"})
    assert head.status_code == 400 and head.headers["content-type"] == "application/json" and head.content == b""
