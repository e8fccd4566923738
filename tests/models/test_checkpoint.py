import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models import checkpoint
from models.checkpoint import MAX_METADATA_DEPTH, CheckpointError, load, read_metadata, save
from models.config import PRESETS, VQVAEConfig
from models.files import partial_path
from models.vqvae import VQVAE
from tests.conftest import add_to_metadata


@pytest.fixture
def saved(tmp_path: Path) -> tuple[VQVAE, Path]:
    torch.manual_seed(0)
    model = VQVAE(PRESETS["tiny"])
    model.train()
    model(torch.rand(4, 1, 32, 32))  # move the EMA buffers away from their initial values
    return model.eval(), save(model, tmp_path / "model.safetensors", {"data": {"root": "fixture"}, "steps": 3})


def test_round_trip_gives_identical_outputs(saved: tuple[VQVAE, Path]) -> None:
    model, path = saved
    loaded, metadata = load(path)
    assert loaded.config == model.config
    assert metadata["data"] == {"root": "fixture"} and metadata["steps"] == 3
    assert metadata["format_version"] == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint file not found"):
        load(tmp_path / "nope.safetensors")


def test_a_folder_or_an_unreadable_file_is_named_as_such(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    """Before: "checkpoint file not found" of a folder, and "not a readable safetensors checkpoint (corrupt or
    truncated?): No such file or directory" of a file the process may not read."""
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"folder\.safetensors: a folder, not a checkpoint file$"):
        load(tmp_path / "folder.safetensors")
    _, path = saved
    folder = Path(tempfile.mkdtemp(prefix="vqvae-locked-"))  # not under pytest's folders, which others may not enter
    try:
        folder.chmod(0o711)  # others may pass through: only the file's own mode stands in the way
        locked = folder / "locked.safetensors"
        locked.write_bytes(path.read_bytes())
        locked.chmod(0)
        script = (  # as a user who may not read it (root may read anything)
            "import os, sys\n"
            "from models.checkpoint import CheckpointError, read_metadata\n"
            "if os.geteuid() == 0: os.setgid(65534); os.setgroups([]); os.setuid(65534)\n"
            "try: read_metadata(sys.argv[1])\n"
            "except CheckpointError as exc: print(exc)\n"
        )
        repo = Path(__file__).resolve().parents[2]
        done = subprocess.run([sys.executable, "-c", script, str(locked)], capture_output=True, text=True, cwd=repo)
    finally:
        shutil.rmtree(folder)
    assert done.stdout.strip() == f"{locked}: cannot read the checkpoint file: permission denied", done.stderr


def test_non_finite_weights_are_refused(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    """A file damaged in its tensor data (the header still parses): before, it loaded, and the service answered
    200s with all-zero codes, blank images and an SSIM of null."""
    _, path = saved
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(path.read_bytes())
    data[-4096:] = b"\xff" * 4096  # float32 0xffffffff is a NaN
    damaged.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"damaged\.safetensors: tensor '.+' holds \d+ NaN or infinite value"):
        load(damaged)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors: not a readable safetensors checkpoint"):
        load(path)


