"""The reconstruct job's protocol (`axonct.app.protocol`): events, exit codes, the plan of a run, and the
one serialisation of the options (`ReconstructOptions.to_cli_args()` -> the real `axon reconstruct` parser)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from axonct.app import protocol
from axonct.options import ReconstructOptions

REPO = Path(__file__).resolve().parents[2]


def axon(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "axonct.app.cli", *args], capture_output=True, text=True, env=env, **kw)


EVENTS = [
    protocol.plan_event({"template": 200, "calibration": 4, "coarse": 8, "fine": 6, "sr": 2}, samples=2, batch=1),
    protocol.progress_event("coarse", 3, 4, eta_s=1.234, sample=2, samples=2, batch=1),
    protocol.progress_event("template_affine", 10, 120, eta_s=None),
    protocol.progress_event("fine", 1, 1, sample=1, samples=2, batch=2, phase="calibration"),
    protocol.message_event("loading weights"),
    protocol.result_event({"volume": "a.nrrd", "report": "a_report.json"}, {"frontal": {"given": True}}),
    protocol.error_event("input", "x.png: not a radiograph"),
    protocol.error_event("oom", "out of memory on cuda"),
    protocol.error_event("cancelled", "cancelled", protocol.EXIT_SIGTERM),
    protocol.error_event("internal", "ValueError: boom"),
]


def test_protocol_is_torch_and_numpy_free():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None\n"
            "from axonct.app import protocol\n"
            "p = protocol.ProgressLines(stream=sys.stdout)\n"
            "p.plan({'coarse': 2}); p('coarse', 0, 2, sample=1, samples=1, batch=1); p.message('hi')\n"
            "p.result({'volume': 'v.nrrd'}); p.error('input', 'bad')\n"
            "print(sorted(m for m in sys.modules if m.startswith('axonct')))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    kinds = [protocol.parse_line(line)["event"] for line in lines[:-1]]
    assert kinds == ["plan", "progress", "message", "result", "error"]
    assert set(eval(lines[-1])) <= {"axonct", "axonct.app", "axonct.app.protocol", "axonct.errors", "axonct.options"}


def test_every_event_kind_round_trips_through_a_line():
    for event in EVENTS:
        line = protocol.format_line(event)
        assert line.startswith(protocol.PROGRESS_PREFIX) and "\n" not in line
        assert protocol.parse_line(line + "\n") == event
    assert protocol.parse_line("a plain line") is None
    assert protocol.parse_line(protocol.PROGRESS_PREFIX + "{not json") is None
    assert protocol.parse_line(protocol.PROGRESS_PREFIX + "[1, 2]") is None
    # the fields followers read
    progress = EVENTS[1]
    assert (progress["stage"], progress["step"], progress["total"], progress["eta_s"]) == ("coarse", 3, 4, 1.2)
    assert (progress["phase"], progress["sample"], progress["samples"], progress["batch"]) == ("coarse", 2, 2, 1)
    assert EVENTS[2]["phase"] == "template" and "sample" not in EVENTS[2]
    calibration = EVENTS[3]
    assert calibration["phase"] == "calibration" and calibration["for_stage"] == "fine" and "stage" not in calibration
    assert EVENTS[0]["total"] == 220 and [p["phase"] for p in EVENTS[0]["phases"]] == list(protocol.PHASES)
    assert EVENTS[4] == {"event": "message", "message": "loading weights"}
    # a line from before the structured events still reads
    assert protocol.parse_line(protocol.PROGRESS_PREFIX + '{"stage": "sr", "step": 1, "total": 1}')["event"] == "progress"


def test_exit_codes_and_error_kinds():
    assert (protocol.EXIT_OK, protocol.EXIT_INTERNAL, protocol.EXIT_INPUT, protocol.EXIT_OOM,
            protocol.EXIT_SIGINT, protocol.EXIT_SIGTERM) == (0, 1, 2, 3, 130, 143)
    import signal

    assert protocol.EXIT_SIGNAL == {signal.SIGINT: 130, signal.SIGTERM: 143}
    assert [e["exit_code"] for e in EVENTS[6:]] == [2, 3, 143, 1]
    for code, kind in ((2, "input"), (3, "oom"), (130, "cancelled"), (143, "cancelled"), (1, "internal"), (-9, "internal")):
        assert protocol.error_kind(code) == kind
    with pytest.raises(ValueError):
        protocol.error_event("sad", "x")
    from axonct.app import cli, reconstruct_job

    assert reconstruct_job.EXIT_OOM == protocol.EXIT_OOM and reconstruct_job.EXIT_INPUT == protocol.EXIT_INPUT
    assert cli.main(["evaluate", "--pred", "p.nrrd"]) == protocol.EXIT_INPUT  # an AxonInputError in a command


def test_plan_progress_adds_units_over_phases_and_batches():
    tracker = protocol.PlanProgress()
    assert tracker.update(protocol.message_event("x")) is None
    tracker.update(protocol.plan_event({"calibration": 4, "coarse": 6, "sr": 4}, samples=2, batch=2))
    out = io.StringIO()
    lines = protocol.ProgressLines(stream=out)
    lines("coarse", 0, 1, sample=1, samples=2, batch=2, phase="calibration")
    for i in range(3):
        lines("coarse", i, 3, sample=1, samples=2, batch=2)
    lines("fine", 0, 1, sample=1, samples=2, batch=2, phase="calibration")
    for i in range(2):
        lines("sr", i, 2, sample=1, samples=2, batch=2)
    fractions = [tracker.update(protocol.parse_line(line)) for line in out.getvalue().splitlines()]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert tracker.units("coarse") == 6 and tracker.units("calibration") == 4 and tracker.units() == 14


def test_cancel_check_raises_between_steps():
    lines = protocol.ProgressLines(stream=io.StringIO(), should_stop=lambda: True)
    with pytest.raises(protocol.Cancelled):
        lines("coarse", 0, 4)


# --------------------------------------------------------------------------- a real run
def _events(stdout: str) -> list[dict]:
    return [e for e in map(protocol.parse_line, stdout.splitlines()) if e]


def _check_plan_is_covered(events: list[dict], phases: set[str]) -> None:
    plans = [e for e in events if e["event"] == "plan"]
    assert len(plans) == 1
    plan = plans[0]
    assert {p["phase"] for p in plan["phases"]} == phases
    assert [p["phase"] for p in plan["phases"]] == [p for p in protocol.PHASES if p in phases]  # run order
    assert events.index(plan) < min(i for i, e in enumerate(events) if e["event"] == "progress")
    tracker = protocol.PlanProgress()
    for e in events:
        tracker.update(e)
    for p in plan["phases"]:  # every phase reports exactly the units it planned
        reported = sum(v for (ph, _), v in tracker.done.items() if ph == p["phase"])
        assert reported == p["units"], (p, tracker.done)
    assert tracker.units() == plan["total"] and tracker.fraction == 1.0
    assert events[-1]["event"] == "result" and set(events[-1]["files"]) >= {"volume", "report"}


def test_the_plan_covers_every_phase_of_a_run(tiny_weights, frontal, tmp_path):
    """Consistency on, K = 2 (one at a time on a CPU): calibrations, coarse, fine, SR."""
    proc = axon("reconstruct", "--frontal", str(frontal), "--out", str(tmp_path / "a.nrrd"), "--weights",
                str(tiny_weights), "--device", "cpu", "--steps", "2", "--samples", "2")
    assert proc.returncode == protocol.EXIT_OK, proc.stderr
    events = _events(proc.stdout)
    _check_plan_is_covered(events, {"calibration", "coarse", "fine", "sr"})
    plan = next(e for e in events if e["event"] == "plan")
    units = {p["phase"]: p["units"] for p in plan["phases"]}
    assert units["coarse"] == 2 * 2 and units["calibration"] == 2 * 2 and plan["samples"] == 2
    calibrations = [e for e in events if e.get("phase") == "calibration"]
    assert {e["for_stage"] for e in calibrations} == {"coarse", "fine"} and not any("stage" in e for e in calibrations)
    assert {e["sample"] for e in events if e.get("stage") == "fine"} == {1, 2}
    assert {e["stage"] for e in events if "stage" in e} == {"coarse", "fine", "sr"}


def test_the_plan_of_a_template_start(tiny_weights, frontal, tmp_path):
    """--start template: the template fit's iterations, Stage II's calibration only, no Stage I."""
    proc = axon("reconstruct", "--frontal", str(frontal), "--out", str(tmp_path / "t.nrrd"), "--weights",
                str(tiny_weights), "--device", "cpu", "--steps", "2", "--start", "template")
    assert proc.returncode == protocol.EXIT_OK, proc.stderr
    events = _events(proc.stdout)
    _check_plan_is_covered(events, {"template", "calibration", "fine", "sr"})
    assert {e["stage"] for e in events if e.get("phase") == "template"} == {"template_affine", "template_deform"}


def test_an_input_error_is_an_error_event_and_exit_code(tiny_weights, frontal, tmp_path):
    proc = axon("reconstruct", "--frontal", str(frontal), "--out", str(tmp_path / "e.nrrd"),
                "--weights", str(tmp_path / "nowhere"), "--device", "cpu")
    assert proc.returncode == protocol.EXIT_INPUT
    errors = [e for e in _events(proc.stdout) if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["kind"] == "input" and errors[0]["exit_code"] == protocol.EXIT_INPUT
    assert "weights folder not found" in errors[0]["message"]
    assert "axon reconstruct: error:" in proc.stderr and "weights folder not found" in proc.stderr


# --------------------------------------------------------------------------- the options, serialised once
@pytest.mark.parametrize("opts", [
    ReconstructOptions(),
    ReconstructOptions(device="cpu", precision="fp32", steps=7, samples=3, seed=2**32 - 1, consistency=False,
                       consistency_strength=0.0, start="template", fine_strength=0.35),
    ReconstructOptions(device="cuda:1", precision="bf16", steps=None, samples=64, seed=0, consistency=True,
                       consistency_strength=2.5, fine_strength=1.0),
    ReconstructOptions(consistency_strength=0.1 + 0.2, fine_strength=1 / 3),  # floats that print long
])
def test_options_round_trip_through_the_real_parser(opts):
    from axonct.app.cli import build_parser, reconstruct_options

    args = build_parser().parse_args(["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", *opts.to_cli_args()])
    assert reconstruct_options(args) == opts.validate()
    assert ReconstructOptions.from_dict(opts.to_dict()) == opts
