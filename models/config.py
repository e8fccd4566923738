"""Architecture of the VQ-VAE: the one config that travels inside every checkpoint."""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


MAX_LAYERS = 64  # residual blocks per stack
# Stride 2**8 = 256: a 256x256 slice is one code. Every image is padded to a multiple of the stride, so a crafted
# checkpoint of 16 levels made vqvae-eval ask for 34 GB to pad a slice to 65536x65536 (a review).
MAX_LEVELS = 8

# Field annotation -> (check, what the error message asks for).
_TYPE_CHECKS: dict[object, tuple[Callable[[object], bool], str]] = {
    int: (_is_int, "an integer"),
    bool: (lambda value: isinstance(value, bool), "true or false"),
    float: (_is_finite_number, "a finite number"),
    tuple[int, ...]: (lambda value: isinstance(value, list | tuple) and all(map(_is_int, value)), "a list of integers"),
}


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture only (no training settings), validated on construction.

    The latent grid is ``image_size / 2**len(encoder_channels)``; each grid cell is one index into a codebook
    of ``codebook_size`` vectors of ``embedding_dim`` numbers.
    """

    in_channels: int = 1
    encoder_channels: tuple[int, ...] = (32, 64, 128)
    decoder_channels: tuple[int, ...] = (192, 96, 48)
    res_blocks: int = 1
    bottleneck_res_blocks: int = 2
    embedding_dim: int = 8
    codebook_size: int = 1024
    normalize_codes: bool = True
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_threshold: float = 0.03

    def __post_init__(self) -> None:
        self._check_types()
        # JSON round trips give lists; keep tuples so the dataclass stays hashable and comparable.
        object.__setattr__(self, "encoder_channels", tuple(self.encoder_channels))
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        if self.in_channels != 1:  # every input here is a grey slice: 3 loaded, then failed in the first pass
            raise ValueError(f"in_channels must be 1 (grayscale slices), got {self.in_channels}")
        if not self.encoder_channels:
            raise ValueError("encoder_channels must name at least one level")
        if len(self.decoder_channels) != len(self.encoder_channels):
            raise ValueError(
                f"decoder_channels has {len(self.decoder_channels)} levels but encoder_channels has "
                f"{len(self.encoder_channels)}; they must match"
            )
        for name in ("encoder_channels", "decoder_channels"):
            if any(c < 1 for c in getattr(self, name)):
                raise ValueError(f"{name} must all be >= 1, got {getattr(self, name)}")
        if self.res_blocks < 0 or self.bottleneck_res_blocks < 0:
            raise ValueError("res_blocks and bottleneck_res_blocks must be >= 0")
        # Upper bounds far above any sensible network: a checkpoint header asking for millions of layers would
        # otherwise hang start-up building them (10,000 residual blocks took 34 s, even on the meta device).
        for name, value, most in (
            ("levels", len(self.encoder_channels), MAX_LEVELS),
            ("res_blocks", self.res_blocks, MAX_LAYERS),
            ("bottleneck_res_blocks", self.bottleneck_res_blocks, MAX_LAYERS),
        ):
            if value > most:
                raise ValueError(f"{name} must be at most {most}, got {value}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.commitment_cost < 0:
            raise ValueError(f"commitment_cost must be >= 0, got {self.commitment_cost}")
        if self.ema_epsilon <= 0:
            raise ValueError(f"ema_epsilon must be > 0, got {self.ema_epsilon}")
        if self.dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {self.dead_code_threshold}")

    def _check_types(self) -> None:
        """Refuse wrongly typed values up front: a checkpoint's JSON can hold ``32.5`` or ``"no"``, which would
        otherwise fail deep inside torch or, for a string flag, silently count as true."""
        for name, annotation in get_type_hints(type(self)).items():
            check, expected = _TYPE_CHECKS[annotation]
            value = getattr(self, name)
            if not check(value):
                raise ValueError(f"{name} must be {expected}, got {reprlib.repr(value)}")

    @property
    def stride(self) -> int:
        """Pixels per latent cell along each axis."""
        return int(2 ** len(self.encoder_channels))

    @property
    def bits_per_index(self) -> int:
        """Bits to store one code index: ceil(log2 K)."""
        return max(1, math.ceil(math.log2(self.codebook_size)))

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Latent grid (rows, cols) for an image, after padding it up to a multiple of the stride."""
        return (-(-height // self.stride), -(-width // self.stride))

    def bits_for(self, height: int, width: int) -> int:
        """Bits per slice = grid_h * grid_w * ceil(log2 K)."""
        gh, gw = self.grid_for(height, width)
        return gh * gw * self.bits_per_index

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQVAEConfig:
        """Rebuild from a checkpoint; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VQVAEConfig fields: {unknown}")
        return cls(**data)


PRESETS: dict[str, VQVAEConfig] = {
    # 32x32 grid of 10-bit codes for a 256x256 slice: 10,240 bits, 51x smaller than the 8-bit slice.
    "default": VQVAEConfig(),
    # The default's 32x32 grid of 10-bit codes with a wider encoder and decoder and a deeper bottleneck: 3.8x the
    # parameters, about 3x the CPU time of a reconstruction (5x of an encoding), for +0.006 test SSIM on the same
    # recipe and data. The shipped vqvae.safetensors (docs/experiments.md, Run 4).
    "wide": VQVAEConfig(
        encoder_channels=(64, 128, 256), decoder_channels=(256, 128, 64), res_blocks=2, bottleneck_res_blocks=3
    ),
    # 64x64 grid of 6-bit codes: the original report's grid size, 24,576 bits.
    "grid64": VQVAEConfig(encoder_channels=(32, 64), decoder_channels=(128, 64), codebook_size=64, embedding_dim=8),
    # 16x16 grid of 10-bit codes: 2,560 bits.
    "grid16": VQVAEConfig(encoder_channels=(32, 64, 128, 128), decoder_channels=(192, 192, 96, 48), codebook_size=1024),
    # Small and fast, for tests and smoke runs.
    "tiny": VQVAEConfig(
        encoder_channels=(8, 16),
        decoder_channels=(16, 8),
        res_blocks=1,
        bottleneck_res_blocks=1,
        embedding_dim=4,
        codebook_size=32,
    ),
}
