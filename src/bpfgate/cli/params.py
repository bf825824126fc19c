"""Option types shared by the commands."""

from __future__ import annotations

import math

import click


class Seconds(click.FloatRange):
    """A duration in seconds: a finite number in the range (click's FloatRange lets nan and inf through:
    `--duration nan` would end at once, `--confirm inf` never)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return v


class UserPath(click.Path):
    """click.Path that refuses a NUL byte as bad input (click's own check stats it: a ValueError)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "\x00" in value:
            self.fail("the path holds a NUL byte (\\x00)", param, ctx)
        return super().convert(value, param, ctx)
