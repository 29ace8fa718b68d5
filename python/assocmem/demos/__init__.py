"""Runnable examples of assocmem (also reachable as `assocmem demo NAME`)."""
import argparse
import math
import sys


def int_in(lo, hi=None):
    """An argparse type: a whole number in [lo, hi] (a clear message instead of a traceback)."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
        return v
    return parse


def float_in(lo, hi):
    """An argparse type: a finite number in [lo, hi] (NaN and Inf are refused)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi:
            raise argparse.ArgumentTypeError(f"must be a finite number in [{lo}, {hi}], got {text}")
        return v
    return parse


def progress(demo, message):
    """One line of progress on stderr, "[demo] message", when stderr is a terminal: the demos run for
    minutes, row by row; each row's line ends on its own line as it finishes (nothing when redirected)."""
    if sys.stderr.isatty():
        print(f"[{demo}] {message}", file=sys.stderr, flush=True)


def run_main(main, argv=None):
    """Runs a demo's main: bad input and unwritable files end with one line and exit 2, no traceback."""
    try:
        return main(argv)
    except (ValueError, OSError) as e:
        print(f"assocmem demo: error: {e}", file=sys.stderr)
        return 2
