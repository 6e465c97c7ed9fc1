"""What `axon reconstruct` and `axon sample-case` tell a follower process (the Slicer module, a
script): exit codes and JSON lines on stdout. The events are a follower's only channel: stderr is for
people (a terminal's progress bar, one readable line per error or warning, a traceback) and for a log
a follower keeps for them, never parsed. `axonct.app.worker` runs a command under this protocol.

Torch-free and numpy-free on purpose: the Slicer GUI process imports it to follow a worker without
loading the engine. It imports nothing of the engine.

Every machine-readable line is ``PROGRESS_PREFIX`` + one JSON object with an ``"event"`` key:

- ``plan``: sent before any progress event, once the weights are loaded (again if the run restarts,
  e.g. on the CPU after a GPU out-of-memory): ``phases``, a list of ``{"phase", "units"}`` in run
  order (``template`` fit iterations with ``--start template``; ``calibration``, one unit per sample
  and guided stage when consistency is on; ``coarse`` and ``fine`` sampling steps x K; ``sr`` tiles x
  K; for the sample case ``download``, one unit per file, and ``drr``), their ``total``, ``samples``
  (K) and ``batch``. A follower draws one bar over all phases: `PlanProgress`.
- ``progress``: ``phase``, ``step`` (done, 1-based) and ``total`` of the running stage, ``eta_s`` for
  that stage; network stages and the template fit add ``stage`` (``coarse``, ``fine``, ``sr``,
  ``template_affine``, ``template_deform``); sampling and calibration add ``sample`` (first sample
  of the running batch, 1-based), ``samples`` (K) and ``batch`` (samples drawn together).
  Calibration events carry ``"phase": "calibration"`` and ``for_stage`` instead of ``stage``.
- ``message``: ``message``, a line of text for a status bar.
- ``result``: ``files`` (reconstruct: volume, std, report; sample-case: ct, cr, frontal, lateral),
  ``warnings`` (each once: what the report lists) and, for a reconstruction,
  ``reprojection_consistency``; the run succeeded.
- ``error``: ``kind`` (input, oom, cancelled, internal), ``message`` and ``exit_code``.

Exit codes: `EXIT_OK` 0, `EXIT_INTERNAL` 1 (a bug: traceback on stderr), `EXIT_INPUT` 2, `EXIT_OOM` 3,
`EXIT_SIGINT` 130 and `EXIT_SIGTERM` 143 (cancelled; nothing written).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

PROGRESS_PREFIX = "AXON_PROGRESS "

# ----------------------------------------------------------------------------- exit codes
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_OOM = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_CANCELLED = (EXIT_SIGINT, EXIT_SIGTERM)
EXIT_SIGNAL = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}

ERROR_KINDS = {"input": EXIT_INPUT, "oom": EXIT_OOM, "cancelled": EXIT_SIGINT, "internal": EXIT_INTERNAL}


def error_kind(exit_code: int | None) -> str:
    """The error kind an exit code stands for (for a follower that saw no error line)."""
    if exit_code == EXIT_INPUT:
        return "input"
    if exit_code == EXIT_OOM:
        return "oom"
    if exit_code in EXIT_CANCELLED:
        return "cancelled"
    return "internal"


# ----------------------------------------------------------------------------- phases
PHASES = ("template", "calibration", "coarse", "fine", "sr")
NETWORK_STAGES = ("coarse", "fine", "sr")
CALIBRATION = "calibration"


def phase_of(stage: str) -> str:
    """The plan phase a progress stage belongs to (``template_affine`` -> ``template``)."""
    return "template" if stage.startswith("template") else stage


# ----------------------------------------------------------------------------- events
def message_event(text: str) -> dict:
    return {"event": "message", "message": str(text)}


def plan_event(phases: Iterable[tuple[str, int]] | dict, samples: int = 1, batch: int = 1) -> dict:
    items = list(phases.items()) if isinstance(phases, dict) else list(phases)
    listed = [{"phase": str(p), "units": int(u)} for p, u in items if int(u) > 0]
    return {"event": "plan", "phases": listed, "total": sum(p["units"] for p in listed),
            "samples": int(samples), "batch": int(batch)}


def progress_event(stage: str, step: int, total: int, eta_s: float | None = None, sample: int | None = None,
                   samples: int | None = None, batch: int | None = None, phase: str | None = None) -> dict:
    """``step`` is the number of steps done (1-based). ``phase="calibration"``: ``stage`` is the network
    stage being calibrated, reported as ``for_stage``."""
    event: dict = {"event": "progress"}
    if phase == CALIBRATION:
        event.update(phase=CALIBRATION, for_stage=stage)
    else:
        event.update(phase=phase or phase_of(stage), stage=stage)
    event.update(step=int(step), total=int(total), eta_s=None if eta_s is None else round(float(eta_s), 1))
    if sample is not None:
        event.update(sample=int(sample), samples=int(samples or 1), batch=int(batch or 1))
    return event


def result_event(files: dict, warnings=(), **extra) -> dict:
    return {"event": "result", "files": dict(files), "warnings": [str(w) for w in warnings], **extra}


def report_checks_text(report: dict) -> str:
    """A one-line account of a reconstruct report's input checks (framing, lung-field Dice, chest
    measures), for the panel and the console; missing parts are left out. The warnings are not in it:
    the result event carries them, each once."""
    parts = []
    framing = report.get("framing") or {}
    views = framing.get("views") or {}
    if views:
        methods = ", ".join(f"{k} by {v.get('method', '?').replace('-', ' ')}" for k, v in views.items())
        parts.append(f"framing: {methods}; size {framing.get('size_source', '?')} "
                     f"(x{float(framing.get('size_factor', 1.0)):.2f})")
    lungs = (report.get("lung_fields") or {}).get("dice") or {}
    shown = [f"{k} {v:.2f}" for k, v in lungs.items() if isinstance(v, (int, float))]
    if shown:
        parts.append("lung-field Dice " + ", ".join(shown))
    anatomy = report.get("anatomy") or {}
    if isinstance(anatomy.get("enclosed_air_fraction"), (int, float)):
        parts.append(f"lung air {100 * anatomy['enclosed_air_fraction']:.0f} % of the body")
    return "; ".join(parts)


def error_event(kind: str, message: str, exit_code: int | None = None) -> dict:
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind must be one of {sorted(ERROR_KINDS)}, not {kind!r}")
    return {"event": "error", "kind": kind, "message": str(message),
            "exit_code": ERROR_KINDS[kind] if exit_code is None else int(exit_code)}


def format_line(event: dict) -> str:
    """One stdout line (without the newline)."""
    return PROGRESS_PREFIX + json.dumps(event, separators=(", ", ": "))


def parse_line(line: str) -> dict | None:
    """The event of a stdout line, or None for any other line (a follower skips those)."""
    line = line.rstrip("\r\n")
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(line[len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


# ----------------------------------------------------------------------------- following a run
def units_done(event: dict) -> int:
    """Work units of its phase that a progress event says are done: samples before the running batch
    did all ``total`` steps, the batch did ``step`` steps for each of its samples."""
    step, total = int(event.get("step", 0)), int(event.get("total", 0))
    first = int(event.get("sample") or 1)
    batch = int(event.get("batch") or 1)
    return max(0, (first - 1) * total + min(step, total) * batch)


@dataclass
class PlanProgress:
    """One progress fraction over every phase of a run, from its plan and progress events."""

    phases: dict = field(default_factory=dict)  # phase -> planned units
    total: int = 0
    done: dict = field(default_factory=dict)  # (phase, stage) -> units done

    def update(self, event: dict) -> float | None:
        """Feed any event; returns the run's fraction done (0-1), None before a plan arrived."""
        kind = event.get("event")
        if kind == "plan":
            self.phases = {p["phase"]: int(p["units"]) for p in event.get("phases", [])}
            self.total = int(event.get("total", sum(self.phases.values())))
            self.done = {}
        elif kind == "progress":
            key = (event.get("phase"), event.get("stage", event.get("for_stage")))
            self.done[key] = max(self.done.get(key, 0), units_done(event))
        return self.fraction

    def units(self, phase: str | None = None) -> int:
        """Units done so far (in one phase, or over all), never more than planned."""
        names = [phase] if phase else list(self.phases)
        return sum(min(self.phases.get(p, 0), sum(v for (ph, _), v in self.done.items() if ph == p)) for p in names)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.units() / self.total)


