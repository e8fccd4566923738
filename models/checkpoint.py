"""Checkpoint format: safetensors tensors + JSON metadata in the header. Loading never executes code."""

from __future__ import annotations

import json
import re
import reprlib
import stat
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize

from models.config import VQVAEConfig
from models.files import write_atomically
from models.vqvae import VQVAE

FORMAT_VERSION = 1
METADATA_KEY = "vqvae"
# What training and vqvae-eval write nests 4 deep (metrics -> split -> ssim -> mean); the service's /model answer
# fails past a few hundred levels (pydantic's serialization depth), json.loads past about a thousand (RecursionError).
MAX_METADATA_DEPTH = 32
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# The dtypes, as safetensors names them, that a tensor may be stored in: every VQVAE tensor is float32, and
# load_state_dict casts into it. F16 and BF16 widen exactly; F64 rounds, and a value past float32's range becomes
# infinite, which _check_finite then refuses. Any other (integers, bool, complex, float8) is no model's weights.
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def save(model: VQVAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the model's tensors and ``{"format_version", "config", **metadata}`` atomically to ``path``."""
    data = to_bytes(model, metadata)
    return write_atomically(Path(path), lambda partial: partial.write_bytes(data))


def to_bytes(model: VQVAE, metadata: dict[str, Any] | None = None) -> bytes:
    """The checkpoint file's content. Written by Python, not by ``safetensors.torch.save_file``, which creates its
    file 0600 whatever the umask: a checkpoint trained as one user could not be served as another (the container's
    non-root user, through a mounted folder). Python's file gets the mode any new file gets."""
    header = {**(metadata or {}), "format_version": FORMAT_VERSION, "config": model.config.to_dict()}
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    return serialize(tensors, metadata={METADATA_KEY: json.dumps(header)})


def recorded(metadata: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``metadata[key][key]...``, or {} where a level is absent or not an object: what a checkpoint of an older
    version lacks. Before, a section of another type (``"data": []``) ended ``--resume`` in an AttributeError."""
    section: Any = metadata
    for key in keys:
        section = section.get(key) if isinstance(section, dict) else None
    return section if isinstance(section, dict) else {}


def _check_readable(path: Path) -> None:
    """Say what keeps the file from being read. safetensors calls a file it may not read "No such file or
    directory", and a folder was "checkpoint file not found". A FIFO or a device is refused before it is opened
    (opening a FIFO waits for a writer)."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise CheckpointError(f"{path}: a folder, not a checkpoint file")
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{path}: not a regular file, so not a checkpoint file")
        path.open("rb").close()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: checkpoint file not found") from exc
    except PermissionError as exc:  # the file's mode, or a folder on the way
        raise CheckpointError(f"{path}: cannot read the checkpoint file: permission denied") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint file: {exc.strerror or exc}") from exc


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, validated, without loading its tensors."""
    path = Path(path)
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (corrupt or truncated?): {exc}") from exc
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no '{METADATA_KEY}' metadata; not a VQ-VAE checkpoint")
    metadata = _parse_metadata(path, raw)
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: checkpoint metadata must be a JSON object")
    version = metadata.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # not True, nor 1.0, which equal 1
        shown = reprlib.repr(version)  # a crafted value may run to thousands of characters
        raise CheckpointError(f"{path}: unsupported checkpoint format_version {shown} (expected {FORMAT_VERSION})")
    return metadata


def _nesting_depth(text: str) -> int:
    """How deep the JSON ``text`` nests arrays and objects, counted without parsing it: json.loads recurses once a
    level, so a header nested 100,000 deep raised RecursionError. Strings are dropped first, their escapes (``\\"``)
    before them: their brackets are text. Linear, with no recursion and no Python loop over the characters."""
    outside_strings = "".join(_ESCAPE.sub("", text).split('"')[::2])
    brackets = _NOT_A_BRACKET.sub("", outside_strings)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _parse_metadata(path: Path, raw: str) -> Any:
    """The metadata's JSON value, refused when nested deeper than ``MAX_METADATA_DEPTH``: deeper, it crashed
    json.loads, or loaded and then turned every GET /model into a 500. An integer too long for Python to read was a
    bare ValueError: a traceback from vqvae-serve, an error naming no file from vqvae-eval."""
    if _nesting_depth(raw) > MAX_METADATA_DEPTH:
        raise CheckpointError(f"{path}: checkpoint metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON: {exc}") from exc
    except ValueError as exc:  # Python's limit on int() of a long digit string; its text advises raising the limit
        limit = sys.get_int_max_str_digits()
        raise CheckpointError(f"{path}: checkpoint metadata holds an integer of more than {limit} digits") from exc


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message: torch's argument errors span a dozen lines."""
    return next(iter(str(exc).splitlines()), type(exc).__name__)


def _config_and_shapes(path: Path, metadata: dict[str, Any]) -> tuple[VQVAEConfig, dict[str, torch.Size]]:
    """The architecture in the metadata, and the tensor shapes its model has.

    The model is built on the meta device: a crafted config can ask for terabytes, and nothing is allocated until
    the file is known to hold tensors of exactly these shapes.
    """
    if "config" not in metadata:  # a KeyError said only "invalid architecture config in checkpoint: 'config'"
        raise CheckpointError(f'{path}: the checkpoint\'s metadata holds no architecture config ("config")')
    try:
        config = VQVAEConfig.from_dict(metadata["config"])
        with torch.device("meta"):
            shapes = {name: tensor.shape for name, tensor in VQVAE(config).state_dict().items()}
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: invalid architecture config in checkpoint: {_one_line(exc)}") from exc
    return config, shapes


def _first_mismatch(expected: dict[str, torch.Size], declared: dict[str, torch.Size]) -> str | None:
    """What first differs between the model's tensors and those the file's header declares, or None."""
    for name, shape in expected.items():
        if name not in declared:
            return f"tensor {name!r} is missing"
        if declared[name] != shape:
            return f"tensor {name!r} has shape {list(declared[name])} but the config needs {list(shape)}"
    unexpected = sorted(set(declared) - set(expected))
    return f"unexpected tensor {unexpected[0]!r}" if unexpected else None


def _first_foreign_dtype(dtypes: dict[str, str]) -> str | None:
    """The first tensor stored in a dtype not in ``WEIGHT_DTYPES``, said in words, or None. Before, integer, bool,
    complex (its imaginary part dropped) and float8_e5m2 tensors loaded as weights, and float8_e4m3fn crashed
    _check_finite (torch has no isfinite for it)."""
    for name, dtype in dtypes.items():
        if dtype not in WEIGHT_DTYPES:
            return f"tensor {name!r} is stored as {dtype}, not as a float dtype of weights ({', '.join(WEIGHT_DTYPES)})"
    return None


def _read_tensors(path: Path, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The file's tensors, read only after the dtypes and shapes in its header are those of a model's weights and
    match ``expected``."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118
            foreign = _first_foreign_dtype({name: part.get_dtype() for name, part in slices.items()})
            mismatch = _first_mismatch(expected, {name: torch.Size(part.get_shape()) for name, part in slices.items()})
            if foreign is None and mismatch is None:
                tensors = {name: handle.get_tensor(name) for name in slices}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint: {_one_line(exc)}") from exc
    if foreign is not None:
        raise CheckpointError(f"{path}: {foreign}")
    if mismatch is not None:
        raise CheckpointError(f"{path}: tensors do not match the config in the checkpoint: {mismatch}")
    return tensors


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse NaN or infinite weights: a file damaged in its tensor data (whose header still parses), or a run that
    diverged. Before, such a model loaded, and the service answered 200s with all-zero codes, blank images and an
    SSIM of null. Checked in the model, after the cast to its float32: a float64 past float32's range is infinite
    there."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s): a corrupt file or a diverged run"
            )


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, dict[str, Any]]:
    """Rebuild the model from the file alone -> (model in eval mode, metadata).

    A wrongly typed config value, a tensor stored in no float dtype, or tensor names or shapes that differ from the
    config's model, is a one-line CheckpointError raised before the real model is allocated, so a crafted header
    cannot make ``load`` allocate much more than the file itself holds.
    """
    path = Path(path)
    metadata = read_metadata(path)
    config, shapes = _config_and_shapes(path, metadata)
    tensors = _read_tensors(path, shapes)
    model = VQVAE(config)
    model.load_state_dict(tensors, strict=True)  # same names and shapes; values are cast to the model's dtypes
    _check_finite(path, model.state_dict())
    return model.to(device).eval(), metadata
