"""The console commands on real files: a short real training, its outputs, evaluation, resume and Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from models import files
from models.checkpoint import load, read_metadata, recorded, save
from models.jpeg_markers import MAX_SCANS
from tests.conftest import add_to_metadata, crafted_jpegs, write_slices
from training import evaluate, train
from training.config import MAY_CHANGE_ON_RESUME, TrainConfig
from training.data import DEFAULT_DATA_ROOT

TINY = ["--preset", "tiny", "--batch-size", "4", "--crop", "32", "--warmup-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def trained(fixture_oasis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert train.main(["--data", str(fixture_oasis), "--out", str(out), "--epochs", "2", *TINY]) == 0
    return out


def test_training_writes_checkpoint_log_and_figures(trained: Path) -> None:
    model, metadata = load(trained / "best.safetensors")
    assert model.config.codebook_size == 32
    assert metadata["data"]["train"]["images"] == 24 and metadata["data"]["validate"]["images"] == 8
    assert metadata["training"]["steps"] in (6, 12) and metadata["git_commit"]
    assert 0.0 < metadata["metrics"]["validate"]["ssim"]["mean"] <= 1.0
    history = json.loads((trained / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"loss", "recon_loss", "vq_loss", "val_ssim"} <= set(history[0])
    assert (trained / "history.csv").read_text().startswith("epoch,")
    for figure in ("loss_curves.png", "reconstructions_validate.png"):
        with Image.open(trained / figure) as image:
            image.verify()
            assert image.format == "PNG"


def test_resume_with_fewer_epochs_than_the_run_has_finished_is_refused(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's case: --epochs 1 on a run of 2 said the cosine decay "now ends with epoch 1", then "done", exit 0,
    having trained nothing."""
    run = tmp_path / "resume"
    _copy_run(trained, run, ("last.safetensors", "last.pt", "best.safetensors", "history.json"))
    done = json.loads((run / "history.json").read_text())[-1]["epoch"]
    args = ["--data", str(fixture_oasis), "--out", str(run), "--epochs", str(done - 1), "--resume", *TINY]
    _refused(
        train.main(args),
        capsys,
        f"error: {run}: the run has finished {done} epochs, more than --epochs {done - 1}; resume with the run's "
        f"--epochs {done}, or more than {done} to train further",
    )


