"""One exception type for bad user input, so callers (CLI, Slicer panel) can show it verbatim."""

from __future__ import annotations

from pathlib import Path


class AxonInputError(ValueError):
    """Input that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
