"""``python -m training.rate_distortion``: our operating points beside classical codecs at the same byte budgets."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from models.files import WriteError, json_text, write_atomically
from training.codecs import CODECS, codec_curve
from training.data import DEFAULT_DATA_ROOT, DataError, image_folders, load_split
from training.figures import FIGURE_FORMATS, rate_distortion_figure
from training.outputs import check_apart, check_files, clean_exits, note

DEFAULT_BUDGETS = [320, 640, 1280, 2048, 3072, 4096]


@clean_exits
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=Path, nargs="+", required=True, help="vqvae-eval JSON reports")
    parser.add_argument("--labels", nargs="*", default=None, help="one label per report (default: the file names)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="OASIS root (default: %(default)s)")
    parser.add_argument("--split", default="test", help="split measured (default: %(default)s)")
    parser.add_argument(
        "--every", type=int, default=4, help="codecs are measured on every Nth slice (default: %(default)s)"
    )
    parser.add_argument(
        "--budgets", type=int, nargs="*", default=DEFAULT_BUDGETS, help="bytes per slice (default: %(default)s)"
    )
    parser.add_argument(
        "--figure",
        type=Path,
        default=Path("docs/figures/rate_distortion.png"),
        help="figure written (default: %(default)s, from the current folder: the committed one in a checkout)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("docs/rate_distortion.json"), help="table written (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    labels = args.labels or [p.stem for p in args.reports]
    if len(labels) != len(args.reports):
        parser.error(f"--labels gives {len(labels)} labels for {len(args.reports)} reports: one each")
    if args.every < 1 or not args.budgets or min(args.budgets) < 1:
        parser.error("--every and each of --budgets must be at least 1")
    kind = args.figure.suffix.lstrip(".").lower()
    if kind and kind not in FIGURE_FORMATS:  # matplotlib's ValueError would come after the codecs' minutes of work
        parser.error(
            f"--figure {args.figure}: matplotlib writes no .{kind} files; use one of {', '.join(FIGURE_FORMATS)}"
        )
    try:
        points = [{"label": label, **operating_point(path)} for label, path in zip(labels, args.reports, strict=True)]
        check_outputs(args)  # before the codecs' minutes of work, not after them
        slices = load_split(args.data, args.split or None)
        for label, path in zip(labels, args.reports, strict=True):
            folder = scored_folder(path)
            if folder is not None and folder.resolve() != slices.root.resolve():
                note(
                    f"{path} ({label}) scored {folder}, not {slices.root}, where the codecs are measured: "
                    "the figure compares different images"
                )
    except (DataError, ValueError, OSError) as exc:  # a report's "data" may be no path at all (a NUL byte)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = slices.images[:: args.every]
    curves = {codec: codec_curve(images, codec, args.budgets) for codec in CODECS}
    plotted = {
        name: [(row["bits"], row["ssim"]) for row in rows if row["ssim"] is not None and row["fits"] == row["images"]]
        for name, rows in curves.items()
    }
    table = {"points": points, "codecs": curves, "codec_images": len(images)}
    try:
        write_atomically(args.json, lambda partial: partial.write_text(json_text(table)))
        rate_distortion_figure(points, plotted, args.figure)
    except WriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"codecs on every {args.every}th slice of {slices.root} ({len(images)} images); mean SSIM (fits/images)")
    print("bytes   " + "".join(f"{name:>22}" for name in CODECS))
    for i, budget in enumerate(args.budgets):
        cells = []
        for name in CODECS:
            row = curves[name][i]
            value = "-" if row["ssim"] is None else f"{row['ssim']:.3f}"
            cells.append(f"{value} ({row['fits']}/{row['images']})".rjust(22))
        print(f"{budget:<8}" + "".join(cells))
    for point in points:
        print(f"{point['label']}: {point['bits']:.0f} bits ({point['bits'] / 8:.0f} B), mean SSIM {point['ssim']:.4f}")
    print(f"figure: {args.figure}; table: {args.json}")
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """``--json`` and ``--figure`` can be written, are not one file, and replace no report read nor go among the
    images the codecs measure."""
    outputs = {"--json": args.json, "--figure": args.figure}
    check_files(outputs)
    for what, path in outputs.items():
        for report in args.reports:
            check_apart(path, report, f"{what} would replace that report")
        for folder in image_folders(args.data, args.split):
            check_apart(path, folder, f"{what} would replace an image or be mixed into the data")


def operating_point(report: Path) -> dict[str, float]:
    """Bits per slice and mean SSIM from a ``vqvae-eval`` JSON report; ValueError naming the file if it is not one."""
    try:
        data = json.loads(report.read_text())
        bits = data["bits_per_slice"]
        point = {"bits": float(bits), "ssim": float(data["ssim"]["mean"])}
    except OSError as exc:
        raise ValueError(f"cannot read the report {report}: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{report} is not a vqvae-eval JSON report ({type(exc).__name__}: {exc})") from exc
    if isinstance(bits, bool) or not isinstance(bits, int | float) or not bits > 0:  # a log axis, and a budget in
        raise ValueError(f"{report}: bits_per_slice must be a number above 0, got {bits!r}")  # bytes: -5 made "-1 B"
    unmeasured = [name for name, value in point.items() if not math.isfinite(value)]
    if unmeasured:  # refused before the codecs' minutes of work: the table and the figure need a point
        raise ValueError(f"{report} has no finite {' or '.join(unmeasured)} (got {point})")
    return point


def scored_folder(report: Path) -> Path | None:
    """The image folder a ``vqvae-eval`` report scored, where it records one (read after ``operating_point``)."""
    data = json.loads(report.read_text()).get("data")
    return Path(data) if isinstance(data, str) else None


if __name__ == "__main__":
    sys.exit(main())
