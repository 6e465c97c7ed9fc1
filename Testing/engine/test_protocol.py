"""The worker protocol (`axonct.app.protocol`): events, exit codes, the plan of a run, the events as the
only channel of a result (no plain-JSON line, each warning once), `axon sample-case` under the same
protocol, and the options as one JSON document (`ReconstructOptions.to_json` -> `axon reconstruct
--options`)."""

from __future__ import annotations

import io
import json
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
    protocol.result_event({"volume": "a.nrrd", "report": "a_report.json"}, ["little lung air"],
                          reprojection_consistency={"frontal": {"given": True}}),
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
    assert EVENTS[5]["warnings"] == ["little lung air"] and EVENTS[5]["reprojection_consistency"]
    # an object without its "event" is not an event (the worker and its followers ship together)
    assert protocol.parse_line(protocol.PROGRESS_PREFIX + '{"stage": "sr", "step": 1, "total": 1}') is None
    assert not hasattr(protocol, "parse_progress_line")


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
    from axonct.app import cli

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


def _run(tiny_weights, frontal, out, *extra) -> list[dict]:
    """A tiny reconstruction's events; every stdout line is one (the events are the only channel)."""
    proc = axon("reconstruct", "--frontal", str(frontal), "--out", str(out), "--weights", str(tiny_weights),
                "--device", "cpu", "--steps", "2", *extra)
    assert proc.returncode == protocol.EXIT_OK, proc.stderr
    events = _events(proc.stdout)
    assert len(events) == len(proc.stdout.splitlines())  # no plain-JSON last line, nothing else
    result = events[-1]
    report = json.loads(Path(result["files"]["report"]).read_text())
    assert result["warnings"] == report["warnings"]  # each warning once: in the result, as in the report
    assert not [e for e in events if e["event"] == "message" and "warning" in e["message"].lower()]
    assert proc.stderr.count("warning:") == len(report["warnings"])  # and once for a person on stderr
    return events


def test_the_plan_covers_every_phase_of_a_run(tiny_weights, frontal, tmp_path):
    """Consistency on, K = 2 (one at a time on a CPU): calibrations, coarse, fine, SR."""
    events = _run(tiny_weights, frontal, tmp_path / "a.nrrd", "--samples", "2")
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
    events = _run(tiny_weights, frontal, tmp_path / "t.nrrd", "--start", "template")
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


# --------------------------------------------------------------------------- the sample case, same protocol
def test_sample_case_speaks_the_protocol_and_reuses_its_drrs(real_ct_path, tmp_path):
    """`axon sample-case`: a plan, progress over it, a result naming four files that exist; a second run
    computes nothing (the DRRs are kept); a file at --out is refused in one event and one line."""
    from axonct.io.sample_data import sample_ct_path

    assert sample_ct_path() == real_ct_path  # the run below uses the engine's own sample CT
    out = tmp_path / "case"
    proc = axon("sample-case", "--out", str(out), "--no-download", timeout=900)
    assert proc.returncode == protocol.EXIT_OK, proc.stderr
    events = _events(proc.stdout)
    assert len(events) == len(proc.stdout.splitlines())
    tracker = protocol.PlanProgress()
    for e in events:
        tracker.update(e)
    assert events[0]["event"] == "plan" and tracker.fraction == 1.0
    files = events[-1]["files"]
    assert events[-1]["event"] == "result" and set(files) == {"ct", "cr", "frontal", "lateral"}
    assert all(Path(f).is_file() for f in files.values()) and Path(files["frontal"]).parent == out
    assert "axon_geometry" in Path(files["frontal"]).read_bytes()[:65536].decode("latin-1")
    again = _events(axon("sample-case", "--out", str(out), "--no-download", timeout=900).stdout)
    assert not any(e.get("phase") == "drr" for e in again) and again[-1]["files"] == files
    (tmp_path / "a_file").write_text("")
    refused = axon("sample-case", "--out", str(tmp_path / "a_file"), "--no-download")
    errors = [e for e in _events(refused.stdout) if e["event"] == "error"]
    assert refused.returncode == protocol.EXIT_INPUT and len(errors) == 1 and errors[0]["kind"] == "input"
    assert refused.stderr.strip().splitlines() == [f"axon sample-case: error: {errors[0]['message']}"]


# --------------------------------------------------------------------------- the options, one JSON document
OPTION_SETS = [
    ReconstructOptions(),
    ReconstructOptions(device="cpu", precision="fp32", steps=7, samples=3, seed=2**32 - 1, consistency=False,
                       consistency_strength=0.0, start="template", fine_strength=0.35),
    ReconstructOptions(device="cuda:1", precision="bf16", steps=None, samples=64, seed=0, consistency=True,
                       consistency_strength=2.5, fine_strength=1.0, framing="none", thorax_width_mm=185.0,
                       lung_fields=False),
    ReconstructOptions(consistency_strength=0.1 + 0.2, fine_strength=1 / 3),  # floats that print long
]


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_options_reach_the_worker_as_one_json_document(opts, tmp_path):
    from axonct.app.cli import build_parser, reconstruct_options

    document = tmp_path / "options.json"
    document.write_text(opts.to_json())
    args = build_parser().parse_args(["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--options",
                                      str(document)])
    assert reconstruct_options(args) == opts.validate()
    assert ReconstructOptions.from_dict(opts.to_dict()) == opts


@pytest.mark.parametrize("document,words", [
    ('{"samples": 0}', ["--samples must be a whole number from 1 to 64 (got 0)"]),
    ('{"consistency": "on"}', ["--consistency must be on or off"]),
    ('{"strength": 1}', ["unknown reconstruction options: strength"]),
    ('[1, 2]', ["JSON object"]),
    ('{"samples": ', ["is not a JSON document of reconstruction options"]),
])
def test_a_bad_options_document_is_refused_in_one_line_naming_it(tmp_path, document, words):
    path = tmp_path / "options.json"
    path.write_text(document)
    proc = axon("reconstruct", "--frontal", "f.png", "--out", str(tmp_path / "o.nrrd"), "--options", str(path))
    assert proc.returncode == protocol.EXIT_INPUT
    line, = proc.stderr.strip().splitlines()
    for word in [str(path), *words]:
        assert word in line, (word, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["options.json"]


def test_options_document_and_option_flags_do_not_mix(tmp_path):
    path = tmp_path / "options.json"
    path.write_text(ReconstructOptions(samples=2).to_json())
    proc = axon("reconstruct", "--frontal", "f.png", "--out", str(tmp_path / "o.nrrd"), "--options", str(path),
                "--samples", "1", "--seed", "3")
    assert proc.returncode == protocol.EXIT_INPUT
    assert "leave out --samples, --seed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
