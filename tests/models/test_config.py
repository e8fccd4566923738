import pytest

from models.config import PRESETS, VQVAEConfig


def test_default_is_32x32_grid_of_10_bit_codes() -> None:
    config = PRESETS["default"]
    assert config.grid_for(256, 256) == (32, 32)
    assert config.bits_for(256, 256) == 10_240
    assert config.grid_for(250, 243) == (32, 31)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codebook_size": 1}, "codebook_size"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"encoder_channels": ()}, "encoder_channels"),
        ({"decoder_channels": (8,)}, "levels"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"encoder_channels": (8, 0), "decoder_channels": (8, 8)}, "encoder_channels"),
        # A crafted header's millions of layers would hang start-up in the building (10,000 blocks took 34 s).
        ({"res_blocks": 10**6}, "res_blocks must be at most 64"),
        ({"bottleneck_res_blocks": 65}, "bottleneck_res_blocks must be at most 64"),
        ({"encoder_channels": (8,) * 65, "decoder_channels": (8,) * 65}, "levels must be at most 8"),
        # Each image is padded to 2**levels a side: 16 levels asked for 34 GB for one slice.
        ({"encoder_channels": (8,) * 9, "decoder_channels": (8,) * 9}, "levels must be at most 8, got 9"),
        # A grey-slice model only: 3 channels loaded, then failed in the first forward pass with a traceback.
        ({"in_channels": 3}, r"in_channels must be 1 \(grayscale slices\), got 3"),
        ({"in_channels": 0}, "in_channels must be 1"),
    ],
)
def test_invalid_config_raises_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**kwargs)  # type: ignore[arg-type]


def test_dict_round_trip_and_unknown_keys() -> None:
    config = PRESETS["tiny"]
    assert VQVAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown VQVAEConfig fields"):
        VQVAEConfig.from_dict({**config.to_dict(), "dropout": 0.1})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("codebook_size", 32.5),
        ("codebook_size", True),
        ("in_channels", "1"),
        ("normalize_codes", "no"),
        ("normalize_codes", "false"),
        ("normalize_codes", 1),
        ("commitment_cost", float("nan")),
        ("ema_epsilon", float("inf")),
        ("ema_decay", "0.99"),
        ("encoder_channels", [8, 16.0]),
        ("encoder_channels", "ab"),
        ("decoder_channels", 8),
    ],
)
def test_wrongly_typed_value_raises_value_error_naming_the_field(field: str, value: object) -> None:
    # Checkpoint JSON can hold any type; a float size or a string flag must not reach torch (or read as True).
    data = {**PRESETS["tiny"].to_dict(), field: value}
    with pytest.raises(ValueError, match=rf"^{field} must be "):
        VQVAEConfig.from_dict(data)


def test_json_forms_of_valid_values_are_accepted() -> None:
    config = VQVAEConfig.from_dict({"encoder_channels": [8, 16], "decoder_channels": [16, 8], "commitment_cost": 0})
    assert config.encoder_channels == (8, 16) and config.commitment_cost == 0