def test_resume_with_as_many_epochs_as_finished_says_none_are_left(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped after 2 of its 5 epochs, resumed with --epochs 2: before, a note that the cosine decay now ends
    there "so the steps left run at other rates", and "done", with no step left (a review)."""
    run = tmp_path / "resume"
    _copy_run(trained, run, ("last.pt", "best.safetensors", "history.json"))
    training = read_metadata(trained / "last.safetensors")["training"]
    training["config"]["epochs"] = 5  # as if the run had been started with --epochs 5 (the later key is read)
    add_to_metadata(trained / "last.safetensors", run / "last.safetensors", f'"training": {json.dumps(training)}')
    done = training["epochs"]
    assert train.main(["--data", str(fixture_oasis), "--out", str(run), "--epochs", str(done), "--resume", *TINY]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: the run has finished {done} epochs: --epochs {done} leaves none to train (the run's: 5)"]


def test_resume_continues_from_last_state(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "resume"
    run.mkdir()
    for name in ("last.safetensors", "last.pt", "best.safetensors", "history.json"):
        (run / name).write_bytes((trained / name).read_bytes())
    steps = json.loads((trained / "history.json").read_text())[-1]["step"]
    args = ["--data", str(fixture_oasis), "--out", str(run), "--epochs", "3", "--resume", *TINY]
    how = ["--device", "cpu", "--precision", "fp32", "--no-channels-last", "--malloc-retain-mb", "0"]  # may change
    capsys.readouterr()
    assert train.main([*args, *how]) == 0
    printed = capsys.readouterr()
    assert f"resumed from {run} after epoch 2, step {steps}" in printed.out  # not a fresh run of 3
    assert "note: --epochs 2 -> 3: the learning rate's cosine decay now ends with epoch 3" in printed.err
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert read_metadata(run / "last.safetensors")["training"]["epochs"] == 3


def test_a_removed_best_checkpoint_is_written_again_on_resume(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the best score kept in last.pt stood, so no later epoch beat it, no best.safetensors was written, and
    the run ended with "no epoch produced a finite validation SSIM"."""
    run = tmp_path / "resume"
    run.mkdir()
    for name in ("last.safetensors", "last.pt", "history.json"):  # best.safetensors lost
        (run / name).write_bytes((trained / name).read_bytes())
    args = ["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY]
    capsys.readouterr()
    assert train.main([*args, "--epochs", "2"]) == 1  # nothing left to run: said as it is
    assert "best.safetensors is missing and no epoch since gave a finite validation SSIM" in capsys.readouterr().err
    assert train.main([*args, "--epochs", "3"]) == 0
    assert "best.safetensors is missing; the next validated epoch writes it again" in capsys.readouterr().err
    assert (run / "best.safetensors").is_file()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--batch-size", "8"], "--batch-size 4 -> 8"),
        (["--lr", "0.01", "--seed", "3"], "--lr 0.002 -> 0.01; --seed 0 -> 3"),
        (["--crop", "0", "--ssim-weight", "0.5"], "--crop 32 -> 0; --ssim-weight 0.84 -> 0.5"),
        (["--max-val-images", "4", "--warmup-steps", "0"], "--warmup-steps 2 -> 0; --max-val-images 256 -> 4"),
        (["--train-split", "test", "--max-train-images", "5"], "--train-split 'train' -> 'test'; --max-train-images"),
        (["--preset", "grid64"], "--preset 'tiny' -> 'grid64'"),
    ],
)
def test_resume_refuses_other_training_settings_before_the_data_loads(
    trained: Path,
    fixture_oasis: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    said: str,
) -> None:
    """Before: taken silently (provenance recorded only the new ones), and the rest of the run trained otherwise."""
    run = tmp_path / "run"
    _copy_run(trained, run, ("best.safetensors", "last.safetensors", "last.pt", "history.json"))
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    monkeypatch.setattr(train, "load_split", lambda *args: pytest.fail("the data loaded"))
    args = ["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY, *flags]
    _refused(train.main(args), capsys, f"{run}: --resume with settings other than the run's: {said}", "--overwrite")
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_changes_from_compares_what_the_saved_run_recorded_and_may_not_change() -> None:
    saved = {"lr": 0.1, "epochs": 5, "device": "cuda", "out": "elsewhere", "a_setting_of_the_future": 1}
    assert TrainConfig().changes_from(saved) == ["--lr 0.1 -> 0.002"]  # the rest may change, or is not recorded
    here = Path.cwd()
    same_folder = {"data": os.path.relpath(DEFAULT_DATA_ROOT, here)}  # relative, where the default is absolute
    assert TrainConfig().changes_from(same_folder) == []
    assert TrainConfig().changes_from({"data": str(here)}) == [f"--data {str(here)!r} -> {str(DEFAULT_DATA_ROOT)!r}"]
    assert {field.name for field in dataclasses.fields(TrainConfig)} >= MAY_CHANGE_ON_RESUME  # no misspelt name


def test_a_run_given_a_relative_data_folder_resumes_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the saved ``--data ../images`` was read against the resuming command's folder, a different one, and
    the resume was refused as a change of data folder (or, there, matched another folder of that name)."""
    images = tmp_path / "project" / "images"
    (tmp_path / "project" / "code").mkdir(parents=True)
    images.mkdir()
    monkeypatch.chdir(tmp_path / "project" / "code")
    saved = TrainConfig(data=Path("../images")).to_dict()
    assert saved["data"] == str(images.resolve())
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(data=Path("project/images")).changes_from(saved) == []
    assert TrainConfig(data=Path("images")).changes_from(saved) != []  # not the same folder from here


def test_resume_refuses_a_data_folder_that_now_holds_other_images(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same --data with an image added to its training split: the steps per epoch would change. Then as many
    images as the run had, one of them replaced: before, only the counts were compared, and that resumed."""
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(fixture_oasis, data)
    args = ["--data", str(data), "--out", str(run), "--epochs", "1", "--max-val-images", "2", *TINY]
    assert train.main(args) == 0
    first = next((data / "keras_png_slices_train").iterdir())
    shutil.copy(first, first.with_name("added.png"))
    capsys.readouterr()
    _refused(train.main([*args, "--resume"]), capsys, "the run had 24 train images, its data folder now gives 25")
    first.with_name("added.png").unlink()
    files = sorted((data / "keras_png_slices_train").iterdir())
    files[0].write_bytes(files[1].read_bytes())  # as many images as the run had, one of them another's pixels
    capsys.readouterr()
    _refused(train.main([*args, "--resume"]), capsys, "the run's 24 train images are not those its data folder now")


def test_own_split_folders_named_like_the_oasis_splits_are_used(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: --train-split train looked for keras_png_slices_train only; a plain train/ folder needed ./train."""
    data = tmp_path / "mine"
    shutil.copytree(fixture_oasis / "keras_png_slices_train", data / "train")
    shutil.copytree(fixture_oasis / "keras_png_slices_validate", data / "validate")
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY]
    assert train.main([*args, "--train-split", "train", "--val-split", "validate"]) == 0, capsys.readouterr().err
    assert "24 train / 8 validation images" in capsys.readouterr().out


def test_outputs_that_would_overwrite_or_pollute_the_inputs_are_refused(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``vqvae-eval --out`` the checkpoint replaced the weights with the report; ``--figures`` or
    ``vqvae-train --out`` in the image folder added PNG figures that the next run read as images."""
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes((trained / "best.safetensors").read_bytes())
    weights = checkpoint.read_bytes()
    test_split = fixture_oasis / "keras_png_slices_test"
    evaluate_args = ["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), "--limit", "2"]
    capsys.readouterr()
    assert evaluate.main([*evaluate_args, "--out", str(checkpoint)]) == 2
    said = capsys.readouterr().err  # not "X is X, which this command reads" (a review)
    assert f"{checkpoint} is read by this command: the report would replace the weights" in said
    assert checkpoint.read_bytes() == weights
    assert evaluate.main([*evaluate_args, "--figures", str(test_split), "--out", str(tmp_path / "r.json")]) == 2
    assert "its PNG figures would be mixed into the data" in capsys.readouterr().err
    train_split = fixture_oasis / "keras_png_slices_train"
    before = sorted(train_split.iterdir())
    assert train.main(["--data", str(fixture_oasis), "--out", str(train_split), "--epochs", "1", *TINY]) == 2
    said = capsys.readouterr().err
    assert f"{train_split} is read by this command: the run's files would be mixed into the data" in said
    assert sorted(train_split.iterdir()) == before


def test_outputs_among_the_images_read_are_refused(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``vqvae-eval --out victim/case.png`` replaced the slice with the report, exit 0, and ``--out
    victim/new.json`` put a file into the data: only ``--out`` the checkpoint and ``--figures`` the folder itself
    were refused. Paths are compared resolved, so a symbolic link to the folder is no way around it. A folder is read
    without its sub-folders, so outputs in one of those are apart from the data, and allowed (a review of the first
    version of this check, which refused them at any depth)."""
    victim = shutil.copytree(fixture_oasis / "keras_png_slices_test", tmp_path / "victim")
    (tmp_path / "alias").symlink_to(victim)
    before = {path: path.read_bytes() for path in victim.iterdir()}
    a_slice = min(before)
    evaluate_args = ["--checkpoint", str(trained / "best.safetensors"), "--data", str(victim), "--split", ""]
    for out in (a_slice, victim / "new.json", tmp_path / "alias" / "new.json"):
        _refused(evaluate.main([*evaluate_args, "--out", str(out)]), capsys, f"{out} is in ", "the report would")
    assert {path: path.read_bytes() for path in victim.iterdir()} == before
    beside = ["--out", str(victim / "results" / "eval.json"), "--figures", str(victim / "figs")]
    assert evaluate.main([*evaluate_args, *beside]) == 0
    assert (victim / "results" / "eval.json").is_file() and (victim / "figs" / "reconstructions.png").is_file()
    assert evaluate.main([*evaluate_args, "--out", str(tmp_path / "again.json")]) == 0  # the same images read
    assert json.loads((tmp_path / "again.json").read_text())["images"] == len(before)


def test_outputs_that_would_replace_each_other_are_refused(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``vqvae-eval --out figs/reconstructions.png --figures figs`` wrote the report, then the figure over
    it, exit 0: the report was lost. A checkpoint where a figure goes would have been replaced by it."""
    figures = tmp_path / "figs"
    base = ["--checkpoint", str(trained / "best.safetensors"), "--data", str(fixture_oasis), "--limit", "1"]
    for name in ("reconstructions.png", "codebook_usage.png"):
        args = [*base, "--out", str(figures / name), "--figures", str(figures)]
        _refused(evaluate.main(args), capsys, f"{figures / name} would be both the report and the figure {name}")
    assert not figures.exists()
    figures.mkdir()
    checkpoint = figures / "reconstructions.png"
    checkpoint.write_bytes((trained / "best.safetensors").read_bytes())
    args = ["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), "--figures", str(figures)]
    _refused(evaluate.main([*args, "--out", str(tmp_path / "r.json")]), capsys, "reconstructions.png would replace")
    assert checkpoint.read_bytes() == (trained / "best.safetensors").read_bytes()


def test_a_device_node_as_an_output_is_refused_before_scoring(
    trained: Path, fixture_oasis: Path, device_node: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, as root: ``vqvae-eval --out`` a device node (``/dev/null``) printed ``report: …``, exit 0, and the
    report was renamed over the node, which became a plain file. Through a symbolic link, or as a figure, too."""
    base = ["--checkpoint", str(trained / "best.safetensors"), "--data", str(fixture_oasis), "--limit", "1"]
    figures = tmp_path / "figs"
    figures.mkdir()
    (figures / "codebook_usage.png").symlink_to(device_node)
    link = tmp_path / "link.json"
    link.symlink_to(device_node)
    for target in (device_node, link):
        _refused(evaluate.main([*base, "--out", str(target)]), capsys, f"{target} is not a regular file")
    args = [*base, "--out", str(tmp_path / "r.json"), "--figures", str(figures)]
    _refused(evaluate.main(args), capsys, f"cannot write the figure codebook_usage.png {figures}/codebook_usage.png: ")
    assert stat.S_ISCHR(device_node.stat().st_mode) and not (tmp_path / "r.json").exists()


def test_a_report_records_its_data_folder_as_an_absolute_path(
    trained: Path, fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rate_distortion compares it with the folder its codecs read: a relative one read from another folder named
    another folder (a review's find)."""
    monkeypatch.chdir(fixture_oasis.parent)
    report = tmp_path / "r.json"
    args = ["--checkpoint", str(trained / "best.safetensors"), "--data", fixture_oasis.name, "--limit", "2"]
    assert evaluate.main([*args, "--out", str(report)]) == 0
    assert json.loads(report.read_text())["data"] == str((fixture_oasis / "keras_png_slices_test").resolve())


def test_validating_on_the_training_folder_is_said(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: accepted without a word, though its validation SSIM then measures fit, not generalisation."""
    args = ["--data", str(fixture_oasis), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY]
    assert train.main([*args, "--train-split", "test", "--val-split", "./keras_png_slices_test"]) == 0
    assert "note: --train-split and --val-split are the same folder" in capsys.readouterr().err
    assert train.main([*args, "--overwrite"]) == 0  # the default splits: no note
    assert "same folder" not in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "keras_png_slices_train: data folder does not exist" in capsys.readouterr().err


def test_a_jpeg_of_more_scans_than_encoders_write_in_the_data_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: trained on, after decoding each of its scans over the whole image (a crafted file stalled the run:
    50,000 scans of a 1024x1024 image took 18 s), where the service refused it."""
    train_split = write_slices(tmp_path / "data" / "keras_png_slices_train", 4, seed=9)
    write_slices(tmp_path / "data" / "keras_png_slices_validate", 2, seed=10)
    (train_split / "x.jpg").write_bytes(crafted_jpegs()["scans"])
    code = train.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY])
    _refused(code, capsys, f"error: {train_split / 'x.jpg'}: the JPEG holds over {MAX_SCANS} scans")
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_a_file_name_that_is_not_utf8_trains_and_is_drawn(fixture_oasis: Path, tmp_path: Path) -> None:
    """Linux allows any bytes in a name. Before, the fingerprint, and then the reconstruction panels' titles, ended
    such a run with a traceback after its first epoch."""
    data = tmp_path / "data"
    shutil.copytree(fixture_oasis, data)
    for split in ("keras_png_slices_train", "keras_png_slices_validate"):
        first = sorted((data / split).iterdir())[0]
        os.rename(bytes(first), os.fsencode(first.parent) + b"/caf\xe9_" + os.fsencode(first.name))
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--max-val-images", "8", *TINY]
    assert train.main(args) == 0
    assert (tmp_path / "run" / "reconstructions_validate.png").is_file()
    figures = tmp_path / "figures"
    run = ["--checkpoint", str(tmp_path / "run" / "best.safetensors"), "--data", str(data), "--split", "validate"]
    assert evaluate.main([*run, "--figures", str(figures), "--out", str(tmp_path / "report.json")]) == 0
    assert (figures / "reconstructions.png").is_file()


def test_resume_in_another_precision_says_so(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Allowed (how fast it runs, like --device), but the run's record would name the last precision alone."""
    args = ["--data", str(fixture_oasis), "--out", str(tmp_path), "--max-val-images", "2", *TINY]
    assert train.main([*args, "--epochs", "1", "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert train.main([*args, "--epochs", "2", "--precision", "bf16", "--resume"]) == 0
    assert "note: the run trained in fp32 so far, and goes on in bfloat16 (--precision bf16)" in capsys.readouterr().err
    # A review's case: the next resume said "trained in fp32 so far", the bf16 epoch forgotten.
    assert train.main([*args, "--epochs", "3", "--precision", "fp32", "--resume"]) == 0
    said = "note: the run trained in fp32, then bfloat16 so far, and goes on in fp32 (--precision fp32)"
    assert said in capsys.readouterr().err
    assert recorded(read_metadata(tmp_path / "last.safetensors"), "training")["precision"] == (
        "fp32, then bfloat16, then fp32"
    )


def test_evaluate_writes_report_and_records_metrics(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes((trained / "best.safetensors").read_bytes())
    report_path = tmp_path / "report.json"
    args = ["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), "--split", "test"]
    assert evaluate.main([*args, "--out", str(report_path), "--figures", str(tmp_path / "fig"), "--record"]) == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 8 and len(report["per_image"]) == 8
    ssims = sorted(row["ssim"] for row in report["per_image"])
    assert report["ssim"]["median"] == pytest.approx((ssims[3] + ssims[4]) / 2)
    assert report["bits_per_slice"] == 16 * 16 * 5 and report["compression_ratio"] == pytest.approx(64 * 64 * 8 / 1280)
    assert 0 < report["codebook_usage"] <= 1
    assert "SSIM mean/med/p5" in capsys.readouterr().out
    assert read_metadata(checkpoint)["metrics"]["test"]["ssim"] == report["ssim"]
    for figure in ("reconstructions.png", "codebook_usage.png"):
        with Image.open(tmp_path / "fig" / figure) as image:
            assert image.format == "PNG"


def test_recorded_metrics_keep_each_folder_apart(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, every plain folder was recorded as ``folder``, each replacing the last, and a researcher's own
    ``test`` sub-folder replaced the OASIS test split's metrics (``/model``'s ``test_metrics``)."""
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes((trained / "best.safetensors").read_bytes())
    site_a, site_b = write_slices(tmp_path / "site-a", 3, seed=40), write_slices(tmp_path / "site-b" / "test", 2, 41)
    runs = [
        ["--data", str(fixture_oasis), "--split", "test"],
        ["--data", str(site_a), "--split", ""],
        ["--data", str(site_b.parent), "--split", "test"],  # no OASIS folder there: the plain test sub-folder
    ]
    for run in runs:
        out = tmp_path / f"report{len(run)}{run[1][-6:].replace('/', '_')}.json"
        assert evaluate.main(["--checkpoint", str(checkpoint), *run, "--out", str(out), "--record"]) == 0
    metrics = read_metadata(checkpoint)["metrics"]
    keys = ["validate", "test", str(site_a.resolve()), str(site_b.resolve())]  # validate: vqvae-train's
    assert sorted(metrics) == sorted(keys)
    assert [metrics[key]["images"] for key in keys[1:]] == [8, 3, 2]
    # The OASIS test folder named directly is still "test"; another copy of OASIS replaces it, with a note.
    copy = write_slices(tmp_path / "copy" / "keras_png_slices_test", 5, seed=42)
    capsys.readouterr()
    for data, split in ((fixture_oasis / "keras_png_slices_test", ""), (copy.parent, "test")):
        run = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", split, "--record"]
        assert evaluate.main([*run, "--out", str(tmp_path / "r.json")]) == 0
    assert sorted(read_metadata(checkpoint)["metrics"]) == sorted(keys)
    assert read_metadata(checkpoint)["metrics"]["test"]["images"] == 5
    out = capsys.readouterr().err
    assert out.count("note: the metrics recorded as 'test' were of") == 1
    assert f"were of {(fixture_oasis / 'keras_png_slices_test').resolve()}; now of {copy.resolve()}" in out


def test_record_replaces_a_metrics_record_of_another_type(trained: Path, fixture_oasis: Path, tmp_path: Path) -> None:
    """A review's case: metrics of ``"oops"`` in the checkpoint ended --record in a ValueError traceback, after the
    report was written. /model takes such a record as absent, and --record now replaces it."""
    checkpoint = add_to_metadata(trained / "best.safetensors", tmp_path / "m.safetensors", '"metrics": "oops"')
    run = ["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), "--split", "test", "--record"]
    assert evaluate.main([*run, "--out", str(tmp_path / "r.json")]) == 0
    assert read_metadata(checkpoint)["metrics"]["test"]["images"] == 8


def test_record_refuses_a_limited_evaluation(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``--limit`` run replaced the whole split's recorded metrics."""
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(trained / "best.safetensors"), "--limit", "2", "--record"])
    assert stopped.value.code == 2
    assert "--record stores the metrics of a whole split" in capsys.readouterr().err


def test_an_invalid_lr_is_named_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, ``--lr 0`` also named ``--min-lr``, which the caller never set, as not from 0 to lr."""
    with pytest.raises(SystemExit):
        train.main(["--lr", "0", "--out", str(tmp_path / "run")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(" error: lr (--lr) must be above 0 and at most 1.0, got 0.0")


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_a_seed_out_of_range_is_named(seed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review's cases: torch's "Seed must be between 0 and 2**32 - 1" and "Overflow when unpacking long long",
    neither naming --seed, after the run folder's checks."""
    with pytest.raises(SystemExit) as stopped:
        train.main(["--seed", seed, "--out", str(tmp_path / "run")])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f" error: seed (--seed) must be from 0 to {2**32 - 1}, got {seed}")
    assert not (tmp_path / "run").exists()


def test_evaluate_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert evaluate.main(["--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "bad.safetensors: not a readable safetensors checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--epochs", "0"], "epochs (--epochs) must be at least 1, got 0"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be from 1 to 1024, got 0"),
        (
            ["--batch-size", "1000000000"],
            "batch_size (--batch-size) must be from 1 to 1024, got 1000000000",
        ),  # a traceback
        (["--crop", "8"], "crop (--crop) must be 0 (full images) or from 11 (SSIM) to 4096, got 8"),
        (["--crop", "-5"], "crop (--crop) must be 0"),
        (["--crop", "1000000"], "crop (--crop) must be 0 (full images) or from 11 (SSIM) to 4096, got 1000000"),  # too
        (["--lr", "0"], "lr (--lr) must be above 0 and at most 1.0, got 0.0"),
        (["--lr", "nan"], "lr (--lr) must be above 0 and at most 1.0, got nan"),
        (["--lr", "1e100"], "lr (--lr) must be above 0 and at most 1.0, got 1e+100"),  # was a traceback in step 1
        (["--min-lr", "0.1"], "min_lr (--min-lr) must be from 0 to lr (0.002), got 0.1"),
        (["--warmup-steps", "-1"], "warmup_steps (--warmup-steps) must be 0 or more"),
        (["--weight-decay", "-1"], "weight_decay (--weight-decay) must be a finite 0 or more"),
        (["--weight-decay", "inf"], "weight_decay (--weight-decay) must be a finite 0 or more, got inf"),
        (["--ssim-weight", "1.5"], "ssim_weight (--ssim-weight) must be from 0 to 1, got 1.5"),
        (["--grad-clip", "-1"], "grad_clip (--grad-clip) must be 0 (off) or finite above 0, got -1.0"),
        (["--grad-clip", "inf"], "grad_clip (--grad-clip) must be 0 (off) or finite above 0, got inf"),
        (["--threads", "-2"], "threads (--threads) must be 0 (all usable CPUs) to"),
        (["--threads", "100000"], "threads (--threads) must be 0 (all usable CPUs) to"),  # was a segfault
        (["--codebook-size", "0"], "codebook_size (--codebook-size) must be from 2 to 65536, got 0"),  # was ignored
        (["--codebook-size", "100000000"], "codebook_size (--codebook-size) must be from 2 to 65536"),  # a traceback
        (["--embedding-dim", "0"], "embedding_dim (--embedding-dim) must be from 1 to 1024, got 0"),
        (["--embedding-dim", "100000"], "embedding_dim (--embedding-dim) must be from 1 to 1024, got 100000"),  # OOM
        (["--preset", "bogus"], "preset (--preset) must be one of default, wide, grid64, grid16, tiny, got 'bogus'"),
        (["--precision", "fp16"], "precision (--precision) must be one of auto, bf16, fp32, got 'fp16'"),
        (
            ["--malloc-retain-mb", "-1"],
            "malloc_retain_mb (--malloc-retain-mb) must be from 0 (glibc's defaults) to 2047",
        ),
        (["--malloc-retain-mb", "4096"], "must be from 0 (glibc's defaults) to 2047, got 4096"),  # was clamped silently
        (["--max-train-images", "0"], "max_train_images (--max-train-images) must be at least 1, got 0"),
        (["--max-val-images", "0"], "max_val_images (--max-val-images) must be at least 1, got 0"),
    ],
)
def test_a_setting_out_of_range_is_refused_up_front(
    flags: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a batch size of 0 divided by zero, a crop under the SSIM window failed in the first step, and an
    image cap of 0 silently meant all images; each with a traceback or nothing at all. An unknown preset was refused
    only after the data had loaded (some 20 s of OASIS)."""
    with pytest.raises(SystemExit) as stopped:
        train.main([*flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and said in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_the_largest_codebook_and_code_are_accepted() -> None:
    config = train.parse_args(
        ["--codebook-size", "65536", "--embedding-dim", "1024", "--crop", "4096", "--batch-size", "1024"]
    )
    model = config.model_config()
    assert (model.codebook_size, model.embedding_dim, config.crop, config.batch_size) == (65536, 1024, 4096, 1024)


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--limit", "0"), ("--limit", "-1")])
def test_evaluate_refuses_a_count_below_one(
    flag: str, value: str, trained: Path, fixture_oasis: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a batch size of 0 and a limit of 0 ended in tracebacks, a limit of -1 in numpy's words."""
    checkpoint = trained / "best.safetensors"
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(checkpoint), "--data", str(fixture_oasis), flag, value])
    assert stopped.value.code == 2 and f"{flag} must be at least 1, got {value}" in capsys.readouterr().err


def _default_sigint() -> None:
    """SIGINT as at a terminal, even where the tests were started with it ignored: bash starts background commands
    (``cmd &`` without job control) with SIGINT ignored, a child inherits that, and Python then installs no
    KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("stop", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_stop_signal_saves_state_and_exits_128_plus_its_number(
    fixture_oasis: Path, tmp_path: Path, stop: signal.Signals, code: int, said: str
) -> None:
    """Ctrl-C, or kill / docker stop (SIGTERM): the state is saved for --resume, no traceback."""
    out = tmp_path / "interrupted"
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--data",
        str(fixture_oasis),
        "--out",
        str(out),
        "--epochs",
        "500",
        *TINY,
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint
    )
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert f"{said}: state saved" in stderr and "Traceback" not in stderr
    assert (out / "last.pt").exists()


def test_short_training_on_genuine_oasis(shared_oasis: Path, tmp_path: Path) -> None:
    args = [
        "--data",
        str(shared_oasis),
        "--out",
        str(tmp_path),
        "--epochs",
        "1",
        "--max-train-images",
        "32",
        "--max-val-images",
        "4",
        *TINY,
    ]
    assert train.main(args) == 0
    _, metadata = load(tmp_path / "best.safetensors")
    assert metadata["data"]["train"]["images"] == 32
    assert metadata["metrics"]["validate"]["images"] == 4


def _refused(code: int, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Exit 2 with one error line (notes may come before it, on stderr too); returns stderr."""
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_train_refuses_an_out_it_cannot_write_before_loading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a traceback (FileExistsError, PermissionError), or, in a read-only folder, one after a whole epoch.
    The data folder does not exist: the output check must come first."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    absent = ["--data", str(tmp_path / "absent"), *TINY]
    _refused(train.main([*absent, "--out", str(a_file / "run")]), capsys, f"{a_file} is not a folder")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    _refused(train.main([*absent, "--out", str(tmp_path / "link")]), capsys, "link is a symbolic link to", "gone")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # as if tmp_path were read-only
    _refused(train.main([*absent, "--out", str(tmp_path / "run")]), capsys, "permission denied")


@pytest.mark.parametrize(
    ("remove", "damage", "said"),
    [
        (None, b"not a torch file", "last.pt: unreadable resume state, damaged or not written by vqvae-train"),
        (None, b"", "last.pt: unreadable resume state"),
        (None, b"hi\n", "last.pt: unreadable resume state"),  # these three were tracebacks: KeyError 105,
        (None, b"G", "last.pt: unreadable resume state"),  # struct.error,
        (None, b"(abc", "last.pt: unreadable resume state"),  # IndexError (a review)
        ("last.safetensors", None, "incomplete resume state, no last.safetensors; start the run over with --overwrite"),
        ("last.pt", None, "incomplete resume state, no last.pt; start the run over with --overwrite"),
    ],
)
def test_resume_from_a_damaged_or_half_state_is_refused(
    trained: Path,
    fixture_oasis: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    remove: str | None,
    damage: bytes | None,
    said: str,
) -> None:
    """Before: tracebacks (EOFError, KeyError, ...), and without last.safetensors a silent restart from step 0
    that overwrote the run's best checkpoint."""
    run = tmp_path / "resume"
    run.mkdir()
    for name in ("last.safetensors", "last.pt", "best.safetensors"):
        if name != remove:
            (run / name).write_bytes((trained / name).read_bytes())
    if damage is not None:
        (run / "last.pt").write_bytes(damage)
    best = (run / "best.safetensors").read_bytes()
    _refused(train.main(["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY]), capsys, said)
    assert (run / "best.safetensors").read_bytes() == best


def test_a_damaged_resume_state_is_refused_without_a_note_on_the_new_epochs(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "note: --epochs 2 -> 3: the learning rate's cosine decay now ends with epoch 3", then the refusal
    (a review)."""
    run = tmp_path / "resume"
    _copy_run(trained, run, ("best.safetensors", "last.safetensors"))
    (run / "last.pt").write_bytes((trained / "last.pt").read_bytes()[:1000])
    argv = ["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY, "--epochs", "3"]
    err = _refused(train.main(argv), capsys, "last.pt: unreadable resume state")
    assert "note:" not in err, err


@pytest.mark.parametrize("warmup", [300, 0])
def test_a_warm_up_as_long_as_the_run_is_noted_and_bars_stay_off_a_log_file(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], warmup: int
) -> None:
    """The default warm-up (300 steps) outlasts a quick trial run, whose learning rate then never reaches --lr: a
    reviewer's 90-step run scored 0.61 SSIM against 0.76 with --warmup-steps 20, and was told nothing. tqdm's bars
    went to stderr even where it was a file (capsys' is not a terminal)."""
    argv = ["--data", str(fixture_oasis), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1", "--progress"]
    argv += ["--max-train-images", "4", "--warmup-steps", str(warmup)]
    assert train.main(argv) == 0
    out, err = capsys.readouterr()
    assert "4 train / 8 validation images, 1 step per epoch" in out, out
    noted = "note: --warmup-steps 300 is not under the run's 1 steps: the learning rate rises through the whole run"
    assert (noted in err and "; try --warmup-steps 1" in err) == (warmup == 300), err
    assert ("warmup" in err) == (warmup == 300), err
    assert "epoch 1/1" not in err, err  # the bar's label
    # Not on --resume, where --warmup-steps may not change (its advice could not be taken: a review).
    assert train.main([*argv, "--resume", "--epochs", "2"]) == 0
    assert "warmup" not in capsys.readouterr().err


def test_a_resume_state_of_another_architecture_with_as_many_parameters_is_refused(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's case: another run's last.pt (--embedding-dim 8) resumed, then failed in the first step with a
    RuntimeError traceback from Adam: load_state_dict checks the number of parameters, not their shapes."""
    run = tmp_path / "run"
    _copy_run(trained, run, ("best.safetensors", "last.safetensors", "history.json"))
    state = torch.load(trained / "last.pt", weights_only=True)
    moments = state["optimizer"]["state"][0]
    moments["exp_avg"] = torch.zeros(moments["exp_avg"].shape[0] * 2, *moments["exp_avg"].shape[1:])
    torch.save(state, run / "last.pt")
    _refused(
        train.main(["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY]),
        capsys,
        "last.pt: unreadable resume state, damaged or not written by vqvae-train (ValueError: optimizer state "
        "'exp_avg' of shape (",
    )


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"garbage\n", "(UnpicklingError); start the run over with --overwrite, or use another --out"),
        (None, "(KeyError: 'optimizer, generator, torch_rng, run'); start the run over with --overwrite"),
    ],
)
def test_a_resume_state_that_is_not_vqvae_trains_is_refused_before_the_data_loads(
    trained: Path,
    fixture_oasis: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    content: bytes | None,
    said: str,
) -> None:
    """Before: refused once the data had loaded, with torch's unpickling error cut off mid-word, advising
    weights_only=False (which would run code from the file), and no word of --overwrite."""
    run = tmp_path / "resume"
    run.mkdir()
    for name in ("last.safetensors", "best.safetensors"):
        (run / name).write_bytes((trained / name).read_bytes())
    if content is None:  # a torch file, but not a resume state
        torch.save({"weights": torch.zeros(2)}, run / "last.pt")
    else:
        (run / "last.pt").write_bytes(content)

    def no_data(*args: object) -> None:
        raise AssertionError("the data loaded before the resume state was checked")

    monkeypatch.setattr(train, "load_split", no_data)
    err = _refused(
        train.main(["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY]),
        capsys,
        said,
    )
    assert "weights_only" not in err


@pytest.mark.parametrize(
    ("member", "said"),
    [
        ('"steps": ' + "9" * 5000, "checkpoint metadata holds an integer of more than"),
        ('"x": ' + "[" * 100_000 + "]" * 100_000, "checkpoint metadata is nested more than 32 levels deep"),
    ],
)
def test_eval_and_resume_refuse_metadata_json_cannot_read_in_one_line(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str, said: str
) -> None:
    """Before: a RecursionError traceback from both; for the long integer, a ValueError naming no file."""
    run = tmp_path / "run"
    _copy_run(trained, run, ("best.safetensors", "last.pt", "history.json"))
    last = add_to_metadata(trained / "last.safetensors", run / "last.safetensors", member)
    capsys.readouterr()
    _refused(evaluate.main(["--checkpoint", str(last), "--data", str(fixture_oasis)]), capsys, f"{last}: {said}")
    resumed = train.main(["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY])
    _refused(resumed, capsys, f"{last}: {said}")


def test_a_resume_state_whose_optimizer_is_not_one_is_one_error_line(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's case: the optimizer state None ended --resume in an AttributeError traceback."""
    run = tmp_path / "run"
    _copy_run(trained, run, ("best.safetensors", "last.safetensors", "history.json"))
    state = torch.load(trained / "last.pt", weights_only=True)
    torch.save({**state, "optimizer": None}, run / "last.pt")
    _refused(
        train.main(["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY]),
        capsys,
        "last.pt: unreadable resume state, damaged or not written by vqvae-train (AttributeError",
    )


@pytest.mark.parametrize(
    ("run", "said"),
    [
        ({"step": "x"}, "run record: step: Input should be a valid integer"),
        ({"history": [1]}, "run record: history.0: Input should be an object"),
        ({"from_another_version": 1}, "run record: from_another_version: Unexpected keyword argument"),
    ],
)
def test_a_resume_state_whose_run_record_has_other_types_is_one_error_line(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], run: dict, said: str
) -> None:
    """A review's case: a step of "x" was taken, and the run stopped on "of step x" in a message of its own."""
    folder = tmp_path / "run"
    _copy_run(trained, folder, ("best.safetensors", "last.safetensors", "history.json"))
    state = torch.load(trained / "last.pt", weights_only=True)
    torch.save({**state, "run": json.dumps({**json.loads(state["run"]), **run})}, folder / "last.pt")
    _refused(
        train.main(["--data", str(fixture_oasis), "--out", str(folder), "--resume", *TINY]),
        capsys,
        f"last.pt: unreadable resume state, damaged or not written by vqvae-train (ValueError: {said})",
    )


def test_resume_takes_a_data_record_of_another_type_as_absent(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As for a checkpoint from before the data were recorded. Before: an AttributeError traceback."""
    run = tmp_path / "run"
    _copy_run(trained, run, ("best.safetensors", "last.pt", "history.json"))
    add_to_metadata(trained / "last.safetensors", run / "last.safetensors", '"data": []')  # the last key wins
    assert train.main(["--data", str(fixture_oasis), "--out", str(run), "--resume", *TINY, "--epochs", "3"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_evaluate_refuses_outputs_it_cannot_write_before_scoring(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: IsADirectoryError / FileExistsError tracebacks, after all the scoring."""
    base = ["--checkpoint", str(trained / "best.safetensors"), "--data", str(fixture_oasis)]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    _refused(evaluate.main([*base, "--out", str(tmp_path)]), capsys, f"{tmp_path} is a folder")
    _refused(evaluate.main([*base, "--out", str(a_file / "r.json")]), capsys, f"{a_file} is not a folder")
    _refused(evaluate.main([*base, "--figures", str(a_file)]), capsys, f"cannot write --figures {a_file}")


def test_evaluate_a_checkpoint_of_nan_weights_fails_without_a_report(
    trained: Path, fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: exit 0 and a report with bare NaN in it, which is not JSON. Now the checkpoint itself is refused
    (as by the service), naming a tensor."""
    model, metadata = load(trained / "best.safetensors")
    for parameter in model.decoder.parameters():
        parameter.data.fill_(float("nan"))
    broken = save(model, tmp_path / "broken.safetensors", metadata)
    code = evaluate.main(["--checkpoint", str(broken), "--data", str(fixture_oasis), "--split", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.safetensors: tensor 'decoder." in err and "NaN or infinite" in err, err
    assert "Traceback" not in err and not broken.with_suffix(".test.json").exists()


def _copy_run(trained: Path, run: Path, names: tuple[str, ...]) -> None:
    run.mkdir()
    for name in names:
        (run / name).write_bytes((trained / name).read_bytes())


@pytest.mark.parametrize(
    ("names", "flags", "said"),
    [
        (("best.safetensors", "last.safetensors", "last.pt"), [], "already holds a training run"),
        (("best.safetensors",), [], "already holds a training run (best.safetensors); pass --resume"),
        (("best.safetensors",), ["--resume"], "holds best.safetensors but no last.safetensors or last.pt"),
    ],
)
def test_train_refuses_to_start_over_an_earlier_run(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    names: tuple[str, ...],
    flags: list[str],
    said: str,
) -> None:
    """Before: a new run wrote over the folder's best.safetensors at its first epoch, without a word. The data
    folder does not exist: the refusal must come before the data loads."""
    run = tmp_path / "run"
    _copy_run(trained, run, names)
    best = (run / "best.safetensors").read_bytes()
    _refused(train.main(["--data", str(tmp_path / "absent"), "--out", str(run), *flags, *TINY]), capsys, said)
    assert (run / "best.safetensors").read_bytes() == best


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]])
@pytest.mark.parametrize("name", ["best.safetensors", "history.json", "last.partial"])
def test_train_refuses_a_folder_where_a_run_file_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], name: str
) -> None:
    """Before: a traceback after the data loaded (--overwrite), or after a whole epoch at the first save."""
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    args = ["--data", str(tmp_path / "absent"), "--out", str(run), *flags, *TINY]
    _refused(train.main(args), capsys, f"{run / name} is not a file")


def test_overwrite_replaces_an_earlier_run(trained: Path, fixture_oasis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _copy_run(trained, run, ("best.safetensors", "last.safetensors", "last.pt", "history.json"))
    (run / "last.partial").write_bytes(b"half of a state file")  # what a save stopped mid-write left before
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    cut_off = run / f"best.safetensors.{files._HOST}.{int(ended.stdout)}.0a1b.partial"  # and what it leaves now
    cut_off.write_bytes(b"half of a checkpoint")
    assert train.main(["--data", str(fixture_oasis), "--out", str(run), "--epochs", "1", "--overwrite", *TINY]) == 0
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1]
    assert read_metadata(run / "best.safetensors")["training"]["epochs"] == 1
    assert not (run / "last.partial").exists() and not cut_off.exists()


def test_overwrite_with_resume_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        train.parse_args(["--resume", "--overwrite"])
    assert exited.value.code == 2 and "off with --resume" in capsys.readouterr().err


def test_resume_with_nothing_to_resume_says_so(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "empty"
    assert train.main(["--data", str(fixture_oasis), "--out", str(run), "--epochs", "1", "--resume", *TINY]) == 0
    assert f"note: nothing to resume in {run}; starting a new run there" in capsys.readouterr().err
    assert (run / "best.safetensors").is_file()


def test_evaluate_into_a_closed_pipe_exits_without_a_traceback(
    trained: Path, fixture_oasis: Path, tmp_path: Path
) -> None:
    """``vqvae-eval | head``: the reader is gone before the table is printed. Before: a BrokenPipeError traceback."""
    command = [sys.executable, "-m", "training.evaluate", "--checkpoint", str(trained / "best.safetensors")]
    command += ["--data", str(fixture_oasis), "--out", str(tmp_path / "report.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like head, gone before the command writes
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert json.loads((tmp_path / "report.json").read_text())["ssim"]["mean"] > 0  # written before the table


@pytest.mark.parametrize(
    ("owner", "where", "said"),
    [
        (train, "CropSampler", ""),
        (train.Trainer, "loop_step", "; no epoch's state was saved, so there is nothing to resume"),
    ],
)
def test_memory_that_cannot_be_allocated_is_one_error_line(
    owner: object,
    where: str,
    said: str,
    fixture_oasis: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: torch's "DefaultCPUAllocator: can't allocate memory" RuntimeError ended vqvae-train in a traceback,
    whether padding the images to the crop size (--crop 0 with an 8x2000000 image) or in a step. Simulated: a real
    one depends on the machine's memory and the kernel's overcommit policy."""
    enforce = "[enforce fail at alloc_cpu.cpp:127] err == 0. "
    refused = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4000000000000 bytes. Error code 12"

    def fails(*args: object) -> None:
        raise RuntimeError(f"{enforce}{refused} (Cannot allocate memory)")

    monkeypatch.setattr(owner, where, fails)
    assert train.main(["--data", str(fixture_oasis), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if not line.startswith("note: ")] == [
        f"error: out of memory: {refused} (Cannot allocate memory); try a smaller --batch-size or --crop{said}"
    ]
