"""``python -m training.rate_distortion``: our operating points beside classical codecs at the same byte budgets."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from training.codecs import CODECS, codec_curve
from training.data import DEFAULT_DATA_ROOT, DataError, load_split
from training.figures import rate_distortion_figure
from training.outputs import quiet_on_closed_stdout

DEFAULT_BUDGETS = [320, 640, 1280, 2048, 3072, 4096]


@quiet_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=Path, nargs="+", required=True, help="vqvae-eval JSON reports")
    parser.add_argument("--labels", nargs="*", default=None, help="one label per report")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--split", default="test")
    parser.add_argument("--every", type=int, default=4, help="codecs are measured on every Nth slice")
    parser.add_argument("--budgets", type=int, nargs="*", default=DEFAULT_BUDGETS, help="bytes per slice")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/rate_distortion.png"))
    parser.add_argument("--json", type=Path, default=Path("docs/rate_distortion.json"))
    args = parser.parse_args(argv)
    try:
        slices = load_split(args.data, args.split or None)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = slices.images[:: args.every]
    labels = args.labels or [p.stem for p in args.reports]
    points = []
    for label, path in zip(labels, args.reports, strict=True):
        report = json.loads(path.read_text())
        points.append({"label": label, "bits": report["bits_per_slice"], "ssim": report["ssim"]["mean"]})
    curves = {codec: codec_curve(images, codec, args.budgets) for codec in CODECS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"points": points, "codecs": curves, "codec_images": len(images)}, indent=2))
    plotted = {
        name: [(row["bits"], row["ssim"]) for row in rows if row["fits"] == row["images"]]
        for name, rows in curves.items()
    }
    rate_distortion_figure(points, plotted, args.figure)
    print(f"codecs on every {args.every}th slice of {slices.root} ({len(images)} images); mean SSIM (fits/images)")
    print("bytes   " + "".join(f"{name:>22}" for name in CODECS))
    for i, budget in enumerate(args.budgets):
        cells = []
        for name in CODECS:
            row = curves[name][i]
            value = "-" if math.isnan(row["ssim"]) else f"{row['ssim']:.3f}"
            cells.append(f"{value} ({row['fits']}/{row['images']})".rjust(22))
        print(f"{budget:<8}" + "".join(cells))
    for point in points:
        print(f"{point['label']}: {point['bits']:.0f} bits ({point['bits'] / 8:.0f} B), mean SSIM {point['ssim']:.4f}")
    print(f"figure: {args.figure}; table: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
