"""Smoke tests: each benchmark script runs end to end at a tiny size and prints its figures.

These prove the scripts work; they time nothing and assert no speed (benchmarks never run inside unit tests).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from benchmarks import (
    bench_ab,
    bench_app,
    bench_batching,
    bench_image_size,
    bench_malloc,
    bench_model,
    bench_service,
    bench_threads,
    bench_time_to_quality,
    bench_train,
    bench_validation,
    common,
)
from benchmarks.common import load_slices, write_json
from benchmarks.server import running_server
from models import device
from models.checkpoint import METADATA_KEY, save
from models.config import PRESETS
from models.cpus import max_torch_threads
from models.vqvae import VQVAE
from tests.conftest import read_strict_json
from training import train
from training.config import MAX_BATCH_SIZE, TrainConfig


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(VQVAE(PRESETS["tiny"]), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


QUICK_MODEL = ["--batch-sizes", "1", "--seconds", "0", "--repeats", "1", "--warmup", "0"]  # bench_model at its least


def data_args(root: Path, images: int = 4) -> list[str]:
    return ["--data", str(root), "--split", "test", "--images", str(images)]


def test_load_slices_falls_back_to_synthetic_without_the_default_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "DEFAULT_DATA_ROOT", tmp_path / "absent")
    slices = load_slices(None, None, 2)
    assert len(slices.images) == 2 and slices.shape == (256, 256)
    assert f"synthetic slices (no data: {tmp_path / 'absent'} does not exist)" in slices.source


def test_an_empty_split_is_the_data_folder_itself(fixture_oasis: Path) -> None:
    """As for vqvae-eval's ``--split ''``. Before, the benchmarks read the test split under it instead."""
    folder = fixture_oasis / "keras_png_slices_validate"
    assert load_slices(folder, "", 2).source == str(folder)


@pytest.mark.parametrize(("folder", "split"), [("absent", "test"), ("oasis", "tset"), ("default", "test")])
def test_load_slices_refuses_data_that_was_named_but_is_not_there(
    fixture_oasis: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    folder: str,
    split: str,
) -> None:
    """Before: a typo in --data or --split measured synthetic slices instead (and said so in the header only).
    A --split given without --data names a split of the default root, which this machine may not have."""
    monkeypatch.setattr(common, "DEFAULT_DATA_ROOT", tmp_path / "no default root")
    data = {"oasis": fixture_oasis, "absent": tmp_path / "absent", "default": None}[folder]
    with pytest.raises(SystemExit) as exited:
        load_slices(data, split, 2)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and "data folder does not exist" in err


