"""The lines ``vqvae-serve`` writes itself, before the server runs: a setting's warning, a refusal to start."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from app.logs import command_line
from app.settings import requested_log_format


def say(message: str, level: int = logging.ERROR) -> None:
    """One line on stderr, in the log format asked for (``VQVAE_LOG_FORMAT``, read from the environment: the settings
    may be what is wrong)."""
    print(command_line(message, level, requested_log_format(os.environ)), file=sys.stderr)


class CommandParser(argparse.ArgumentParser):
    """argparse, whose refusal of an argument is one JSON line under ``VQVAE_LOG_FORMAT=json``, as ``say``'s are:
    its usage text, three plain lines, reached a JSON pipeline as lines without a level (a review)."""

    def error(self, message: str) -> NoReturn:
        if requested_log_format(os.environ) != "json":
            super().error(message)
        say(f"{message} (see {self.prog} --help)")
        sys.exit(2)
