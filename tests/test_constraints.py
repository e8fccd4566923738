"""constraints.txt (every installed package at the version CI tested) agrees with pyproject.toml's own pins: a pin
bumped in one and not the other makes pip refuse the install, with a resolver error that names neither file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """PEP 503 normalised project name (``Pillow`` and ``pillow``, ``python_multipart`` and ``python-multipart``)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0]).lower()


def test_constraints_hold_every_pinned_dependency_at_its_pin() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lines = (REPO / "constraints.txt").read_text().splitlines()
    constrained = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    constrained = {_name(name): version for name, version in constrained.items()}
    assert len(pins) > 10 and "torch" not in constrained  # torch: pyproject's pin, whatever its index's local tag
    for pin in pins:
        name, version = _name(pin), pin.split("==", 1)[1]
        if name != "torch":
            assert constrained.get(name) == version, f"{pin} in pyproject.toml, {constrained.get(name)} in constraints"