def test_bench_model(
    fixture_oasis: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis)]
    argv += ["--batch-sizes", "2", "--seconds", "0", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    assert bench_model.main(argv) == 0
    text = capsys.readouterr().out
    assert "torch:" in text and "threads" in text
    assert "encode: batch 1" in text and "reconstruct: batch 1" in text and "best batch" in text
    results = json.loads(out.read_text())["results"]
    for op in ("encode", "reconstruct"):
        assert [f["batch_size"] for f in results[op]["sweep"]] == [1, 2]
        assert results[op]["best_images_per_s"] > 0


def test_bench_malloc(
    fixture_oasis: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "malloc.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis), "--rounds", "2", "--calls", "1"]
    assert bench_malloc.main([*argv, "--train", "--json", str(out)]) == 0
    assert "time ratio" in capsys.readouterr().out
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == {"reconstruct b1", "reconstruct b4", "encode b1", "train step"}
    for row in cases.values():
        assert len(row["ratios"]) == 2 and row["defaults_ms"] > 0 and row["retained_ms"] > 0
        assert row["retained_faults"] >= 0


def test_bench_model_without_checkpoint_uses_a_random_model(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--checkpoint", str(tmp_path / "missing.safetensors"), "--random-preset", "tiny"]
    argv += [*data_args(fixture_oasis, 2), "--batch-sizes", "1", "--seconds", "0", "--repeats", "1"]
    assert bench_model.main(argv) == 0
    assert "randomly initialised 'tiny' model" in capsys.readouterr().out


def test_bench_service(
    fixture_oasis: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "service.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis), "--requests", "12"]
    argv += ["--concurrency", "1,3", "--rounds", "2", "--batch-sizes", "2", "--seconds", "0", "--repeats", "1"]
    argv += ["--reference-seconds", "0", "--blocks", "3"]
    argv += ["--overload-queue", "1", "--overload-concurrency", "6", "--overload-requests", "12", "--json", str(out)]
    assert bench_service.main(argv) == 0
    text = capsys.readouterr().out
    for expected in ("in-process reference", "req/s", "p99 ms", "peak MB", "-- overload:", "issue 6 targets"):
        assert expected in text
    assert "server uvicorn --factory;" in text
    figures = json.loads(out.read_text())
    levels = figures["levels"]
    one_round = [("encode", 1), ("encode", 3), ("reconstruct", 1), ("reconstruct", 3)]
    assert [(lv["round"], lv["endpoint"], lv["concurrency"]) for lv in levels] == [
        (r, endpoint, concurrency) for r in (1, 2) for endpoint, concurrency in one_round
    ]
    # blocks of at least 4 x concurrency requests, at most --blocks: 3 at concurrency 1, 1 at concurrency 3
    assert [len(lv["blocks"]) for lv in levels[:2]] == [3, 1]
    blocks = [block for lv in levels for block in lv["blocks"]]
    assert all(b["requests"] == 4 for b in blocks[:3]) and blocks[3]["requests"] == 12
    assert all(b["reference"]["batch1_p50_s"] > 0 and b["reference"]["best_images_per_s"] > 0 for b in blocks)
    assert all(lv["errors"] == 0 and lv["throughput_rps"] > 0 for lv in levels)
    # /proc counts CPU in clock ticks (10 ms): a level of a few requests may show none, all levels together do
    assert all(0 <= lv["server_loop_cpu_s"] <= lv["server_cpu_s"] for lv in levels)
    assert 0 < sum(lv["server_loop_cpu_s"] for lv in levels) < sum(lv["server_cpu_s"] for lv in levels)
    assert "loop ms" in text
    assert all(lv["server_memory_mb"].get("VmHWM", 1) > 0 for lv in levels)
    assert all(0 < lv["server_memory_mb"].get("Pss", 1) <= lv["server_memory_mb"].get("VmRSS", 1) for lv in levels)
    assert figures["overload"]["requests"] == 12 and figures["overload"]["blocks"] == []


@pytest.mark.parametrize(("server", "said"), [(["--workers", "2"], "workers 2"), (["--vqvae-serve"], "workers 1")])
def test_bench_service_under_vqvae_serve(
    fixture_oasis: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server: list[str],
    said: str,
) -> None:
    """--workers 2 runs vqvae-serve's workers, the server's CPU and memory summed over its processes; --vqvae-serve
    runs one worker as deployed (its HTTP protocol and event loop), not a plain uvicorn."""
    out = tmp_path / "service.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis), "--requests", "8", *server]
    argv += ["--concurrency", "2", "--rounds", "1", "--batch-sizes", "1", "--seconds", "0", "--repeats", "1"]
    argv += ["--reference-seconds", "0", "--blocks", "1", "--endpoints", "encode", "--no-overload"]
    assert bench_service.main([*argv, "--json", str(out)]) == 0
    assert f"{said}; server vqvae-serve;" in capsys.readouterr().out
    options = bench_service.server_options(bench_service.build_parser().parse_args(server))
    assert options["cli"] or options["workers"] > 1  # what makes running_server start app.cli, not uvicorn
    (level,) = json.loads(out.read_text())["levels"]
    assert level["errors"] == 0 and level["requests"] == 8


def test_bench_batching(
    fixture_oasis: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two real servers, one batching and one not, take turns in ABBA order; one ratio per round."""
    out = tmp_path / "batching.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis), "--rounds", "4", "--requests", "3"]
    assert bench_batching.main([*argv, "--warmup", "1", "--endpoints", "encode", "--json", str(out)]) == 0
    assert "median" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert [len(figures["p50_s"]["encode"][variant]) for variant in ("batching", "none")] == [4, 4]
    assert figures["median_ratio"]["encode"] > 0
    assert [common.abba(index, bench_batching.VARIANTS) for index in range(4)] == [
        ("batching", "none"),
        ("none", "batching"),
        ("none", "batching"),
        ("batching", "none"),
    ]


def test_bench_ab(
    fixture_oasis: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two real servers of a source tree each (here the same tree, an A/A run) take turns; ratios B / A per round.
    A relative --checkpoint is the same file for both, though each server starts in its own tree."""
    out = tmp_path / "ab.json"
    monkeypatch.chdir(tiny_checkpoint.parent)
    argv = ["--checkpoint", tiny_checkpoint.name, *data_args(fixture_oasis), "--a", str(common.REPO_ROOT)]
    argv += ["--rounds", "2", "--requests", "8", "--concurrency", "1,2", "--endpoints", "encode", "--json", str(out)]
    assert bench_ab.main([*argv, "--b-env", "VQVAE_MAX_BATCH_SIZE=1"]) == 0
    printed = capsys.readouterr().out
    assert "B/A req/s" in printed and "with {'VQVAE_MAX_BATCH_SIZE': '1'}" in printed
    figures = json.loads(out.read_text())
    assert figures["env"] == {"A": {}, "B": {"VQVAE_MAX_BATCH_SIZE": "1"}}
    assert set(figures["blocks"]) == {"encode c1", "encode c2"}
    assert all(len(figures["blocks"]["encode c2"][tree]) == 2 for tree in ("A", "B"))
    assert figures["median_ratio_b_over_a"]["encode c1"]["requests_per_s"] > 0


def test_bench_ab_refuses_a_folder_without_the_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench_ab.main(["--a", str(tmp_path)])
    assert stopped.value.code == 2
    assert "no app/main.py there" in capsys.readouterr().err
    for bad, said in (
        ("no value", "expected NAME=value, got 'no value'"),
        ("1X=3", "expected NAME=value, got '1X=3'"),
        ("PYTHONPATH=/elsewhere", "PYTHONPATH is set by --a and --b"),
    ):
        with pytest.raises(SystemExit):
            bench_ab.main(["--a", str(common.REPO_ROOT), "--b-env", bad])
        assert said in capsys.readouterr().err


def test_bench_ab_says_in_one_line_that_a_server_did_not_start(
    fixture_oasis: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis), "--a", str(common.REPO_ROOT)]
    assert bench_ab.main([*argv, "--a-env", "VQVAE_MAX_BATCH_SIZE=0", "--rounds", "1", "--requests", "64"]) == 1
    last = capsys.readouterr().err.strip().splitlines()
    assert last[0].startswith("error: server exited with code") and "Traceback" not in "\n".join(last)


def test_a_server_runs_the_code_of_its_own_tree(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``running_server(root=...)``: what bench_ab compares; a copy of the service's code with another title."""
    tree = tmp_path / "tree"
    for package in ("app", "models", "training"):
        shutil.copytree(common.REPO_ROOT / package, tree / package, ignore=shutil.ignore_patterns("*.safetensors"))
    main = tree / "app" / "main.py"
    main.write_text(main.read_text().replace('TITLE = "Brain-MRI VQ-VAE"', 'TITLE = "the other tree"'))
    env = {"VQVAE_CHECKPOINT": str(tiny_checkpoint)}
    for root, title in ((tree, "the other tree"), (common.REPO_ROOT, "Brain-MRI VQ-VAE")):
        with running_server(env, tmp_path, log_level="warning", startup_timeout_s=60, root=root) as server:
            assert httpx.get(f"{server.base_url}/openapi.json").json()["info"]["title"] == title


@pytest.mark.parametrize("script", [bench_service, bench_batching, bench_ab])
def test_an_unknown_endpoint_is_refused_before_anything_starts(script: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        script.main(["--endpoints", "encode,decode"])
    assert stopped.value.code == 2
    assert "unknown endpoints ['decode']" in capsys.readouterr().err


def test_proc_cpu_counts_the_main_thread_apart() -> None:
    """A process whose main thread sleeps while another thread spins: its CPU is nearly all the other thread's."""
    spin = "import threading, time\ndef spin():\n    end = time.thread_time() + 0.6\n"
    spin += "    while time.thread_time() < end: pass"
    script = f"{spin}\nworker = threading.Thread(target=spin); worker.start(); worker.join(); print('spun', flush=True)"
    process = subprocess.Popen([sys.executable, "-c", f"{script}\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "spun"
        total, main_thread = bench_service.server_cpu_s(process.pid)
        assert total >= 0.6
        assert main_thread < total - 0.5  # the interpreter's start-up only
    finally:
        process.kill()
        process.wait()


def test_process_tree_sums_a_process_and_its_children() -> None:
    child = "import time; print('ready', flush=True); time.sleep(60)"  # says so once it has started
    script = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        tree = bench_service.process_tree(parent.pid)
        assert len(tree) == 2 and tree[0] == parent.pid
        child_rss = bench_service.proc_memory_mb(tree[1])["VmRSS"]  # a leaf: its own RSS
        own_rss = next(  # the parent's own, from /proc
            int(line.split()[1]) / 1024.0
            for line in Path(f"/proc/{parent.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        summed = bench_service.proc_memory_mb(parent.pid)["VmRSS"]
        assert summed == pytest.approx(own_rss + child_rss, rel=0.1)  # a process may grow between the reads
        assert summed > 1.3 * max(own_rss, child_rss)
        # Both run the same Python binary and libraries: PSS splits those pages, RSS counts them in each process.
        pss = bench_service.proc_memory_mb(parent.pid).get("Pss")
        if pss is None:
            pytest.skip("this kernel has no /proc/<pid>/smaps_rollup (Linux < 4.14): no PSS to check")
        assert 0 < pss < 0.95 * summed
    finally:
        for pid in reversed(bench_service.process_tree(parent.pid)):
            os.kill(pid, signal.SIGKILL)
        parent.wait()


def test_bench_train(fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.json"
    argv = ["--preset", "tiny", "--batch-size", "2", *data_args(fixture_oasis), "--steps", "1", "--rounds", "2"]
    argv += ["--round-seconds", "0", "--warmup", "1", "--no-cuda", "--matmul-seconds", "0", "--json", str(out)]
    assert bench_train.main(argv) == 0
    text = capsys.readouterr().out
    assert "cpu baseline" in text and "images/s" in text and "pixels/s" in text and "vs baseline" in text
    variants = json.loads(out.read_text())["variants"]
    names = [v["name"].split(":")[0] for v in variants]
    assert names[:2] == ["cpu baseline", "cpu vqvae-train default"]
    assert (variants[0]["precision"], variants[0]["channels_last"], variants[0]["crop"]) == ("fp32", False, 64)
    assert (variants[1]["channels_last"], variants[1]["crop"]) == (True, 128)
    bf16_default = device.cpu_prefers_bf16()  # auto: bf16 on CPUs where it pays, fp32 on others
    assert variants[1]["precision"] == ("bfloat16" if bf16_default else "fp32")
    other = "fp32" if bf16_default else "bf16"
    assert names[2:] == [f"cpu default in {other}"]
    assert variants[2]["precision"] == ("fp32" if bf16_default else "bfloat16")
    assert all(v["images_per_s"] > 0 and v["pixels_per_s"] > 0 for v in variants)
    assert all(len(v["round_step_seconds"]) == 2 and v["steps"] >= 2 for v in variants)
    assert "faults/step" in text and all(v["minor_faults_per_step"] >= 0 for v in variants)
    assert text.count("pixels/s by round: ") == len(variants) - 1
    # The same convolutions per pixel in every variant, whatever its crop, layout or precision.
    per_pixel = [v["gflop_per_step"] / (v["batch_size"] * v["crop"] ** 2) for v in variants]
    assert per_pixel[0] > 0 and per_pixel == pytest.approx([per_pixel[0]] * len(variants), rel=1e-9)
    assert all(v["gflop_per_s"] > 0 and v["matmul_gflop_per_s"] > 0 for v in variants)
    assert "GFLOP/s" in text and "% mm" in text and text.count("matmul rate it would do") == len(variants) - 1


def test_bench_time_to_quality(fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ttq.json"
    argv = ["--data", str(fixture_oasis), "--preset", "tiny", "--device", "cpu", "--arms", "4x32,8x0"]
    argv += ["--seconds", "1e-6", "--calibration-steps", "1", "--calibration-warmup", "0", "--max-val-images", "4"]
    assert bench_time_to_quality.main([*argv, "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test SSIM mean / median / p5" in text
    assert text.count("warning: one epoch takes about") == 2  # a budget of 1e-6 s: each arm trains one epoch anyway
    arms = json.loads(out.read_text())["arms"]
    assert [(a["batch_size"], a["crop"]) for a in arms] == [(4, 32), (8, 64)]  # crop 0: the 64x64 fixture slices
    # A budget shorter than one epoch still trains one whole epoch (24 training slices), with its schedule.
    assert [(a["epochs"], a["steps"]) for a in arms] == [(1, 6), (1, 3)]
    assert [a["megapixels_seen"] for a in arms] == pytest.approx([6 * 4 * 32**2 / 1e6, 3 * 8 * 64**2 / 1e6])
    for arm in arms:
        assert arm["eval"]["images"] == 8 and -1 <= arm["eval"]["ssim"]["mean"] <= 1
        assert arm["train_seconds"] > 0 and arm["wall_seconds"] >= arm["train_seconds"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["batch4_crop32", "batch8_crop0"]


def test_bench_time_to_quality_calibration_stops_at_a_quarter_of_the_budget(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = []
    real_step = train.Trainer.loop_step

    def counted(self: train.Trainer) -> tuple[float, float, float, float]:
        steps.append(1)
        return real_step(self)

    monkeypatch.setattr(train.Trainer, "loop_step", counted)
    config = TrainConfig(data=fixture_oasis, out=tmp_path, preset="tiny", batch_size=2, crop=32, device="cpu")
    seconds, steps_per_epoch = bench_time_to_quality.seconds_per_step(config, 100, 100, budget=1e-6)
    assert len(steps) == 2 and seconds > 0 and steps_per_epoch == 12  # one warm-up step, one timed; 24 slices / 2
    steps.clear()
    bench_time_to_quality.seconds_per_step(config, 2, 3, budget=1e6)
    assert len(steps) == 5  # a large budget: the counts asked for


def test_bench_time_to_quality_without_training_data_is_a_clear_error(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "oasis"
    (data / "keras_png_slices_test").mkdir(parents=True)
    for png in (fixture_oasis / "keras_png_slices_test").iterdir():
        (data / "keras_png_slices_test" / png.name).write_bytes(png.read_bytes())
    assert bench_time_to_quality.main(["--data", str(data), "--preset", "tiny", "--device", "cpu"]) == 2
    assert "keras_png_slices_train" in capsys.readouterr().err
    assert bench_time_to_quality.main(["--data", str(tmp_path / "absent"), "--device", "cpu"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [("--arms", text, "BATCHxCROP") for text in ["16", "16x", "x128", "ax3", "0x128", "16x-1", ","]]
    + [("--seconds", text, "seconds") for text in ["0", "-1", "nan", "inf", "soon"]]
    + [("--arms", "16x3", "at least 11")]  # a crop TrainConfig refuses, once the arm starts
    + [("--calibration-warmup", "-1", "0 or more"), ("--threads", "-1", "0 or more")]
    + [("--seed", text, "from 0 to 4294967295") for text in ["-1", str(2**32)]]
    + [("--out", "/dev/null", "/dev/null is not a folder"), ("--out", "/dev/null/runs", "/dev/null is not a folder")],
)
def test_bench_time_to_quality_refuses_a_malformed_option(
    flag: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench_time_to_quality.build_parser().parse_args([flag, text])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_bench_validation(
    fixture_oasis: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "validation.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis), "--rounds", "2", "--json", str(out)]
    assert bench_validation.main(argv) == 0
    text = capsys.readouterr().out
    assert "scikit-image  median" in text and "torch         median" in text and "mean SSIM differs by" in text
    figures = json.loads(out.read_text())
    assert figures["slices"] == 4 and figures["speedup"] > 0
    assert {name: len(rounds) for name, rounds in figures["round_seconds"].items()} == {"scikit-image": 2, "torch": 2}


def test_bench_validation_reads_the_default_data_without_data_flags(
    fixture_oasis: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common, "DEFAULT_DATA_ROOT", fixture_oasis)
    assert bench_validation.main(["--checkpoint", str(tiny_checkpoint), "--images", "2", "--rounds", "1"]) == 0
    assert "mean SSIM differs by" in capsys.readouterr().out


def test_bench_validation_without_data_is_a_clear_error(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_validation.main(["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "absent" in err and "Traceback" not in err


def test_minor_faults_count_memory_mapped_in_afresh() -> None:
    """The faults/step column's counter: touching fresh anonymous pages faults each one in."""
    size, page = 32 * 1024 * 1024, mmap.PAGESIZE
    with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE) as block:  # private anonymous memory, as malloc's
        with contextlib.suppress(AttributeError, OSError):  # a kernel without huge pages has nothing to turn off
            block.madvise(mmap.MADV_NOHUGEPAGE)  # one fault per page, not one per 2 MiB huge page
        before = bench_train.minor_faults()
        for offset in range(0, size, page):
            block[offset] = 1
        faults = bench_train.minor_faults() - before
    assert size // page <= faults < 2 * size // page


def test_bench_threads(
    fixture_oasis: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "threads.json"
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis, 2), "--rounds", "1"]
    argv += ["--repeats", "1", "--seconds", "0", "--json", str(out)]
    assert bench_threads.main(argv) == 0
    text = capsys.readouterr().out
    assert "one thread (the service)" in text and "loaded on the main thread" in text and "vs one" in text
    rounds = json.loads(out.read_text())["rounds_batch1_p50_s"]
    assert sorted(rounds) == sorted(bench_threads.VARIANTS)
    assert all(len(r) == 1 and r[0]["encode"] > 0 and r[0]["reconstruct"] > 0 for r in rounds.values())


def test_bench_app(fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "app.json"
    argv = [*data_args(fixture_oasis, 2), "--requests", "2", "--rounds", "1", "--json", str(out)]
    assert bench_app.main(argv) == 0
    text = capsys.readouterr().out
    assert "images on the event loop (default)" in text and "/reconstruct" in text and "round trip" in text
    figures = json.loads(out.read_text())
    assert sorted(figures["rounds_per_request_s"]) == sorted(bench_app.VARIANTS)
    for routes in figures["rounds_per_request_s"].values():
        assert all(len(rounds) == 1 and rounds[0] > 0 for rounds in routes.values())
    assert figures["thread_round_trip_s"][0] > 0


def test_bench_image_size(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sizes.json"
    argv = ["--checkpoint", str(tiny_checkpoint), "--sides", "16,32", "--repeats", "2", "--json", str(out)]
    assert bench_image_size.main(argv) == 0
    assert "32x32    reconstruct" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [(r["side"], r["operation"]) for r in results] == [
        (16, "encode"),
        (16, "reconstruct"),
        (32, "encode"),
        (32, "reconstruct"),
    ]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0 for r in results)


# ---- bad arguments: one line and exit 2, before anything is measured ----------------------------------------
CHECKPOINT_SCRIPTS = [bench_model, bench_malloc, bench_batching, bench_service, bench_threads, bench_validation]
JSON_SCRIPTS = [*CHECKPOINT_SCRIPTS, bench_app, bench_train, bench_time_to_quality]


def refusal(script: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``script`` printed on stderr when it refused ``argv`` with status 2 (not a Python exception)."""
    with pytest.raises(SystemExit) as stopped:
        script.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--workers", "100000"], f"argument --workers: at most {max_torch_threads()} "),
        (["--server-log-level", "loud"], "argument --server-log-level: invalid choice: 'loud'"),
    ],
)
def test_bench_service_refuses_server_options_before_measuring(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's cases: refused only once the server started, after minutes of in-process reference, with a
    pydantic error of four lines or vqvae-serve's usage block."""
    assert said in refusal(bench_service, argv, capsys).strip().splitlines()[-1]


def test_bench_service_names_an_invalid_server_setting_in_one_line(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As vqvae-serve names it: the variable and its value. Before: pydantic's block of several lines."""
    assert bench_service.main(["--checkpoint", str(tiny_checkpoint), "--server-env", "VQVAE_MAX_PIXELS=abc"]) == 2
    assert capsys.readouterr().err == (
        "error: invalid server settings: VQVAE_MAX_PIXELS: Input should be a valid integer, unable to parse string "
        "as an integer (got 'abc')\n"
    )


def bad_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / "bad.safetensors"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "folder":
        path.mkdir()
    else:  # a readable header whose config the tensors do not fit: only loading the tensors finds it out
        header = {"format_version": 1, "config": PRESETS["tiny"].to_dict()}
        save_file({"weight": torch.zeros(2)}, str(path), metadata={METADATA_KEY: json.dumps(header)})
    return path


@pytest.mark.parametrize("kind", ["text", "folder", "mismatched"])
@pytest.mark.parametrize("script", CHECKPOINT_SCRIPTS)
def test_a_bad_checkpoint_is_refused_in_one_line(
    script: Any, kind: str, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = bad_checkpoint(kind, tmp_path)
    err = refusal(script, ["--checkpoint", str(checkpoint), *data_args(fixture_oasis, 1)], capsys)
    assert err.startswith(f"error: {checkpoint}: ") and err.count("\n") == 1


@pytest.mark.parametrize("where", ["a folder", "under a file"])
@pytest.mark.parametrize("script", JSON_SCRIPTS)
def test_an_unwritable_json_path_is_refused_up_front(
    script: Any, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    path, problem = (
        (tmp_path, f"{tmp_path} is a folder") if where == "a folder" else (tmp_path / "file" / "x.json", "not a folder")
    )
    err = refusal(script, ["--json", str(path)], capsys)
    assert f"error: argument --json: cannot write to {path}" in err and problem in err


def test_a_device_node_as_json_is_refused(
    fixture_oasis: Path, tiny_checkpoint: Path, device_node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, as root: the script measured, said ``figures written to`` the device node (``/dev/null``), exit 0,
    and the figures went nowhere. ``write_json`` refuses one too, should it appear after the arguments were read."""
    argv = ["--checkpoint", str(tiny_checkpoint), *data_args(fixture_oasis, 1), *QUICK_MODEL]
    err = refusal(bench_model, [*argv, "--json", str(device_node)], capsys)
    assert f"cannot write to {device_node}: {device_node} is not a regular file" in err
    with pytest.raises(SystemExit) as stopped:
        write_json(device_node, {"figures": 1})
    assert stopped.value.code == 1 and f"{device_node} is not a regular file" in capsys.readouterr().err
    assert stat.S_ISCHR(device_node.stat().st_mode)


@pytest.mark.parametrize(("script", "options"), [(bench_model, QUICK_MODEL), (bench_validation, ["--rounds", "1"])])
def test_json_among_the_slices_read_is_refused_up_front(
    script: Any,
    options: list[str],
    fixture_oasis: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: ``bench_model --data D --split S --json D/S/a.png`` measured, then wrote its JSON over the slice."""
    victim = shutil.copytree(fixture_oasis / "keras_png_slices_test", tmp_path / "victim")
    before = {path: path.read_bytes() for path in victim.iterdir()}
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--split", "victim", "--images", "1"]
    for target in (min(before), victim / "new.json"):
        err = refusal(script, [*argv, *options, "--json", str(target)], capsys)
        assert (
            err == f"error: {target} is in {victim}, which this command reads: --json would replace a slice or "
            "be mixed into the data; choose another\n"
        )
    assert {path: path.read_bytes() for path in victim.iterdir()} == before


@pytest.mark.parametrize(("flag", "folder"), [("--out", "keras_png_slices_train"), ("--json", "keras_png_slices_test")])
def test_bench_time_to_quality_refuses_outputs_among_the_slices_it_reads(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, folder: str
) -> None:
    """Before: its runs trained into a sub-folder of the training split, or its JSON went into the scored one."""
    data = shutil.copytree(fixture_oasis, tmp_path / "oasis")
    before = sorted((data / folder).iterdir())
    target = data / folder if flag == "--out" else data / folder / "runs.json"  # a folder of runs, or a file
    argv = ["--data", str(data), "--preset", "tiny", "--device", "cpu", "--arms", "4x32", "--seconds", "0.1"]
    argv += ["--calibration-steps", "1", "--calibration-warmup", "0", "--max-val-images", "2"]
    err = refusal(bench_time_to_quality, [*argv, flag, str(target)], capsys)
    inside = f"is in {data / folder}, which this command reads:"
    named = "is read by this command:" if target == data / folder else inside
    assert err.startswith(f"error: {target} {named} {flag} would"), err
    assert sorted((data / folder).iterdir()) == before


def test_write_json_writes_a_figure_never_measured_as_null(tmp_path: Path) -> None:
    """A rate over no time or a percentile of no requests is NaN in Python, which JSON has not (jq refused it)."""
    path = tmp_path / "figures.json"
    write_json(path, {"rate": float("nan"), "by_round": [1.5, float("inf")], "p": {"p99": -float("inf")}, "at": path})
    assert read_strict_json(path) == {
        "rate": None,
        "by_round": [1.5, None],
        "p": {"p99": None},
        "at": str(path),
    }


def test_write_json_fails_in_one_line_where_the_file_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        write_json(tmp_path, {"figures": 1})  # the folder appeared after the arguments were checked
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and err.startswith(f"error: cannot write the figures to {tmp_path}: ")


SECONDS = ["inf", "nan", "-1"]


@pytest.mark.parametrize(
    ("script", "flag", "text", "message"),
    [
        (s, "--threads", t, f"from 0 to {max_torch_threads()}")
        for s in [*CHECKPOINT_SCRIPTS, bench_app, bench_train]
        for t in ["-1", "100000"]  # a review's: 100000 threads ended in a segfault, 10000 in a traceback
    ]
    + [(bench_model, "--seconds", t, "a finite number of seconds 0 or more") for t in SECONDS]
    + [(bench_model, "--repeats", "0", "at least 1"), (bench_model, "--warmup", "-1", "0 or more")]
    + [(bench_threads, "--seconds", t, "a finite number of seconds 0 or more") for t in SECONDS]
    + [(bench_batching, "--warmup", "-1", "0 or more")]
    + [(bench_train, "--batch-size", t, f"from 1 to {MAX_BATCH_SIZE}") for t in ["0", "-4", "2000"]]
    + [(bench_train, "--warmup", "-1", "0 or more")]
    + [
        (bench_train, f, t, "a finite number of seconds 0 or more")
        for f in ["--round-seconds", "--matmul-seconds"]
        for t in SECONDS
    ]
    + [
        (bench_service, f, t, "a finite number of seconds 0 or more")
        for f in ["--seconds", "--reference-seconds"]
        for t in SECONDS
    ]
    + [
        (bench_service, f, t, "a finite number of seconds above 0")
        for f in ["--timeout", "--startup-timeout"]
        for t in [*SECONDS, "0"]
    ]
    + [
        (bench_service, f, "0", "at least 1")
        for f in ["--requests", "--repeats", "--overload-queue", "--overload-concurrency", "--overload-requests"]
    ],
)
def test_a_bad_number_is_refused_by_the_parser(
    script: Any, flag: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal(script, [flag, text], capsys)
    assert f"error: argument {flag}: must be {message}, got " in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint", "{tmp}/text.safetensors"], "error: {tmp}/text.safetensors: not a readable safetensors"),
        (["--json", "{tmp}"], "error: argument --json: cannot write to {tmp}: {tmp} is a folder"),
        (["--seconds", "inf"], "error: argument --seconds: must be a finite number of seconds 0 or more"),
        (["--split", "tset"], "/tset: data folder does not exist"),
    ],
)
def test_bench_model_refuses_bad_arguments_without_a_traceback(
    argv: list[str], message: str, tmp_path: Path, fixture_oasis: Path
) -> None:
    """As the reviewer ran it: ``python -m benchmarks.bench_model ...`` ends with one line on stderr and status 2."""
    (tmp_path / "text.safetensors").write_text("not a checkpoint\n")
    argv = data_args(fixture_oasis, images=1) + [arg.format(tmp=tmp_path) for arg in argv]  # the last flag wins
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_model", *argv],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message.format(tmp=tmp_path) in done.stderr.strip().splitlines()[-1]  # the last line says why
