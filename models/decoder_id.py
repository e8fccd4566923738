"""Which model a grid of codes belongs to: a digest of exactly what decoding the codes uses."""

from __future__ import annotations

import hashlib

import numpy as np

from models.vqvae import VQVAE

CODEBOOK = "quantizer.codebook"
DECODER_PREFIX = "decoder."


def decoder_id(model: VQVAE) -> str:
    """sha256 (hex) over the name, shape and float32 bytes of the codebook and every decoder tensor, by name.

    Codes are only meaningful to the codebook and decoder that made them: another checkpoint with the same grid
    and codebook size (the shipped grid16 file was replaced by a better one of the same shape) decodes them
    without a word into a different image. The file's sha256 cannot tag them: ``vqvae-eval --record`` rewrites
    the metadata, and the encoder or the training statistics (EMA counts) may change without changing what a
    code decodes to. The names and shapes carry the decoder's architecture; the memory layout does not count.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name == CODEBOOK or name.startswith(DECODER_PREFIX):
            values = tensor.detach().cpu().float().numpy()  # any layout (channels_last) -> C order below
            digest.update(f"{name} {list(values.shape)}\n".encode())
            digest.update(np.ascontiguousarray(values, dtype="<f4").tobytes())
    return digest.hexdigest()
