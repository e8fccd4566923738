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
