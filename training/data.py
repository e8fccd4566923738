"""Slice folders (OASIS ``keras_png_slices_*`` or any folder of images) held in memory as uint8."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.bomb_guard import claimed_pixels
from models.grayscale import (
    ACCEPTED_FORMATS,
    DECODE_ERRORS,
    NarrowRange,
    check_single_frame,
    narrow_range,
    narrow_range_effect,
    to_grey_levels,
)
from models.jpeg_markers import marker_refusal
from models.limits import MIN_SIDE
from training.outputs import note

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
OASIS_SPLITS = {
    "train": "keras_png_slices_train",
    "validate": "keras_png_slices_validate",
    "test": "keras_png_slices_test",
}
DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "oasis"
# The most pixels (width x height) of an image that vqvae-train and vqvae-eval read, checked from its header before any
# pixel is decoded: a 140 KB PNG claiming 12000x12000 took vqvae-eval 77 s and 19.7 GB of memory (Pillow only warns
# up to twice its own 89.5 million). 4096x4096 is 256 OASIS slices, or 64 slices of 512x512; reconstructing one such
# image took the previous default model about 3 GB, the shipped one more (README, VQVAE_MAX_PIXELS, the service's own
# limit, 1024x1024 by default).
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# The largest file read as an image: above what any image of MAX_PIXELS takes stored raw (16-bit RGBA, 8 bytes a
# pixel: 128 MiB), with room for the headers. Files are read whole before their header is checked, and a 40 GB file
# named a.png was a MemoryError traceback (a 3 GB one took 12 s and 3.4 GB of memory to refuse).
MAX_FILE_BYTES = 256 * 1024 * 1024


class DataError(ValueError):
    """A data folder or file that cannot be used; the message names the path."""


def spread(total: int, count: int) -> list[int]:
    """``count`` positions spread evenly over ``range(total)`` (first and last included)."""
    return [int(i) for i in np.linspace(0, total - 1, count).round()]


@dataclass
class SliceSet:
    """Grayscale slices as uint8 arrays (H, W) with their file names; sizes may differ between images."""

    images: list[np.ndarray]
    names: list[str]
    root: Path

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """sha256 of the file names, sizes and pixels, in order: what ``--resume`` compares, since the same count of
        images may be other images (0.2 s for the 6,400 training slices of ../shared/data)."""
        digest = hashlib.sha256()
        for name, image in zip(self.names, self.images, strict=True):
            digest.update(os.fsencode(name) + f"\0{image.shape}\0".encode())  # a name need not be UTF-8
            digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    @property
    def same_size(self) -> bool:
        return len({im.shape for im in self.images}) <= 1

    def stacked(self) -> torch.Tensor:
        """All images as one uint8 tensor (N, H, W); only when they share one size."""
        if not self.same_size:
            raise DataError(f"{self.root}: images have different sizes; use them one by one")
        return torch.from_numpy(np.stack(self.images))

    def subset(self, count: int | None) -> SliceSet:
        """``count`` images spread evenly over the set (all when None or larger than the set)."""
        if count is None or count >= len(self):
            return self
        picks = spread(len(self), count)
        return SliceSet([self.images[i] for i in picks], [self.names[i] for i in picks], self.root)


def read_grayscale(path: Path) -> np.ndarray:
    """One image file -> uint8 (H, W), by the same grayscale rule as the service (models.grayscale), and no
    smaller than the service accepts (``models.limits.MIN_SIDE``) nor larger than ``MAX_PIXELS``.

    Opened from its bytes, as the service opens an upload: opened from a path, Pillow 13 read an uncompressed TIFF
    whose orientation swaps its sides (5 to 8) as stored, not turned, and dropped the tag.
    """
    try:
        with open_checked(path) as image:
            check_single_frame(image)  # a TIFF stack, an animated PNG: a ValueError, reworded below
            image.load()
            pixels = to_grey_levels(image).copy()  # writable
            narrow = narrow_range(image)
    except UnidentifiedImageError as exc:  # what the service refuses too (GIF, WebP...), or a damaged header
        raise DataError(
            f"{path}: cannot read image: not a {'/'.join(ACCEPTED_FORMATS)} file, or a damaged one"
        ) from exc
    except DataError:
        raise  # open_checked's own, which DECODE_ERRORS (ValueError) would otherwise reword
    except DECODE_ERRORS as exc:  # Pillow's errors for damaged data, all of them
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    if min(pixels.shape) < MIN_SIDE:
        height, width = pixels.shape
        raise DataError(
            f"{path}: image is {height}x{width} (height x width) pixels; the minimum is {MIN_SIDE}x{MIN_SIDE}"
        )
    if narrow is not None:
        warnings.warn(NarrowRangeWarning(path, narrow), stacklevel=2)
    return pixels


def open_checked(path: Path) -> Image.Image:
    """``path`` opened from its bytes with no pixel decoded yet, refused from its header when it has more than
    ``MAX_PIXELS``; the caller closes it. Pillow's own decompression-bomb warning (from 89.5 million pixels) is
    silenced and its error (from twice that) reworded, so that the limit named is the one that applies.

    A JPEG of more scans, segments or stray bytes than an encoder writes is refused before Pillow parses it, as the
    service refuses it (``models.jpeg_markers``): each scan is decoded over the whole image, and a 606 KB file of
    50,000 scans took 18 s to decode, a stall of vqvae-train or vqvae-eval for each such file in a data folder."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{path}: file is {size} bytes, larger than any single slice of at most {MAX_SIDE}x{MAX_SIDE} pixels "
            f"takes ({MAX_FILE_BYTES} bytes at most)"
        )
    data = path.read_bytes()
    refusal = marker_refusal(data)
    if refusal is not None:
        raise DataError(f"{path}: {refusal}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except Image.DecompressionBombError as exc:
            claimed = claimed_pixels(exc)
            raise DataError(f"{path}: image header claims {claimed}, over the limit of {MAX_PIXELS} pixels") from exc
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise DataError(
            f"{path}: image is {height}x{width} (height x width) = {width * height} pixels, over the limit of "
            f"{MAX_PIXELS} pixels ({MAX_SIDE}x{MAX_SIDE})"
        )
    return image


class NarrowRangeWarning(UserWarning):
    """An image read on the 16-bit scale whose values span 12 bits or fewer (``models.grayscale.narrow_range``)."""

    def __init__(self, path: Path, narrow: NarrowRange) -> None:
        super().__init__(f"{path}: integer values only up to {narrow.top}, read on the 16-bit scale")
        self.path, self.narrow = path, narrow


def resolve_folder(data: Path, split: str | None) -> Path:
    """An OASIS root plus a split name, or a plain folder of images when ``split`` is None.

    A split name with no OASIS folder for it (``keras_png_slices_train``) is the sub-folder of that name, when there
    is one: a researcher's own ``train`` and ``test`` folders. Before, only ``./train`` reached them.
    """
    folder = data / OASIS_SPLITS.get(split, split) if split else data
    with _readable(data):
        if split in OASIS_SPLITS and not folder.exists() and (data / split).is_dir():
            folder = data / split
        found, is_folder = folder.exists(), folder.is_dir()
    if not found:
        hint = (
            f" (expected the OASIS folder {OASIS_SPLITS[split]}, or a folder {split}, under {data})"
            if split in OASIS_SPLITS
            else ""
        )
        raise DataError(f"{folder}: data folder does not exist{hint}")
    if not is_folder:
        raise DataError(f"{folder}: not a folder")
    return folder


@contextmanager
def _readable(folder: Path) -> Iterator[None]:
    """An OSError while ``folder`` is looked into as a DataError naming it: one of mode 000 (PermissionError from
    ``Path.exists`` or ``os.scandir``) ended both CLIs in a traceback."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"{folder}: cannot read the data folder ({exc.strerror or exc})") from exc


class Listing(NamedTuple):
    """What ``folder_listing`` finds directly in a folder, each sorted by name."""

    files: list[Path]  # image files
    below: list[Path]  # sub-folders
    broken: list[Path]  # image names that lead to no file: symbolic links to nothing, or in a loop
    skipped: list[Path]  # the rest: files not named as images (a.webp, notes.txt), pipes, sockets


def _entry_kind(entry: os.DirEntry[str]) -> str:
    """An entry's kind: "file", "folder", "broken" (a symbolic link to nothing, in a loop, or past a folder it may not
    enter) or "other". ``is_file`` says False of a link to nothing, and raises OSError (ELOOP) for one in a loop."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            return "folder"
    except OSError:
        return "broken"
    return "broken" if entry.is_symlink() else "other"


