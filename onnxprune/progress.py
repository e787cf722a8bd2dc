"""Stages: `with stage("score", timings): ...` times a stage, logs its duration at debug
level (`onnxprune -v`), and, when enabled, shows on stderr which stage is running and for
how long, so that a minutes-long pass on a big model does not look hung.

The display is off unless `enable(True)` was called: the CLI enables it when stderr is a
terminal and -q is not given, so library users, pipes and tests see nothing. It appears
only once a stage has run for DELAY_S, so small models prune without flicker, and the
line is erased when the stage ends."""
from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("onnxprune")

DELAY_S = 0.5     # stages shorter than this show nothing
REFRESH_S = 0.2
_enabled = False


def enable(on: bool) -> bool:
    """Switch the terminal display on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(on)
    return previous


def enabled() -> bool:
    return _enabled


@contextmanager
def stage(name: str, timings: dict | None = None):
    """Run one stage: on success, its duration in seconds goes to `timings[name]` and to
    the debug log."""
    start = time.perf_counter()
    ticker = _Ticker(name) if _enabled else None
    try:
        yield
    finally:
        if ticker is not None:
            ticker.stop()
    elapsed = time.perf_counter() - start
    if timings is not None:
        timings[name] = round(elapsed, 4)
    log.debug("stage %s: %.3f s", name, elapsed)


class _Ticker:
    """A thread that redraws `onnxprune: <stage> 12.3 s` in place until stopped."""

    def __init__(self, name: str):
        self.name, self.stream, self.start = name, sys.stderr, time.perf_counter()
        self.drawn = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"onnxprune-progress-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.done.wait(DELAY_S):
            return
        while not self.done.is_set():
            self._write(f"\ronnxprune: {self.name} {time.perf_counter() - self.start:.1f} s")
            self.drawn = True
            self.done.wait(REFRESH_S)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        if self.drawn:
            self._write("\r\033[K")  # erase the line: the next output starts clean

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: progress is not worth an error
            pass
