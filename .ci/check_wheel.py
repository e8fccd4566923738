"""CI: the wheel that ``pip install .`` builds (what the Docker image installs, not ``-e``) holds the packages and
the shipped checkpoints with their model card, which the service loads from site-packages. CI's tests run on the
editable install, where the checkpoints are read from the source tree, so without this nothing checks the package
data the image relies on.

    python .ci/check_wheel.py WHEEL_DIR
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

NEEDED = (
    "models/weights/vqvae.safetensors",
    "models/weights/vqvae_grid16.safetensors",
    "models/weights/README.md",
    "models/vqvae.py",
    "app/main.py",
    "training/train.py",
)


def main(folder: Path) -> int:
    wheels = sorted(folder.glob("brain_vqvae-*.whl"))
    if len(wheels) != 1:
        print(f"error: expected one brain_vqvae wheel in {folder}, found {[w.name for w in wheels]}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        sizes = {info.filename: info.file_size for info in wheel.infolist()}
    missing = [name for name in NEEDED if name not in names]
    if missing:
        print(f"error: {wheels[0].name} lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    for name in NEEDED:
        source = Path(name)
        if source.stat().st_size != sizes[name]:  # a Git LFS pointer, say, packaged in place of the weights
            print(f"error: {name} is {sizes[name]} bytes in the wheel, {source.stat().st_size} here", file=sys.stderr)
            return 1
    print(f"{wheels[0].name}: {len(names)} files, the shipped checkpoints and model card among them")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
