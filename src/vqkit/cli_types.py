"""Argument types shared by vqkit's command lines and benchmark scripts."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_int(value_name: str = "value") -> Callable[[str], int]:
    """Return an argparse type that parses an integer >= 1. `value_name` names the value in its error."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"invalid {value_name} {value!r}: give an integer >= 1")
        return number

    return parse
