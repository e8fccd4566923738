"""Training precision (bf16 autocast where the hardware has it) and the refusal of a diverged step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import device
from models.checkpoint import read_metadata
from tests.conftest import read_strict_json
from training import train
from training.config import TrainConfig
from training.losses import reconstruction_loss
from training.train import DivergedError, Trainer, autocast_dtype

TINY = ["--preset", "tiny", "--batch-size", "4", "--crop", "32", "--warmup-steps", "2", "--no-progress"]
CPU = torch.device("cpu")


def test_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(train, "cpu_prefers_bf16", lambda: False)
    assert autocast_dtype("auto", CPU) is None
    monkeypatch.setattr(train, "cpu_prefers_bf16", lambda: True)
    assert autocast_dtype("auto", CPU) is torch.bfloat16
    assert autocast_dtype("fp32", CPU) is None
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        assert autocast_dtype("auto", torch.device("cuda")) is expected
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        autocast_dtype("fp16", CPU)


def tiny_trainer(root: Path, out: Path, precision: str) -> Trainer:
    config = TrainConfig(
        data=root, out=out, preset="tiny", batch_size=4, crop=32, precision=precision, device="cpu", progress=False
    )
    trainer = Trainer(config)
    trainer.model.train()
    return trainer


def test_bf16_step_trains_with_an_fp32_loss(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = tiny_trainer(fixture_oasis, tmp_path, "bf16")
    seen: list[tuple[bool, torch.dtype]] = []

    def spy(x: torch.Tensor, reconstruction: torch.Tensor, weight: float) -> torch.Tensor:
        seen.append((torch.is_autocast_enabled("cpu"), reconstruction.dtype))
        return reconstruction_loss(x, reconstruction, weight)

    monkeypatch.setattr(train, "reconstruction_loss", spy)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    losses = [trainer.train_step(trainer.sampler.sample(4))[0] for _ in range(3)]
    assert all(0.0 < loss < 2.0 for loss in losses)
    assert seen and all(not autocast for autocast, _ in seen)  # the loss runs outside autocast
    assert {dtype for _, dtype in seen} == {torch.bfloat16}  # while the decoder did run in bf16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_non_finite_loss_is_refused_before_the_update(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = tiny_trainer(fixture_oasis, tmp_path, "fp32")
    monkeypatch.setattr(train, "reconstruction_loss", lambda *args: torch.tensor(float("nan")))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(DivergedError, match="loss became nan at step 0"):
        trainer.train_step(trainer.sampler.sample(4))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_non_finite_gradient_is_refused_before_the_update(fixture_oasis: Path, tmp_path: Path) -> None:
    trainer = tiny_trainer(fixture_oasis, tmp_path, "fp32")
    first = next(trainer.model.parameters())
    first.register_hook(lambda grad: grad * float("nan"))  # a finite loss whose gradient is not
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(DivergedError, match=r"gradient norm became nan at step 0.*nothing to resume"):
        trainer.train_step(trainer.sampler.sample(4))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_diverged_run_exits_1_with_the_reason(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train, "reconstruction_loss", lambda *args: torch.tensor(float("inf")))
    assert train.main(["--data", str(fixture_oasis), "--out", str(tmp_path), *TINY]) == 1
    assert "error: the loss became inf at step 0" in capsys.readouterr().err
    assert not (tmp_path / "best.safetensors").exists()


def test_checkpoint_records_the_precision(fixture_oasis: Path, tmp_path: Path) -> None:
    args = ["--data", str(fixture_oasis), "--out", str(tmp_path), "--epochs", "1", "--precision", "bf16", *TINY]
    assert train.main(args) == 0
    training = read_metadata(tmp_path / "best.safetensors")["training"]
    assert training["precision"] == "bfloat16" and training["config"]["precision"] == "bf16"


def test_run_without_a_finite_validation_score_exits_1(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nan = float("nan")
    report = {"ssim": {"mean": nan}, "psnr": {"mean": nan}, "codebook_usage": 0.0}
    monkeypatch.setattr(Trainer, "validate", lambda self: report)
    assert train.main(["--data", str(fixture_oasis), "--out", str(tmp_path), "--epochs", "1", *TINY]) == 1
    assert "no epoch produced a finite validation SSIM" in capsys.readouterr().err
    assert (tmp_path / "last.safetensors").exists() and not (tmp_path / "best.safetensors").exists()
    history = read_strict_json(tmp_path / "history.json")
    assert history[0]["val_ssim"] is None and history[0]["val_psnr"] is None and history[0]["step"] > 0


def test_amx_needs_the_cpu_flag_and_the_kernels_grant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    with_amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\nbogomips\t: 4000\n"
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: True, raising=False)
    cpuinfo.write_text(with_amx)
    assert device.cpu_has_amx(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")  # the CPU where bf16 was slower
    assert not device.cpu_has_amx(cpuinfo)
    assert not device.cpu_has_amx(tmp_path / "absent")  # no /proc: not Linux
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: False, raising=False)  # listed, but not granted
    cpuinfo.write_text(with_amx)
    assert not device.cpu_has_amx(cpuinfo)


@pytest.mark.parametrize(
    ("flags", "speedup", "prefers"),
    [
        ("fpu sse2 avx512f", None, False),  # no bf16 instructions: no probe
        ("fpu sse2 avx512f avx512_bf16", 0.5, False),  # the 2-core Xeon, where bf16 trained 1.4-1.6x slower
        ("fpu sse2 avx512f avx512_bf16", 4.2, True),  # the 2-core AMD EPYC, where it trained 1.5-1.7x faster
        ("fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile", None, True),  # AMX (granted): no probe
    ],
)
def test_auto_precision_on_a_cpu_follows_what_bf16_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, speedup: float | None, prefers: bool
) -> None:
    """Before, ``auto`` was fp32 on every CPU without AMX, also on the AMD EPYC where bf16 trained 1.5x faster."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: True, raising=False)

    def probe() -> float:
        assert speedup is not None, "probed a CPU it need not"
        return speedup

    monkeypatch.setattr(device, "cpu_bf16_matmul_speedup", probe)
    assert device.cpu_prefers_bf16(cpuinfo) is prefers


def test_the_bf16_probe_measures_this_cpu() -> None:
    """A real measurement, positive and finite (cached: every caller in a process gets the same answer)."""
    assert 0 < device.cpu_bf16_matmul_speedup() < 100