def test_truncated_file(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    _, path = saved
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors: not a readable safetensors checkpoint"):
        load(truncated)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a VQ-VAE checkpoint"):
        read_metadata(path)


def test_tensors_not_matching_config(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    _, path = saved
    _, metadata = load(path)
    other = VQVAE(PRESETS["grid64"])
    bad = tmp_path / "mismatch.safetensors"
    save(other, bad, metadata)
    # Rewrite the header to claim the tiny architecture while holding grid64 tensors.
    with safe_open(str(bad), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        header = handle.metadata()
    header["vqvae"] = header["vqvae"].replace('"codebook_size": 64', '"codebook_size": 32')
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(CheckpointError, match=r"mismatch\.safetensors: tensors do not match"):
        load(bad)


def _crafted(
    source: Path,
    target: Path,
    *,
    config: dict[str, object] | None = None,
    drop: str = "",
    add: str = "",
    replace: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A copy of ``source`` with its header's config updated, one tensor dropped, one added or some replaced."""
    with safe_open(str(source), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys() if name != drop}  # noqa: SIM118
        header = json.loads(handle.metadata()["vqvae"])
    header["config"].update(config or {})
    if add:
        tensors[add] = torch.zeros(1)
    tensors.update(replace or {})
    save_file(tensors, str(target), metadata={"vqvae": json.dumps(header)})
    return target


def _nested(levels: int) -> str:
    """A JSON array ``levels`` deep: ``[[1]]`` for 2."""
    return "[" * levels + "1" + "]" * levels


def test_metadata_at_the_depth_bound_loads_and_one_level_deeper_is_refused(
    saved: tuple[VQVAE, Path], tmp_path: Path
) -> None:
    """Before, 33 levels (or 300) loaded, and then every GET /model of the service was a 500: pydantic's
    serialization depth. Brackets in strings are text, not levels."""
    text = r"[[[[{{\\\"[[[[" * 20  # an escaped backslash, then an escaped quote: the string goes on
    bound = f'"x": {_nested(MAX_METADATA_DEPTH - 1)}, "note": "{text}"'  # the metadata object is the first level
    assert load(add_to_metadata(saved[1], tmp_path / "bound.safetensors", bound))[1]["note"] == json.loads(f'"{text}"')
    deeper = add_to_metadata(saved[1], tmp_path / "deeper.safetensors", f'"x": {_nested(MAX_METADATA_DEPTH)}')
    with pytest.raises(CheckpointError) as caught:
        load(deeper)
    assert str(caught.value) == f"{deeper}: checkpoint metadata is nested more than {MAX_METADATA_DEPTH} levels deep"


def test_metadata_too_deep_for_json_loads_is_one_checkpoint_error(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    """Before: RecursionError from json.loads, a traceback from vqvae-serve and vqvae-eval."""
    path = add_to_metadata(saved[1], tmp_path / "abyss.safetensors", f'"x": {_nested(100_000)}')
    with pytest.raises(CheckpointError, match=r"abyss\.safetensors: checkpoint metadata is nested more than"):
        read_metadata(path)


def test_a_checkpoint_without_a_config_says_so(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    """A review's case: "invalid architecture config in checkpoint: 'config'", a KeyError's text."""
    path = tmp_path / "bare.safetensors"
    with safe_open(str(saved[1]), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        header = json.loads(handle.metadata()["vqvae"])
    del header["config"]
    save_file(tensors, str(path), metadata={"vqvae": json.dumps(header)})
    with pytest.raises(CheckpointError) as caught:
        load(path)
    assert str(caught.value) == f'{path}: the checkpoint\'s metadata holds no architecture config ("config")'


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"codebook_size": 32.5}, "invalid architecture config in checkpoint: codebook_size must be an integer"),
        ({"normalize_codes": "no"}, "invalid architecture config in checkpoint: normalize_codes must be true or"),
        ({"normalize_codes": "false"}, "invalid architecture config in checkpoint: normalize_codes must be true or"),
        ({"codebook_size": 10**30}, "invalid architecture config in checkpoint: "),  # past int64: torch refuses it
        (
            {"codebook_size": 10**12},
            r"tensors do not match the config in the checkpoint: tensor 'quantizer\.codebook' has shape \[32, 4\] "
            r"but the config needs \[1000000000000, 4\]$",
        ),
        (
            {"encoder_channels": [10**7, 16]},
            r"tensors do not match the config in the checkpoint: tensor 'encoder\.net\.0\.weight' has shape",
        ),
    ],
)
def test_crafted_config_is_a_one_line_checkpoint_error(
    saved: tuple[VQVAE, Path], tmp_path: Path, config: dict[str, object], message: str
) -> None:
    path = _crafted(saved[1], tmp_path / "crafted.safetensors", config=config)
    with pytest.raises(CheckpointError, match=r"crafted\.safetensors: " + message) as caught:
        load(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        ("quantizer.ema_sum", "", "tensor 'quantizer.ema_sum' is missing"),
        ("", "extra", "unexpected tensor 'extra'"),
    ],
)
def test_missing_or_extra_tensor_is_named_on_one_line(
    saved: tuple[VQVAE, Path], tmp_path: Path, drop: str, add: str, message: str
) -> None:
    path = _crafted(saved[1], tmp_path / "edited.safetensors", drop=drop, add=add)
    with pytest.raises(CheckpointError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: tensors do not match the config in the checkpoint: {message}"


def test_shapes_are_compared_before_the_model_is_allocated(
    saved: tuple[VQVAE, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A codebook that would fit in memory must still not be allocated for a file whose tensors cannot fill it.
    devices: list[str] = []

    class RecordingVQVAE(VQVAE):
        def __init__(self, config: VQVAEConfig) -> None:
            super().__init__(config)
            devices.append(self.quantizer.codebook.device.type)

    monkeypatch.setattr(checkpoint, "VQVAE", RecordingVQVAE)
    path = _crafted(saved[1], tmp_path / "big.safetensors", config={"codebook_size": 2**20})
    with pytest.raises(CheckpointError, match=r"tensor 'quantizer\.codebook' has shape"):
        load(path)
    assert devices == ["meta"]


def test_an_integer_too_long_to_read_is_one_checkpoint_error(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    """Before: ValueError "Exceeds the limit (4300 digits) for integer string conversion", naming no file."""
    path = add_to_metadata(saved[1], tmp_path / "digits.safetensors", f'"steps": {"9" * 5000}')
    with pytest.raises(CheckpointError) as caught:
        load(path)
    assert (
        str(caught.value)
        == f"{path}: checkpoint metadata holds an integer of more than {sys.get_int_max_str_digits()} digits"
    )


@pytest.mark.parametrize(
    ("version", "shown"),
    [("true", "True"), ("1.0", "1.0"), ("1" + "0" * 4000, "1" + "0" * 17 + "..." + "0" * 19)],
)
def test_format_version_must_be_the_integer_1(
    saved: tuple[VQVAE, Path], tmp_path: Path, version: str, shown: str
) -> None:
    """Before, ``true`` and ``1.0`` were taken for 1 (they compare equal to it), and a crafted number was shown
    whole."""
    path = add_to_metadata(saved[1], tmp_path / "version.safetensors", f'"format_version": {version}')
    with pytest.raises(CheckpointError) as caught:
        read_metadata(path)
    assert str(caught.value) == f"{path}: unsupported checkpoint format_version {shown} (expected 1)"


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [
        (torch.int64, "I64"),
        (torch.int8, "I8"),
        (torch.uint8, "U8"),
        (torch.uint16, "U16"),
        (torch.uint32, "U32"),
        (torch.bool, "BOOL"),
        (torch.complex64, "C64"),  # before, loaded with its imaginary part dropped
        (torch.float8_e5m2, "F8_E5M2"),
        (torch.float8_e4m3fn, "F8_E4M3"),  # before, NotImplementedError from isfinite
    ],
)
def test_a_tensor_stored_as_no_float_dtype_of_weights_is_refused(
    saved: tuple[VQVAE, Path], tmp_path: Path, dtype: torch.dtype, stored: str
) -> None:
    """Before, all loaded as weights (cast to float32), but float8_e4m3fn, which crashed _check_finite."""
    model, source = saved
    codebook = model.state_dict()["quantizer.codebook"].to(dtype)
    path = _crafted(source, tmp_path / "typed.safetensors", replace={"quantizer.codebook": codebook})
    with pytest.raises(CheckpointError) as caught:
        load(path)
    assert str(caught.value) == (
        f"{path}: tensor 'quantizer.codebook' is stored as {stored}, not as a float dtype of weights "
        "(F32, F16, BF16, F64)"
    )


def test_half_and_double_tensors_load_as_float32_unless_past_its_range(
    saved: tuple[VQVAE, Path], tmp_path: Path
) -> None:
    """float16 and bfloat16 widen exactly, float64 rounds. Before, a float64 past float32's range loaded as an
    infinite weight: _check_finite looked at the float64 tensor, before the cast."""
    model, source = saved
    weights = model.state_dict()
    dtypes = {
        "quantizer.codebook": torch.float64,
        "encoder.net.0.weight": torch.float16,
        "decoder.net.0.bias": torch.bfloat16,
    }
    replace = {name: weights[name].to(dtype) for name, dtype in dtypes.items()}
    loaded = load(_crafted(source, tmp_path / "mixed.safetensors", replace=replace))[0].state_dict()
    for name, tensor in replace.items():
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], tensor.float())
    codebook = weights["quantizer.codebook"].double()
    codebook[0, 0] = 1e300
    huge = _crafted(source, tmp_path / "huge.safetensors", replace={"quantizer.codebook": codebook})
    with pytest.raises(
        CheckpointError, match=r"huge\.safetensors: tensor 'quantizer\.codebook' holds 1 NaN or infinite"
    ):
        load(huge)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_saved_checkpoint_gets_the_umasks_mode(tmp_path: Path, umask: int, mode: int) -> None:
    """safetensors writes its files 0600 whatever the umask: a checkpoint trained as root could not be read by the
    service's non-root user (Docker, a mounted folder). Before: 0600 in all three cases."""
    previous = os.umask(umask)
    try:
        path = save(VQVAE(PRESETS["tiny"]), tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_save_over_a_leftover_partial_file_gets_the_umasks_mode(tmp_path: Path) -> None:
    """A save cut off before its rename leaves its partial file; the next save must not inherit that file's mode."""
    leftover = partial_path(tmp_path / "model.safetensors")
    leftover.write_bytes(b"cut off")
    leftover.chmod(0o600)
    previous = os.umask(0o022)
    try:
        path = save(VQVAE(PRESETS["tiny"]), tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not leftover.exists()
    assert load(path)[0].config == PRESETS["tiny"]
