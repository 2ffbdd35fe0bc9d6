"""Numeric ranges, declared where a setting is defined: the argparse `type=` of a multi-stage flag,
the field metadata of an end-to-end config key. One definition serves both front doors, so a value
out of range is refused in the same words before any work starts, rather than surfacing hours later
as a traceback or a NaN loss far from its cause.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Values of type `number` (int or float) from `low` to `high` (either may be None: unbounded),
    each end excluded where its `*_open` says so. Called on a command-line string, it is an argparse
    `type=`; `holds` checks a value that is already a number."""

    number: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.number is int and not isinstance(value, int):
            return False
        # nan fails every comparison below; inf is no learning rate, scale or threshold either
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __call__(self, text: str) -> int | float:
        try:
            value = self.number(text)
        except ValueError:
            value = None
        if not self.holds(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self}")
        return value

    def __str__(self) -> str:
        noun = "an integer" if self.number is int else "a number"
        low = f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None else ""
        high = f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else ""
        if low and high and not (self.low_open or self.high_open):
            return f"{noun} from {self.low:g} to {self.high:g}"
        return f"{noun} {' and '.join(part for part in (low, high) if part)}"


pos_int = Range(int, low=1)
nonneg_int = Range(int, low=0)
pos_float = Range(float, low=0, low_open=True)
nonneg_float = Range(float, low=0)
unit_float = Range(float, low=0, high=1)  # thresholds and probabilities, both ends included
