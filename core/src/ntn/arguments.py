"""Command-line parsing shared by `ntn-trackers` and the experiment scripts."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser that answers bad input in one line, the error and where the usage is, instead of
    printing the whole usage first (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