def folder_listing(folder: Path) -> Listing:
    """The image files, sub-folders and broken image links directly in ``folder``, in one pass over it (its entries'
    types come with the listing: no file is stat'ed twice). Hidden entries are left out: macOS leaves a
    ``._name.png`` of metadata beside each file it copies to a foreign disk, which stopped a run. A folder with no
    image file is a DataError whose hint names its sub-folders, whose images are not read."""
    found: dict[str, list[Path]] = {"file": [], "folder": [], "broken": [], "other": []}
    with _readable(folder):
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder does not exist")
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith("."):
                    found[_entry_kind(entry)].append(folder / entry.name)
    images = [[p for p in found[kind] if p.suffix.lower() in IMAGE_SUFFIXES] for kind in ("file", "broken")]
    skipped = [p for kind in ("file", "other") for p in found[kind] if p.suffix.lower() not in IMAGE_SUFFIXES]
    skipped += [p for p in found["other"] if p.suffix.lower() in IMAGE_SUFFIXES]  # a pipe named a.png
    listing = Listing(sorted(images[0]), sorted(found["folder"]), sorted(images[1]), sorted(skipped))
    if not listing.files:
        raise DataError(
            f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder{_no_images_hint(listing)}"
        )
    return listing


def _no_images_hint(listing: Listing) -> str:
    """What a folder with no image file holds instead, for its error: OASIS splits, sub-folders or broken links."""
    oasis = sorted(split for split, name in OASIS_SPLITS.items() if any(p.name == name for p in listing.below))
    if oasis:
        return f"; it is an OASIS root: name a split ({', '.join(oasis)})"
    if listing.below:
        return f"; only images directly in it are read, not those of its {len(listing.below)} sub-folders"
    if listing.broken:
        return f"; {_broken_text(listing.broken)}"
    return ""


