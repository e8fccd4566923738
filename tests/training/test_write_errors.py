"""A write that fails (a full disk; here a file size limit, ``RLIMIT_FSIZE``, which fails writes the same way for
any user) ends a command with a one-line error naming the file, leaves no partial file, and never leaves a resume
state whose weights and optimizer come from different steps. Before: an ``OSError`` traceback, the partial file
kept (filling the disk further), and a new ``last.safetensors`` beside an old ``last.pt``."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from models import files
from models.files import WriteError, write_atomically, write_together
from training import outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--batch-size", "4", "--crop", "32", "--warmup-steps", "2", "--no-progress"]


def _run_with_file_size_limit(module: str, args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    """``module``'s ``main(args)`` in a fresh interpreter whose files cannot grow past ``limit`` bytes."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # else the kernel kills the process at the limit
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        f"from {module} import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)


def _fails_with(path: Path) -> object:
    def write(partial: Path) -> None:
        partial.write_bytes(b"half of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(WriteError, match=rf"^cannot write {target}: No space left on device$"):
        write_atomically(target, _fails_with(target))  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_files_written_together_are_replaced_together(tmp_path: Path) -> None:
    weights, state = tmp_path / "last.safetensors", tmp_path / "last.pt"
    weights.write_text("weights 1")
    state.write_text("state 1")
    with pytest.raises(WriteError, match=f"cannot write {state}"):
        write_together({weights: lambda p: p.write_text("weights 2"), state: _fails_with(state)})  # type: ignore[dict-item]
    assert (weights.read_text(), state.read_text()) == ("weights 1", "state 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.safetensors"]
    write_together({weights: lambda p: p.write_text("weights 2"), state: lambda p: p.write_text("state 2")})
    assert (weights.read_text(), state.read_text()) == ("weights 2", "state 2")


def test_a_file_written_through_a_symbolic_link_keeps_the_link(tmp_path: Path) -> None:
    """Replacing a file by renaming would otherwise replace the link itself with a plain file."""
    (tmp_path / "run42.json").write_text("old")
    (tmp_path / "latest.json").symlink_to("run42.json")
    write_atomically(tmp_path / "latest.json", lambda partial: partial.write_text("new"))
    assert (tmp_path / "latest.json").is_symlink() and (tmp_path / "run42.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "run42.json"]


def test_a_target_that_is_no_regular_file_is_refused_and_kept(device_node: Path, tmp_path: Path) -> None:
    """Before, as root: the partial file was renamed over a device node (``/dev/null``), which became a plain file.
    Through a symbolic link too, which writers follow."""
    link = tmp_path / "link.json"
    link.symlink_to(device_node)
    for target in (device_node, link):
        with pytest.raises(WriteError, match=f"cannot write {target}: {target} is not a regular file"):
            write_atomically(target, lambda partial: partial.write_text("{}"))
    assert stat.S_ISCHR(device_node.stat().st_mode) and link.is_symlink()
    assert sorted(tmp_path.iterdir()) == [device_node, link]  # no partial file left


def test_two_processes_writing_one_file_do_not_take_each_others_partial_file(tmp_path: Path) -> None:
    """``vqvae-eval --record`` on the ``best.safetensors`` of a run still training. Before, both wrote
    ``NAME.partial``: the second removed the first's half-written file and renamed its own into place, and the
    first's rename then failed (or, a moment later, renamed the second's half-written file into place). The other
    writer here runs as in another container: another host name, and the same pid (each container's main process
    is pid 1), so that a name made of the pid alone would be shared too."""
    target = tmp_path / "best.safetensors"
    other = (
        "import os\nfrom pathlib import Path\nfrom models import files\n"
        f"files._HOST, os.getpid = 'another-container', lambda: {os.getpid()}\n"
        f"files.write_atomically(Path({str(target)!r}), lambda partial: partial.write_text('other'))\n"
    )

    def write_with_another_writer_in_between(partial: Path) -> None:
        with partial.open("w") as file:
            file.write("ours, first half; ")
            file.flush()
            subprocess.run([sys.executable, "-c", other], cwd=REPO_ROOT, check=True, timeout=120)
            assert target.read_text() == "other"
            file.write("second half")

    write_atomically(target, write_with_another_writer_in_between)
    assert target.read_text() == "ours, first half; second half"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]


def test_partial_files_that_no_running_process_will_finish_are_removed(tmp_path: Path) -> None:
    """What a save cut off by a kill leaves is removed by the next write of the same file, so that such files do not
    pile up; a partial file of a process that still runs is kept, since it may still be renamed into place, and so is
    another host's (or container's), whose writer cannot be seen from here."""
    target = tmp_path / "report.json"
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as running:
        try:
            names = {
                "ended": f"report.json.{files._HOST}.{ended}.0a1b.partial",
                "this process's": f"report.json.{files._HOST}.{os.getpid()}.0a1b.partial",
                "running": f"report.json.{files._HOST}.{running.pid}.0a1b.partial",
                "another host's": f"report.json.another-host.{ended}.0a1b.partial",
                "earlier versions'": "report.json.partial",
                "another file's": f"other.json.{files._HOST}.{ended}.0a1b.partial",
            }
            for name in names.values():
                (tmp_path / name).write_text("cut off")
            write_atomically(target, lambda partial: partial.write_text("new"))
        finally:
            running.kill()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["report.json", names["running"], names["another host's"], names["another file's"]])
    assert target.read_text() == "new"


def test_training_on_a_full_disk_stops_with_a_one_line_error(fixture_oasis: Path, tmp_path: Path) -> None:
    """The tiny model's checkpoint (about 64 KB) fits under the limit; its optimizer state (about twice that) not."""
    out = tmp_path / "run"
    args = ["--data", str(fixture_oasis), "--out", str(out), "--epochs", "2", *TINY]
    done = _run_with_file_size_limit("training.train", args, 100_000)
    assert done.returncode == 1, done.stderr
    assert f"error: cannot write {out / 'last.pt'}: File too large" in done.stderr
    assert "nothing to resume" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors"]  # no partial; no half of a resume state


def test_evaluation_on_a_full_disk_stops_with_a_one_line_error(fixture_oasis: Path, tmp_path: Path) -> None:
    checkpoint = REPO_ROOT / "models" / "weights" / "vqvae.safetensors"
    report = tmp_path / "report.json"
    args = ["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), "--split", "test", "--out", str(report)]
    done = _run_with_file_size_limit("training.evaluate", args, 1_000)  # a report of 8 images is larger
    assert done.returncode == 1, done.stderr
    assert f"error: cannot write {report}: File too large" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_standard_output_that_cannot_be_written_is_a_one_line_error(fixture_oasis: Path, tmp_path: Path) -> None:
    """``vqvae-eval > /dev/full``: the table's print fails with ENOSPC. Before: an ``OSError`` traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    checkpoint = REPO_ROOT / "models" / "weights" / "vqvae.safetensors"
    report = tmp_path / "report.json"
    args = ["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), "--out", str(report)]
    with open("/dev/full", "w") as full:
        command = [sys.executable, "-m", "training.evaluate", *args]
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cannot write the standard output: No space left on device"
    assert report.is_file()  # written before the table was printed


def test_a_standard_output_error_keeps_its_errno() -> None:
    """Callers may tell a full disk (ENOSPC) from other failures; before, only the text was kept."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full, pytest.raises(outputs.StdoutError) as caught:
        guarded = outputs._StdoutGuard(full)
        guarded.write("x" * 10_000)  # past the buffer: written at once
        guarded.flush()
    assert caught.value.errno == errno.ENOSPC and caught.value.strerror == "No space left on device"
