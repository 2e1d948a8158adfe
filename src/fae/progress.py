"""Progress reports that read well wherever stderr goes: every progress display in fae uses this.

On a terminal, :func:`show_progress` returns a tqdm bar. Anywhere else (CI, ``nohup``, a file) a bar
redraws itself with carriage returns many times a second, and a log fills with hundreds of KB of
half-lines; there it returns a :class:`LineProgress` instead, which prints one plain line at every
10% (no sooner than 5 s after the previous line, so a two-second pass prints only its last line),
at least one a minute during very slow work, and one when it ends::

    tokens (train): 40% (400/1000 img) 12.3 img/s, 32 s elapsed, ~48 s left
    tokens (train): 100% (1000/1000 img) 12.5 img/s, done in 1 min 20 s

The environment variable ``FAE_PROGRESS`` overrides the choice: ``bar`` (tqdm even into a file),
``lines`` (plain lines even on a terminal) or ``off`` (no progress output at all).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

from tqdm import tqdm

from fae.errors import ConfigError

ENV_VAR = "FAE_PROGRESS"
MODES = ("bar", "lines", "off")
EVERY_PERCENT = 10  # a line each time another tenth of the work is done ...
MIN_GAP_S = 5.0  # ... unless the previous line is this recent (short passes print their end only)
HEARTBEAT_S = 60.0  # and at least a line this often, however slow the work


def progress_mode(stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``off``: ``$FAE_PROGRESS`` if set, else ``bar`` exactly when
    ``stream`` (default stderr) is a terminal."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value:
        if value not in MODES:
            raise ConfigError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a progress mode; "
                              f"set it to one of {', '.join(MODES)} or unset it")
        return value
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def show_progress(iterable: Iterable | None = None, *, total: float | None = None, initial: float = 0,
             desc: str | None = None, unit: str = "it", disable: bool = False,
             stream: TextIO | None = None) -> tqdm | LineProgress:
    """A progress display over ``iterable`` or ``total`` units, chosen by :func:`progress_mode`.

    Both kinds offer the tqdm subset fae uses: iteration, ``update(n)``, ``set_postfix(...)``,
    ``close()`` and ``with``.

    Args:
        iterable: items to count as they are iterated (its length is the total unless given).
        total: the amount of work (None: unknown; lines then come once a minute and at the end).
        initial: work already done (a resumed run).
        desc: label at the start of each line.
        unit: what is counted ("img", "step").
        disable: show nothing (e.g. on ranks other than 0); still iterates and counts.
        stream: where to write (default: stderr at the time of the call).
    """
    mode = "off" if disable else progress_mode(stream)
    stream = sys.stderr if stream is None else stream
    if mode == "bar":
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                    file=stream)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit,
                        stream=stream if mode == "lines" else None)


class LineProgress:
    """tqdm's interface, printing plain lines (never a carriage return) instead of a redrawn bar.

    Args:
        iterable, total, initial, desc, unit: as for :func:`show_progress`.
        stream: where lines go; None prints nothing (the ``off`` mode and disabled displays).
        clock: seconds as a float (tests pass a fake one).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, initial: float = 0,
                 desc: str | None = None, unit: str = "it", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.stream, self.clock = desc, unit, stream, clock
        self.postfix: dict[str, Any] = {}
        self.start = self.last_line = clock()
        self.lines = 0  # lines printed so far
        self.next_percent = self._percent_after(initial)
        self.closed = False

    # ------------------------------------------------------------------ tqdm's interface
    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; print a line when another tenth is done or a minute has passed."""
        self.n += n
        if self.stream is None or self.closed:
            return
        now = self.clock()
        percent = self._percent()
        crossed = percent is not None and percent >= self.next_percent and self.n < self.total
        if crossed:
            self.next_percent = self._percent_after(self.n)
        if (crossed and now - self.last_line >= MIN_GAP_S) or now - self.last_line >= HEARTBEAT_S:
            self._print(now, final=False)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """Values shown at the end of the next line (``loss=0.123``); ``refresh`` is tqdm's, unused."""
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        """Print the last line (if anything was counted) once."""
        if self.closed:
            return
        self.closed = True
        if self.stream is not None and self.n > self.initial:
            self._print(self.clock(), final=True)

    # ------------------------------------------------------------------ the line
    def line(self, now: float, final: bool) -> str:
        """``desc: 40% (400/1000 img) 12.3 img/s, 32 s elapsed, ~48 s left, loss=0.1``."""
        elapsed = max(now - self.start, 0.0)
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else math.inf
        percent = self._percent()
        if percent is None:
            head = f"{_number(self.n)} {self.unit}"
        else:
            head = f"{math.floor(percent):.0f}% ({_number(self.n)}/{_number(self.total)} {self.unit})"
        parts = [f"{head} {_rate(rate, self.unit)}"]
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        else:
            parts.append(f"{_duration(elapsed)} elapsed")
            if percent is not None and done > 0 and math.isfinite(rate):
                parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        parts += [f"{k}={_value(v)}" for k, v in self.postfix.items()]
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _print(self, now: float, final: bool) -> None:
        self.stream.write(self.line(now, final) + "\n")
        self.stream.flush()
        self.last_line = now
        self.lines += 1

    def _percent(self) -> float | None:
        if not self.total:
            return None
        return 100.0 * self.n / self.total

    def _percent_after(self, n: float) -> float:
        """The next multiple of EVERY_PERCENT above the share ``n`` of the total."""
        if not self.total:
            return math.inf
        return (math.floor(100.0 * n / self.total / EVERY_PERCENT) + 1) * EVERY_PERCENT


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) and not x.is_integer() else f"{int(x)}"


def _rate(rate: float, unit: str) -> str:
    """``12.3 img/s``; below one a second, ``4.1 s/step`` (what tqdm shows too)."""
    if not math.isfinite(rate):
        return f"- {unit}/s"
    if rate >= 1 or rate == 0:
        return f"{rate:.1f} {unit}/s"
    return f"{1 / rate:.1f} s/{unit}"


def _duration(seconds: float) -> str:
    """``32 s``, ``4 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