# ----------------------------------------------------------------------------- the emitter
class Cancelled(Exception):
    """Raised between steps when the user asked the run to stop."""


@dataclass
class ProgressLines:
    """The pipeline's progress callback: machine-readable lines on a stream, a human bar (tqdm) on a
    terminal, and the cancel check between steps."""

    stream: object = field(default_factory=lambda: sys.stdout)
    human: bool = False
    should_stop: Callable[[], bool] = lambda: False
    _t0: dict = field(default_factory=dict)
    _bar: object = None

    def emit(self, event: dict) -> None:
        print(format_line(event), file=self.stream, flush=True)

    def check_cancelled(self) -> None:
        """Raise `Cancelled` if the user asked to stop: between steps, and once more after the last
        step and before the outputs are committed, so a Cancel wins until the last rename."""
        if self.should_stop():
            raise Cancelled()

    def __call__(self, stage: str, step: int, total: int, sample: int | None = None, samples: int | None = None,
                 batch: int | None = None, phase: str | None = None) -> None:
        self.check_cancelled()
        now = time.time()
        start = self._t0.setdefault((phase, stage, sample), now)
        done = step + 1
        eta = (now - start) / done * (total - done) if done else None
        self.emit(progress_event(stage, done, total, eta, sample, samples, batch, phase))
        if self.human and phase != CALIBRATION:
            self._human(stage if not samples or samples == 1 else f"{stage} {sample}/{samples}", done, total)

    def message(self, text: str) -> None:
        self.emit(message_event(text))

    def plan(self, phases, samples: int = 1, batch: int = 1) -> dict:
        event = plan_event(phases, samples, batch)
        self.emit(event)
        return event

    def result(self, files: dict, warnings=(), **extra) -> None:
        self.emit(result_event(files, warnings, **extra))

    def error(self, kind: str, message: str, exit_code: int | None = None) -> None:
        self.emit(error_event(kind, message, exit_code))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _human(self, desc: str, done: int, total: int) -> None:
        from tqdm import tqdm  # only on a terminal

        if self._bar is None or self._bar.desc != desc:
            self.close()
            self._bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)
        self._bar.update(done - self._bar.n)
        if done == total:
            self.close()