def _broken_text(broken: list[Path]) -> str:
    return (
        f"{len(broken)} image name(s) are symbolic links that lead to no file (to nothing, or in a loop), "
        f"e.g. {broken[0].name}; they are skipped"
    )


_NOTED: set[tuple[str, Path]] = set()  # (what, folder) of the notes this process has given about a folder


def _note_once(what: str, folder: Path, text: str) -> None:
    """``note(text)``, once a process for ``what`` of ``folder``: training and validation may be one folder."""
    key = (what, folder.resolve())
    if key not in _NOTED:
        _NOTED.add(key)
        note(text)


def image_folders(data: Path, *splits: str | None) -> list[Path]:
    """The folders these splits read, of those that exist (a missing one is said when the data loads): for
    checking that no output goes into one."""
    folders = []
    for split in splits:
        try:
            folders.append(resolve_folder(data, split or None))
        except DataError:
            continue
    return folders


def load_folder(folder: Path, limit: int | None = None) -> SliceSet:
    """Every image file directly in ``folder`` (sorted by name, ``limit`` of them spread over it), decoded into
    memory; one note for the images read on the 16-bit scale whose values span 12 bits or fewer, one for
    sub-folders, whose images are not read, one for image names that are broken symbolic links, which are skipped
    (before, both were left out without a word, and a link in a loop ended the command in a traceback), and one for
    the other entries skipped (files not named as images, pipes)."""
    files, below, broken, skipped = folder_listing(folder)
    if limit is not None and limit < len(files):  # decode only the files asked for, spread over the folder
        files = [files[i] for i in spread(len(files), limit)]
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NarrowRangeWarning)
            images = [read_grayscale(p) for p in files]
    finally:  # Pillow's own warnings still reach the caller, a DataError or not
        for other in (w for w in caught if not isinstance(w.message, NarrowRangeWarning)):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    narrow = [w.message for w in caught if isinstance(w.message, NarrowRangeWarning)]
    if narrow:
        widest = max(narrow, key=lambda w: w.narrow.top)
        note(
            f"{len(narrow)} of {len(files)} images in {folder} hold integer values only up to "
            f"{widest.narrow.top} (12 bits or fewer), e.g. {widest.path.name}: {narrow_range_effect(widest.narrow)}"
        )
    if below:
        _note_once(
            "below",
            folder,
            f"{folder} has {len(below)} sub-folder(s), e.g. {below[0].name}; only the images directly in it are read",
        )
    if broken:
        _note_once("broken", folder, f"{folder}: {_broken_text(broken)}")
    if skipped:  # a .webp among the slices was left out without a word (a review)
        _note_once(
            "skipped",
            folder,
            f"{folder} has {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} that are no image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}), e.g. {skipped[0].name}; skipped",
        )
    return SliceSet(images, [p.name for p in files], folder)


def load_split(data: Path, split: str | None, limit: int | None = None) -> SliceSet:
    return load_folder(resolve_folder(data, split), limit)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1]."""
    return batch.unsqueeze(1).float().div_(255.0)


class CropSampler:
    """Random square crops of uint8 slices; smaller images are zero-padded up to the crop size.

    Why crops: a conv VQ-VAE is translation-equivariant, so 128x128 crops teach it the same thing as full slices
    at a quarter of the cost per step (and more variety per epoch).
    """

    def __init__(self, slices: SliceSet, crop: int, generator: torch.Generator) -> None:
        self.crop = crop
        self.generator = generator
        self.images = [self._pad(torch.from_numpy(im)) for im in slices.images]
        self.stack = torch.stack(self.images) if len({im.shape for im in self.images}) == 1 else None

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape
        return torch.nn.functional.pad(image, (0, max(0, self.crop - w), 0, max(0, self.crop - h)))

    def sample(self, batch_size: int) -> torch.Tensor:
        """-> uint8 (B, crop, crop)."""
        picks = torch.randint(0, len(self.images), (batch_size,), generator=self.generator).tolist()
        out = torch.empty(batch_size, self.crop, self.crop, dtype=torch.uint8)
        for row, index in enumerate(picks):
            image = self.stack[index] if self.stack is not None else self.images[index]
            h, w = image.shape
            top = int(torch.randint(0, h - self.crop + 1, (1,), generator=self.generator))
            left = int(torch.randint(0, w - self.crop + 1, (1,), generator=self.generator))
            out[row] = image[top : top + self.crop, left : left + self.crop]
        return out
