"""The service with ``VQVAE_DEVICE=cuda``: the same answers as the model on the CPU, within float rounding.

Runs only where torch sees a CUDA device; CI has none, so it reports these tests as skipped. They passed on an
NVIDIA H200 with ``bash benchmarks/gpu_suite.sh`` (docs/cuda_h200_suite.txt), and in session 23 with the
decoder_id checks (docs/cuda_h200_default_train_session23.txt).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image

from app.settings import DEFAULT_CHECKPOINT
from models.checkpoint import load
from models.decoder_id import decoder_id
from models.grayscale import to_uint8
from models.quality import ssim
from training.data import read_grayscale

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)"),
]

Files = Callable[..., dict[str, tuple[str, bytes, str]]]


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")).astype(int)


async def test_reconstruct_encode_and_decode_on_cuda_match_the_cpu_model(
    make_app: Callable[..., FastAPI], run: Any, oasis_root: Path, as_upload: Files, image_file: Any
) -> None:
    pixels = read_grayscale(sorted((oasis_root / "keras_png_slices_test").glob("*.png"))[1])  # (H, W) uint8
    image = pixels.astype(np.float32) / 255.0
    cpu_model = load(DEFAULT_CHECKPOINT)[0]
    indices, reconstruction = cpu_model.reconstruct(torch.from_numpy(image)[None, None])  # (1, h, w), (1, 1, H, W)
    cpu_indices, cpu_reconstruction = indices[0].numpy(), reconstruction[0, 0].numpy()
    with torch.inference_mode():
        cpu_decoded = to_uint8(cpu_model.decode_indices(indices)[0, 0].clamp(0, 1).numpy())
    app = make_app(checkpoint=DEFAULT_CHECKPOINT, device="cuda")
    async with run(app) as client:
        assert app.state.service.device.type == "cuda"  # not the CPU model compared with itself
        ready = await client.get("/readyz")
        body = (await client.post("/reconstruct", files=as_upload(image_file(pixels)))).json()
        encoded = (await client.post("/encode", files=as_upload(image_file(pixels)))).json()
        decoded = await client.post("/decode", json={"indices": cpu_indices.tolist()})
        tagged = await client.post("/decode", json=encoded)  # the whole answer: its decoder_id is checked
    assert ready.status_code == 200
    # The model on the GPU tags its codes with the id of the weights on the CPU (float32 bytes, any device).
    assert encoded["decoder_id"] == decoder_id(cpu_model), encoded["decoder_id"]
    assert tagged.status_code == 200, tagged.text
    # TF32 convolutions on the GPU move the latents by about 1e-3: a code at a near-tie may flip, nothing more.
    agreement = float(np.mean(np.asarray(encoded["indices"]) == cpu_indices))
    assert agreement >= 0.98, f"only {agreement:.2%} of the codes match the CPU's"
    assert body["ssim"] == pytest.approx(ssim(image, cpu_reconstruction), abs=2e-3)
    served = png_pixels(base64.b64decode(body["image_png_base64"]))
    assert np.mean(np.abs(served - to_uint8(cpu_reconstruction)) <= 1) >= 0.99
    # The same indices decode to the same picture on either device, to a grey level or so.
    assert decoded.status_code == 200
    difference = np.abs(png_pixels(decoded.content) - cpu_decoded)
    assert np.mean(difference <= 1) >= 0.999 and difference.max() <= 3, np.bincount(difference.ravel())
