"""The lines ``vqvae-serve`` writes itself, before the server runs: a setting's warning, a refusal to start."""

from __future__ import annotations

import logging
import os
import sys

from app.logs import command_line
from app.settings import requested_log_format


def say(message: str, level: int = logging.ERROR) -> None:
    """One line on stderr, in the log format asked for (``VQVAE_LOG_FORMAT``, read from the environment: the settings
    may be what is wrong)."""
    print(command_line(message, level, requested_log_format(os.environ)), file=sys.stderr)
