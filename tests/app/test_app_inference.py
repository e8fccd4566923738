"""app.inference: every torch call of the service on one thread (see ``InferenceService``), warm-up, start-up errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import app.inference as inference
import models.cpus as cpus
from app.inference import InferenceService, StartupError, check_checkpoint
from app.settings import Settings


@pytest.fixture
def load_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """Records the thread of every checkpoint load."""
    threads: list[threading.Thread] = []
    real = inference.load_model

    def recording(settings: Settings) -> Any:
        threads.append(threading.current_thread())
        return real(settings)

    monkeypatch.setattr(inference, "load_model", recording)
    return threads


def test_the_model_is_loaded_warmed_up_and_run_on_the_batchers_thread(
    make_settings: Callable[..., Settings], load_threads: list[threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_threads: list[tuple[int, str]] = []
    real = InferenceService._run_batch

    def recording(self: InferenceService, key: Any, payloads: list[Any]) -> list[Any]:
        batch_threads.append((threading.get_ident(), key[0]))
        return real(self, key, payloads)

    monkeypatch.setattr(InferenceService, "_run_batch", recording)
    batches: list[tuple[str, int]] = []
    settings = make_settings(parallel_batches=1)
    service = InferenceService.start(settings, observe_batch=lambda op, size, _s: batches.append((op, size)))
    try:
        worker = service.batcher.thread_id
        assert [thread.ident for thread in load_threads] == [worker]
        # warmed up: one pass of each operation, on the worker, before start() returned; not counted as batches
        assert batch_threads == [(worker, "encode"), (worker, "reconstruct"), (worker, "decode")]
        assert batches == []
        assert service.ready and len(service.sha256) == 64
    finally:
        service.close()


def test_helpers_warm_up_on_one_torch_thread_and_the_worker_keeps_its_own(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load helpers run forward passes beside the worker, one torch thread each (see InferenceService)."""
    passes: list[tuple[int, str, int]] = []
    real = InferenceService._run_batch

    def recording(self: InferenceService, key: Any, payloads: list[Any]) -> list[Any]:
        passes.append((threading.get_ident(), key[0], torch.get_num_threads()))
        return real(self, key, payloads)

    monkeypatch.setattr(InferenceService, "_run_batch", recording)
    service = InferenceService.start(make_settings(parallel_batches=2, torch_threads=2))
    try:
        worker, (helper,) = service.batcher.thread_id, service.batcher.helper_thread_ids
        operations = ["encode", "reconstruct", "decode"]
        assert passes == [(worker, op, 2) for op in operations] + [(helper, op, 1) for op in operations]
    finally:
        service.close()


def test_the_service_runs_the_model_in_its_inference_layout(make_settings: Callable[..., Settings]) -> None:
    """channels_last conv weights on the CPU (``VQVAE.for_inference``): encode took about 0.8x the time."""
    model, _ = inference.load_model(make_settings())
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert not model.training
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)


def test_a_bad_checkpoint_fails_start_with_one_line(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(StartupError, match=f"cannot load checkpoint: {broken}"):
        InferenceService.start(make_settings(checkpoint=broken))


def test_the_serve_check_loads_on_a_thread_that_has_exited(
    make_settings: Callable[..., Settings], load_threads: list[threading.Thread], tmp_path: Path
) -> None:
    check_checkpoint(make_settings())
    (thread,) = load_threads
    assert thread is not threading.main_thread()
    assert not thread.is_alive()  # its OpenMP team went with it
    with pytest.raises(StartupError, match="checkpoint file not found"):
        check_checkpoint(make_settings(checkpoint=tmp_path / "missing.safetensors"))


def test_a_failing_warm_up_is_a_startup_error(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(self: InferenceService, key: Any, payloads: list[Any]) -> list[Any]:
        raise RuntimeError("not enough memory: you tried to allocate 1 TB")

    monkeypatch.setattr(InferenceService, "_run_batch", out_of_memory)
    with pytest.raises(StartupError, match="failed its warm-up pass on cpu: not enough memory"):
        InferenceService.start(make_settings())


@pytest.mark.parametrize(("retain_mb", "calls"), [(64, [64 * 1024 * 1024]), (0, [])])
def test_malloc_settings_follow_the_setting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, retain_mb: int, calls: list[int]
) -> None:
    """VQVAE_MALLOC_RETAIN_MB reaches models.allocator at start-up; 0 leaves glibc's defaults alone."""
    seen: list[int] = []
    monkeypatch.setattr(inference, "retain_freed_memory", lambda size: seen.append(size) or True)
    service = InferenceService.start(make_settings(malloc_retain_mb=retain_mb, parallel_batches=1))
    service.close()
    assert seen == calls


def test_a_container_cpu_limit_sets_the_default_threads_and_the_log_says_so(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``docker run --cpus 0.5`` on 2 cores: torch's default of 2 threads (and 2 parallel passes) were throttled,
    and a lone /reconstruct took 1.9x as long as on one thread (a review). The count is in the start-up log."""
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    for module in (cpus, inference):
        monkeypatch.setattr(module, "cpu_quota", lambda: 0.5)
    monkeypatch.setattr(inference, "DEFAULT_TORCH_THREADS", 2)
    passes: list[int] = []
    real = InferenceService._run_batch

    def recording(self: InferenceService, key: Any, payloads: list[Any]) -> list[Any]:
        passes.append(torch.get_num_threads())
        return real(self, key, payloads)

    monkeypatch.setattr(InferenceService, "_run_batch", recording)
    with caplog.at_level(logging.INFO, logger="app.inference"):
        service = InferenceService.start(make_settings())
    try:
        assert (service.parallel_batches, service.batcher.helper_thread_ids) == (1, [])
        assert passes == [1, 1, 1]  # the warm-up, on the worker alone
    finally:
        service.close()
    assert (
        "1 torch thread(s) (torch's default, at most 1 of the 2 usable CPU(s) under a cgroup CPU limit of 0.5); up to "
        "1 forward pass(es) at once under load (VQVAE_PARALLEL_BATCHES)"
    ) in caplog.messages
    assert InferenceService(make_settings(torch_threads=2))._threads == 2  # a setting still wins
