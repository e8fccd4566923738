"""``python -m training.rate_distortion``: classical codecs fitted to byte budgets, beside our operating points; and
its one-line errors for reports it cannot use and files it cannot write."""

from __future__ import annotations

import io
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.quality import ssim
from tests.conftest import read_strict_json
from training import rate_distortion
from training.codecs import CODECS, best_fit, codec_ssim
from training.figures import codebook_usage_figure
from training.synthetic import synthetic_slice


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    return synthetic_slice(np.random.default_rng(5), (64, 64))  # uint8 (64, 64)


@pytest.mark.parametrize("codec", list(CODECS))
def test_best_fit_is_the_largest_setting_that_fits(brain: np.ndarray, codec: str) -> None:
    encode, low, high = CODECS[codec]
    image = Image.fromarray(brain)
    sizes = [len(encode(image, setting)) for setting in range(low, high + 1)]
    budget = sorted(sizes)[len(sizes) // 2]
    fitted = best_fit(brain, codec, budget)
    assert fitted is not None and len(fitted) <= budget
    assert best_fit(brain, codec, 8) is None  # no image file is 8 bytes


def test_codec_ssim_scores_the_decoded_file_with_the_design_metric(brain: np.ndarray) -> None:
    budget = 1500
    fitted = best_fit(brain, "JPEG", budget)
    assert fitted is not None
    with Image.open(io.BytesIO(fitted)) as decoded:
        restored = np.asarray(decoded, dtype=np.float64) / 255.0
    assert codec_ssim(brain, "JPEG", budget) == pytest.approx(ssim(brain / 255.0, restored), abs=1e-12)
    assert codec_ssim(brain, "JPEG", 8) is None


def _report(path: Path, bits: float, mean: float) -> Path:
    path.write_text(json.dumps({"bits_per_slice": bits, "ssim": {"mean": mean, "median": mean, "p5": mean}}))
    return path


def test_a_run_writes_the_table_and_the_figure(fixture_oasis: Path, tmp_path: Path) -> None:
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    table, figure = tmp_path / "out" / "rd.json", tmp_path / "out" / "rd.png"
    args = ["--reports", str(report), "--labels", "ours", "--data", str(fixture_oasis), "--every", "4"]
    code = rate_distortion.main([*args, "--budgets", "8", "4000", "--json", str(table), "--figure", str(figure)])
    assert code == 0
    written = read_strict_json(table)
    assert written["points"] == [{"label": "ours", "bits": 2560.0, "ssim": 0.9}]
    assert written["codec_images"] == 2  # 8 test slices, every 4th
    assert set(written["codecs"]) == set(CODECS)
    for rows in written["codecs"].values():
        assert [row["bytes"] for row in rows] == [8, 4000]
        assert rows[0]["fits"] == 0 and rows[0]["ssim"] is None  # no image file is 8 bytes: null, not NaN
        assert rows[1]["fits"] == 2 and 0.5 < rows[1]["ssim"] <= 1.0  # 4,000 bytes hold any 64x64 slice
    with Image.open(figure) as image:
        assert image.format == "PNG"
    assert not list(table.parent.glob("*.partial"))


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read the report"),
        ("{not json", "is not a vqvae-eval JSON report (JSONDecodeError"),
        ('{"ssim": {"mean": 0.9}}', "is not a vqvae-eval JSON report (KeyError"),
        ('{"bits_per_slice": 2560, "ssim": {"mean": NaN}}', "has no finite ssim (got {'bits': 2560.0, 'ssim': nan})"),
        ('{"bits_per_slice": Infinity, "ssim": {"mean": 0.9}}', "has no finite bits"),
        # A review's cases: accepted, and "-5 bits (-1 B)" printed, on a log axis.
        ('{"bits_per_slice": -5, "ssim": {"mean": 0.9}}', "report.json: bits_per_slice must be a number above 0"),
        ('{"bits_per_slice": 0, "ssim": {"mean": 0.9}}', "bits_per_slice must be a number above 0, got 0"),
        ('{"bits_per_slice": true, "ssim": {"mean": 0.9}}', "bits_per_slice must be a number above 0, got True"),
        ('{"bits_per_slice": "inf", "ssim": {"mean": 0.9}}', "bits_per_slice must be a number above 0, got 'inf'"),
    ],
)
def test_a_report_it_cannot_use_is_a_one_line_error(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, said: str
) -> None:
    """Before: a traceback (FileNotFoundError, JSONDecodeError, KeyError), after the data had loaded; for a NaN
    score, after the codecs' minutes of work (the table cannot hold it)."""
    report = tmp_path / "report.json"
    if content is not None:
        report.write_text(content)
    assert rate_distortion.main(["--reports", str(report), "--data", str(fixture_oasis)]) == 2
    err = capsys.readouterr().err
    assert said in err and str(report) in err and "Traceback" not in err


def test_a_figure_path_without_a_suffix_is_written_as_png(tmp_path: Path) -> None:
    """Before this session's atomic writes, matplotlib added ".png"; with them it read the format from ".partial"."""
    path = codebook_usage_figure(np.arange(8), tmp_path / "usage")
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage"]


def test_a_figure_format_matplotlib_cannot_write_is_refused_before_the_codecs_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    with pytest.raises(SystemExit) as exited:
        rate_distortion.main(["--reports", str(report), "--figure", str(tmp_path / "rd.pngx")])
    assert exited.value.code == 2 and "matplotlib writes no .pngx files" in capsys.readouterr().err


