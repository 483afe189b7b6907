"""Progress of local runs: workers append one byte per item to a local file, the driver polls its size.

This works across the DirectRunner's worker processes (multi_processing mode) without any Beam API that
only some runners have; on remote runners progress is simply off.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from tqdm import tqdm


class ProgressTicker:
    """Picklable; opens its file lazily in the worker."""

    def __init__(self, path: str | None):
        self.path = path
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None}

    def tick(self, count: int = 1) -> None:
        if self.path is None or count < 1:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, b"." * count)


class ProgressMonitor:
    """Driver-side bars for named stages, fed by the sizes of their tick files.

    A stage's total is a number, None (unknown: a counting bar), or the name of another ticker whose
    count is the total as it grows (the export's render bar: one tick per render candidate found while
    headers are read, so its total is exact once the header pass is done). Those tickers draw no bar.
    """

    def __init__(self, directory: str, stages: dict[str, int | str | None], enabled: bool = True):
        names = list(stages) + [t for t in stages.values() if isinstance(t, str) and t not in stages]
        self.paths = {name: str(Path(directory) / f"{name}.ticks") for name in names}
        self._totals = stages
        # Bars redraw lines in place: on a log or a pipe that is noise, so they only go to a terminal.
        self._enabled = enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ticker(self, stage: str) -> ProgressTicker:
        return ProgressTicker(self.paths[stage] if self._enabled else None)

    def __enter__(self) -> ProgressMonitor:
        if self._enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        bars = {
            name: tqdm(
                total=None if isinstance(total, str) else total,
                desc=name,
                unit="file",
                position=i,
                leave=True,
                dynamic_ncols=True,
            )
            for i, (name, total) in enumerate(self._totals.items())
        }
        while True:
            stopping = self._stop.wait(0.5)
            for name, bar in bars.items():
                total = self._totals[name]
                if isinstance(total, str):
                    bar.total = self._count(total)
                bar.update(self._count(name) - bar.n)
            if stopping:
                break
        for bar in bars.values():
            bar.close()

    def _count(self, name: str) -> int:
        try:
            return os.path.getsize(self.paths[name])
        except OSError:
            return 0
