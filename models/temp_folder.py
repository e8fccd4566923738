"""Whether this process has a temporary folder to write in: torch needs one, and a locked-down container may have
none (a read-only root file system with nothing mounted at /tmp, Kubernetes' ``readOnlyRootFilesystem``)."""

from __future__ import annotations

import tempfile


def temp_folder_problem() -> str | None:
    """What to do about a missing temporary folder, in one line, or None. Without one, the model's first pass
    failed in torch's import of its compiler, which asks for a cache folder: a 91-line ``FileNotFoundError``
    traceback at start-up (a review, as a random non-root user on a read-only root)."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError as exc:
        return (
            f"no temporary folder to write in ({exc}); torch needs one: set TMPDIR to a writable folder, or, with a "
            "read-only root file system, mount a writable volume at /tmp (in Kubernetes an emptyDir, with medium: "
            "Memory to keep uploads over 1 MiB, which are spooled there, off the disk)"
        )
    return None