def test_labels_must_match_the_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a ValueError traceback from zip(strict=True), after the codecs had run."""
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    with pytest.raises(SystemExit) as exited:
        rate_distortion.main(["--reports", str(report), "--labels", "a", "b"])
    assert exited.value.code == 2 and "--labels gives 2 labels for 1 reports" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--figure"])
def test_an_output_it_cannot_write_is_refused_before_the_codecs_run(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """Before: an IsADirectoryError or FileExistsError traceback, after all the codec work."""
    monkeypatch.setattr(rate_distortion, "codec_curve", lambda *args: pytest.fail("the codecs ran"))
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    outputs = {"--json": tmp_path / "rd.json", "--figure": tmp_path / "rd.png"}
    outputs[flag].mkdir()  # a folder where the file goes
    args = ["--reports", str(report), "--data", str(fixture_oasis), *(str(a) for o in outputs.items() for a in o)]
    assert rate_distortion.main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write {flag} {outputs[flag]}: {outputs[flag]} is a folder" in err and "Traceback" not in err


def test_a_device_node_as_an_output_is_refused_before_the_codecs_run(
    fixture_oasis: Path,
    device_node: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, as root: the codecs ran, then the table was renamed over the device node (``/dev/null``), exit 0."""
    monkeypatch.setattr(rate_distortion, "codec_curve", lambda *args: pytest.fail("the codecs ran"))
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    args = ["--reports", str(report), "--data", str(fixture_oasis), "--figure", str(tmp_path / "rd.png")]
    assert rate_distortion.main([*args, "--json", str(device_node)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write --json {device_node}: {device_node} is not a regular file" in err and "Traceback" not in err
    assert stat.S_ISCHR(device_node.stat().st_mode)


@pytest.mark.parametrize(
    ("table", "figure", "said"),
    [
        ("ours.json", "rd.png", "{tmp}/ours.json is read by this command: --json would replace that report"),
        ("rd.png", "rd.png", "rd.png would be both --json and --figure"),
        ("data/rd.json", "rd.png", "data/rd.json is in {tmp}/data, which this command reads: --json would replace"),
        ("rd.json", "data/rd.png", "data/rd.png is in {tmp}/data, which this command reads: --figure would"),
    ],
)
def test_outputs_over_an_input_or_each_other_are_refused_before_the_codecs_run(
    fixture_oasis: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    figure: str,
    said: str,
) -> None:
    """Before: the codecs ran, then the table replaced the report it was given, or the figure the table, or either
    went among the slices the codecs measured."""
    monkeypatch.setattr(rate_distortion, "codec_curve", lambda *args: pytest.fail("the codecs ran"))
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    shutil.copytree(fixture_oasis / "keras_png_slices_test", tmp_path / "data")
    args = ["--reports", str(report), "--data", str(tmp_path / "data"), "--split", ""]
    assert rate_distortion.main([*args, "--json", str(tmp_path / table), "--figure", str(tmp_path / figure)]) == 2
    err = capsys.readouterr().err
    assert said.format(tmp=tmp_path) in err and err.count("\n") == 1, err


def test_a_table_that_fails_while_written_is_a_one_line_error(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file system may change during the codecs' minutes: the write's own failure names the file."""
    report = _report(tmp_path / "ours.json", 2560, 0.9)
    table = tmp_path / "rd.json"
    monkeypatch.setattr(rate_distortion, "codec_curve", lambda *args: (table.mkdir(exist_ok=True), [])[1])
    args = ["--reports", str(report), "--data", str(fixture_oasis), "--json", str(table)]
    assert rate_distortion.main([*args, "--figure", str(tmp_path / "rd.png")]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {table}" in err and "Traceback" not in err
    assert not list(tmp_path.glob("rd.json*.partial"))


def test_a_report_of_other_images_than_the_codecs_is_noted(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's find: reports of the validation split were drawn beside codecs measured on the test split, with
    no word. Each vqvae-eval report records the folder it scored."""
    same, other = _report(tmp_path / "same.json", 2560, 0.9), _report(tmp_path / "other.json", 2560, 0.8)
    for report, folder in ((same, "keras_png_slices_test"), (other, "keras_png_slices_validate")):
        report.write_text(json.dumps({**json.loads(report.read_text()), "data": str(fixture_oasis / folder)}))
    outputs = ["--json", str(tmp_path / "rd.json"), "--figure", str(tmp_path / "rd.png"), "--budgets", "4000"]
    args = ["--reports", str(same), str(other), "--data", str(fixture_oasis), "--every", "8", *outputs]
    assert rate_distortion.main(args) == 0
    err = capsys.readouterr().err
    assert f"note: {other} (other) scored {fixture_oasis / 'keras_png_slices_validate'}, not" in err
    assert str(same) not in err


def test_a_report_whose_folder_is_no_path_is_a_one_line_error(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report(tmp_path / "r.json", 2560, 0.9)
    report.write_text(json.dumps({**json.loads(report.read_text()), "data": "a\u0000b"}))
    outputs = ["--json", str(tmp_path / "rd.json"), "--figure", str(tmp_path / "rd.png")]
    assert rate_distortion.main(["--reports", str(report), "--data", str(fixture_oasis), *outputs]) == 2
    assert capsys.readouterr().err.startswith("error: ")
