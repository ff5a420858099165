"""Progress of long loops: a tqdm bar on a terminal, plain log lines elsewhere.

tqdm draws nothing useful when stderr is a file or a pipe (CI logs, Prefect workers, GPU
jobs): either nothing at all (disabled) or carriage-return redraws. There a line is written
every ``every`` of the work (10 % by default) with the latest postfix, so a log shows how far
a run got when it was stopped.
"""

from __future__ import annotations

import sys
import time


def progress_bar(total: int, desc: str, *, initial: int = 0, unit: str = "it", enabled: bool = True,
                 every: float = 0.1):
    """An object with ``update(n)``, ``set_postfix(**values)`` and ``close()``."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False)
    return _LogLines(total, desc, initial, unit, every)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


class _LogLines:
    def __init__(self, total: int, desc: str, initial: int, unit: str, every: float):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.stride = max(1, round(total * every))
        self.next_line = initial + self.stride
        self.postfix: dict = {}
        self.started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self.next_line or self.done == self.total:
            self.next_line = self.done + self.stride
            elapsed = time.perf_counter() - self.started
            extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} in {elapsed:.1f} s{extra}",
                  file=sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def close(self) -> None:
        pass
