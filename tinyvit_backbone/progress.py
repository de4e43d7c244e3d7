"""Progress bars for every tool of the project, suited to where the output goes.

On a terminal this is tqdm's redrawing bar. When stderr is not a terminal (CI, ``nohup``, a
log file) a redrawing bar writes a carriage-return frame per update, and a log fills with
them (a demo run's log was 111 KB, mostly redraws). There the same bar prints one plain line
each time another ``step_percent`` of the total is done (or every ``interval_s`` seconds when
the total is unknown), and a last line when it closes.

``enabled=None`` means on; tools pass ``--progress/--no-progress`` through here unchanged.
"""
from __future__ import annotations

import os
import sys
import time

from tqdm.std import tqdm as _tqdm

LINE_STEP_PERCENT = 5.0
LINE_INTERVAL_S = 30.0


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal; ``TINYVIT_PROGRESS=lines`` or
    ``=bars`` forces either mode."""
    forced = os.environ.get("TINYVIT_PROGRESS", "").lower()
    if forced in ("lines", "bars"):
        return forced == "bars"
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class _Discard:
    def write(self, _text):
        return 0

    def flush(self):
        return None


class LineProgress(_tqdm):
    """tqdm that prints whole lines at coarse steps instead of redrawing one line."""

    def __init__(self, *args, step_percent: float = LINE_STEP_PERCENT,
                 interval_s: float = LINE_INTERVAL_S, **kwargs):
        self._step = step_percent
        self._interval = interval_s
        self._last_pct = -1.0
        self._last_time = 0.0
        self._lines_closed = False
        kwargs.setdefault("mininterval", 0.0)
        kwargs.setdefault("dynamic_ncols", False)
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):  # noqa: D401 - tqdm's hook
        if self.disable or self._lines_closed:
            return True
        now = time.monotonic()
        if self.total:
            pct = 100.0 * self.n / self.total
            due = (pct >= self._last_pct + self._step or self.n >= self.total
                   or self._last_pct < 0)
            if self.n >= self.total and self._last_pct >= 100.0:
                due = False
        else:
            pct = 0.0
            due = self._last_pct < 0 or now - self._last_time >= self._interval
        if not due and msg is None:
            return True
        self._last_pct = pct if self.total else 0.0
        if self.total and self.n >= self.total:
            self._last_pct = 100.0
        self._last_time = now
        line = self.__str__() if msg is None else msg
        self.fp.write(line.replace("\r", "").rstrip() + "\n")
        self.fp.flush()
        return True

    def close(self):
        if self.disable:
            return super().close()
        if not self._lines_closed:
            if self.total is None or self.n < self.total or self._last_pct < 100.0:
                self._last_pct = -1.0  # force the closing line
                self.display()
            self._lines_closed = True
        # tqdm's close ends a redrawn line with "\n" or "\r": nothing to end here
        stream, self.fp = self.fp, _Discard()
        try:
            super().close()
        finally:
            self.fp = stream

    def clear(self, nolock=False):  # lines are never erased
        return


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None,
                 enabled: bool | None = None, unit: str = "it", leave: bool = True,
                 stream=None, **kwargs):
    """A tqdm bar (terminal) or a :class:`LineProgress` (anything else); a disabled bar when
    ``enabled`` is False. Use it exactly like ``tqdm``."""
    stream = sys.stderr if stream is None else stream
    disable = enabled is False
    cls = _tqdm if interactive(stream) else LineProgress
    if cls is _tqdm:
        from tqdm.auto import tqdm as cls
    return cls(iterable, total=total, desc=desc, disable=disable, unit=unit, leave=leave,
               file=stream, **kwargs)
