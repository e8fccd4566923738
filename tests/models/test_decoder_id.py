"""models.decoder_id: the same exactly when the codes would decode to the same image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models.checkpoint import load, save
from models.config import PRESETS
from models.decoder_id import decoder_id
from models.vqvae import VQVAE


@pytest.fixture
def model() -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(PRESETS["tiny"]).eval()


def nudged(model: VQVAE, name: str) -> VQVAE:
    """A copy of ``model`` with one number of tensor ``name`` changed by 1e-6."""
    copy = VQVAE(model.config)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.state_dict()[name].view(-1)[0] += 1e-6
    assert not torch.equal(copy.state_dict()[name], model.state_dict()[name]), f"1e-6 was lost in rounding {name}"
    return copy


def test_a_digest_of_the_codebook_and_decoder_that_survives_a_save_and_the_inference_layout(
    model: VQVAE, tmp_path: Path
) -> None:
    """The file's sha256 changes with its metadata (vqvae-eval --record rewrites it); this id does not, nor with
    the channels_last weights the service runs."""
    first = save(model, tmp_path / "a.safetensors", {"note": "one"})
    second = save(model, tmp_path / "b.safetensors", {"note": "two", "metrics": {"test": {"images": 3}}})
    assert first.read_bytes() != second.read_bytes()
    ids = {decoder_id(load(path)[0].for_inference()) for path in (first, second)}
    assert ids == {decoder_id(model)}
    assert len(decoder_id(model)) == 64 and int(decoder_id(model), 16) >= 0


def test_the_values_count_not_the_dtype_they_are_held_in(model: VQVAE) -> None:
    """A checkpoint stored in float64 loads as the same float32 numbers (models.checkpoint): the same id. Rounded
    to bfloat16, the numbers, and what the codes decode to, change: another id."""
    original = decoder_id(model)
    widened = VQVAE(model.config).double()
    widened.load_state_dict(model.state_dict())
    assert widened.decoder.net[0].weight.dtype == torch.float64
    assert decoder_id(widened) == original
    rounded = VQVAE(model.config)
    rounded.load_state_dict({name: tensor.bfloat16().float() for name, tensor in model.state_dict().items()})
    assert decoder_id(rounded) != original


def test_it_changes_with_any_codebook_or_decoder_number_and_not_with_the_encoder(model: VQVAE) -> None:
    names = list(model.state_dict())
    decoding = ["quantizer.codebook", *(name for name in names if name.startswith("decoder."))]
    other = ["quantizer.ema_count", "quantizer.ema_sum", *(name for name in names if name.startswith("encoder."))]
    assert len(decoding) > 2 and len(other) > 3
    assert set(decoding) | set(other) == set(names)
    original = decoder_id(model)
    for name in (decoding[0], decoding[1], decoding[-1]):
        assert decoder_id(nudged(model, name)) != original, name
    for name in other:
        assert decoder_id(nudged(model, name)) == original, name


@pytest.mark.parametrize(
    "change",
    [
        lambda config: {"codebook_size": config.codebook_size * 2},
        lambda config: {"res_blocks": config.res_blocks + 1},
        lambda config: {"decoder_channels": tuple(width * 2 for width in config.decoder_channels)},
    ],
    ids=["codebook_size", "res_blocks", "decoder_channels"],
)
def test_another_architecture_has_another_id_even_with_the_same_numbers(
    model: VQVAE, change: Callable[..., dict[str, object]]
) -> None:
    """Names and shapes count, not only values: weights all zero in both models still differ in shape or name."""
    config = model.config
    other = VQVAE(type(config)(**{**config.to_dict(), **change(config)}))
    for candidate in (model, other):
        with torch.no_grad():
            for tensor in candidate.state_dict().values():
                tensor.zero_()
    assert decoder_id(other) != decoder_id(model)
