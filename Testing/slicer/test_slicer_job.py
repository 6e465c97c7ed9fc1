"""The panel's background jobs (`AXONReconstructionLib.job` and its two jobs): the options document the
worker is started with, the progress it shows from the worker's plan, the events as the worker's only
channel (its stderr only a log), the sample case prepared by `axon sample-case`, and no torch in the GUI."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core)")

from axonct.app import protocol  # noqa: E402
from axonct.options import ReconstructOptions  # noqa: E402

from AXONReconstructionLib import job as jobs  # noqa: E402
from AXONReconstructionLib.logic import Job, ReconstructionLogic  # noqa: E402
from AXONReconstructionLib.panel import optionsFromPanel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

PANELS = [
    {},  # the parameter node's defaults
    {"device": "cpu", "precision": "fp32", "steps": 25, "samples": 4, "seed": 2.0**32 - 1, "consistency": False,
     "consistencyStrength": 0.0, "start": "template", "fineStrength": 0.35, "framing": False,
     "lungFields": False, "thoraxWidthMm": 185.0},
    {"device": "cuda", "precision": "bf16", "steps": 0, "samples": 64, "seed": 7.0, "consistency": True,
     "consistencyStrength": 2.3, "start": "stage1", "fineStrength": -0.05, "thoraxWidthMm": 55.0},
]


@pytest.mark.parametrize("values", PANELS)
def test_panel_values_reach_the_real_parser_as_the_same_options(values, tmp_path):
    """The panel's values -> `ReconstructOptions` -> the JSON document -> `axon reconstruct --options`."""
    from axonct.app.cli import build_parser, reconstruct_options

    opts = optionsFromPanel(values)
    assert opts.steps == (values.get("steps") or None)  # the lowest value on the panel = the weights' default
    assert opts.fine_strength == (None if values.get("fineStrength", -1) < 0 else values["fineStrength"])
    assert opts.thorax_width_mm == (values["thoraxWidthMm"] if values.get("thoraxWidthMm", 0) >= 60 else None)
    assert opts.framing == ("auto" if values.get("framing", True) else "none")
    assert isinstance(opts.seed, int) and opts.seed == int(values.get("seed", 0))
    document = tmp_path / "options.json"
    document.write_text(opts.to_json())
    args = build_parser().parse_args(["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--options",
                                      str(document)])
    assert reconstruct_options(args) == opts


def test_the_worker_is_started_with_one_options_document(scene, tmp_path, monkeypatch):
    """startReconstruction writes the options once, as the JSON document `--options` names."""
    import numpy as np

    started = []

    class FakeProcess:
        def __init__(self, args, env=None, cwd=None, log=None):
            started.append([list(args), Path(args[args.index("--options") + 1]).read_text()])

    monkeypatch.setattr(jobs, "WorkerProcess", FakeProcess)
    weights = tmp_path / "weights"
    weights.mkdir()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frontal")
    slicer.util.updateVolumeFromArray(node, np.arange(256 * 256, dtype=np.uint16).reshape(1, 256, 256))
    logic = ReconstructionLogic(tempRoot=tmp_path)
    opts = ReconstructOptions(device="cpu", steps=3, samples=2, seed=9, consistency_strength=0.5, start="template")
    logic.startReconstruction(node, weightsPath=weights, options=opts)
    args, document = started[0]
    assert args[1:4] == ["-m", "axonct.app.cli", "reconstruct"]
    assert ReconstructOptions.from_dict(json.loads(document)) == opts
    assert not any(a.startswith("--steps") or a == "--samples" for a in args)  # no option flag beside it
    logic._job = None  # nothing runs (FakeProcess): drop the job by hand
    logic.startReconstruction(node, weightsPath=weights, device="cpu", steps=3, samples=2, seed=9,
                              consistency_strength=0.5, start="template")
    assert json.loads(started[1][1]) == json.loads(document)  # the option fields as keywords give the same
    logic._job = None
    with pytest.raises(ValueError, match="unknown reconstruction options: consistencyStrength"):
        logic.startReconstruction(node, weightsPath=weights, consistencyStrength=0.5)


def test_job_modules_do_not_load_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import AXONReconstructionLib.logic, AXONReconstructionLib.job, AXONReconstructionLib.panel\n"
            "import AXONReconstructionLib.reconstruction, AXONReconstructionLib.sampledata\n"
            "AXONReconstructionLib.sampledata.sampleDataSources()\n"
            "print(sorted(m for m, v in sys.modules.items() if v is not None and m.startswith(('axonct', 'torch'))))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "AXONReconstruction"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert set(ast.literal_eval(proc.stdout.splitlines()[-1])) <= {
        "axonct", "axonct.app", "axonct.app.protocol", "axonct.errors", "axonct.options", "axonct.io",
        "axonct.io.sample_data", "axonct.atomic"}


# --------------------------------------------------------------------------- progress from the plan
def _job() -> Job:
    return Job(kind=None, process=None, tempDir=Path("."))


def test_progress_follows_the_plan_over_every_phase_in_order():
    logic = ReconstructionLogic()
    job = _job()
    steps = {"coarse": 4, "fine": 4, "sr": 2}
    job.plan.update(protocol.plan_event({"calibration": 4, **{k: 2 * v for k, v in steps.items()}}, samples=2))
    job.planStarted = 0.0
    fractions, seen = [], []
    for k in (1, 2):
        for stage, total in steps.items():
            if stage != "sr":
                calibration = protocol.progress_event(stage, 1, 1, sample=k, samples=2, batch=1, phase="calibration")
                e = logic._progressEvent(calibration, job, now=10.0)
                assert e["phase"] == "calibration" and e["stage"] == stage
                fractions.append(e["fraction"])
            for step in range(1, total + 1):
                event = protocol.progress_event(stage, step, total, eta_s=1.0, sample=k, samples=2, batch=1)
                e = logic._progressEvent(event, job, now=10.0)
                assert (e["stage"], e["sample"], e["samples"]) == (stage, k, 2)
                fractions.append(e["fraction"])
                seen.append(e)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert 0 < fractions[0] < 0.1  # a calibration is one unit of 24, not a stage's fixed time share
    # halfway through the run (all of sample 1 done), half the time is left
    half = next(e for e in seen if e["stage"] == "sr" and e["sample"] == 1 and e["step"] == 2)
    assert half["fraction"] == pytest.approx(0.5) and half["text"].endswith("about 10 s left")


def test_status_text_says_stage_samples_step_and_time_left():
    fine = protocol.progress_event("fine", 7, 20, eta_s=3.0, sample=1, samples=4, batch=2)
    assert jobs.progressText(fine, 12.0) == "Stage II (fine), samples 1-2 of 4, step 7/20, about 12 s left"
    one = protocol.progress_event("fine", 3, 20, eta_s=12.0, sample=1, samples=1, batch=1)
    assert jobs.progressText(one, 12.0) == "Stage II (fine), step 3/20, about 12 s left"
    second = protocol.progress_event("sr", 1, 8, sample=2, samples=2, batch=1)
    assert jobs.progressText(second) == "Stage III (super-resolution), sample 2 of 2, step 1/8"
    calibration = protocol.progress_event("coarse", 1, 1, sample=1, samples=1, batch=1, phase="calibration")
    assert jobs.progressText(calibration) == "Calibrating the views for Stage I (coarse)"
    template = protocol.progress_event("template_deform", 40, 80, eta_s=100.0)
    assert jobs.progressText(template, 150) == "Template fit (deformation), step 40/80, about 2.5 min left"
    # every worker sends its plan first: a progress event before one moves no bar (no older-worker guess)
    e = ReconstructionLogic()._progressEvent(protocol.progress_event("fine", 3, 20, eta_s=12.0), _job())
    assert e["fraction"] == 0.0 and e["text"] == "Stage II (fine), step 3/20, about 12 s left"


# --------------------------------------------------------------------------- the sample case in the background
def test_sample_case_is_prepared_in_a_worker_and_loaded(scene, tmp_path):
    from AXONReconstructionLib import sampledata

    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    logic = ReconstructionLogic(tempRoot=temp_root, environment={"OMP_NUM_THREADS": "1"})
    logic.startSampleCase(tmp_path / "cache", allowDownload=False)
    assert logic.isRunning() and logic.runningJobKind() == "sampleCase"
    events = []
    final = logic.waitForCompletion(timeout_s=900, onEvent=events.append)
    assert final["type"] == "done" and final["kind"] == "sampleCase", final
    nodes = final["nodes"]
    assert set(nodes) == {"ct", "frontal", "lateral", "cr"}
    assert nodes["frontal"].GetName() == sampledata.DRR_NODES["frontal"]
    assert nodes["frontal"].GetImageData().GetDimensions()[:2] == (128, 128)
    assert any(e["type"] == "message" and "DRR" in e["text"] for e in events)
    fractions = [e["fraction"] for e in events if e["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # one bar over its plan
    assert not logic.isRunning() and list(temp_root.iterdir()) == []


def test_sample_case_worker_can_be_cancelled(scene, tmp_path):
    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    logic = ReconstructionLogic(tempRoot=temp_root, environment={"OMP_NUM_THREADS": "1"})
    before = scene.GetNumberOfNodes()
    logic.startSampleCase(tmp_path / "cache", allowDownload=False)
    pid = logic._job.process.pid
    deadline = time.time() + 300
    while not any(e["type"] == "message" and "DRR" in e["text"] for e in logic.poll()):  # computing the DRRs
        assert time.time() < deadline and logic.isRunning()
        time.sleep(0.1)
    assert logic.cancel()
    assert not logic.isRunning() and scene.GetNumberOfNodes() == before and list(temp_root.iterdir()) == []
    drrs = tmp_path / "cache" / "AXON-sample-case"
    assert not drrs.exists() or not [p.name for p in drrs.iterdir() if p.name != ".axon-outputs.json"]
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_a_worker_that_ends_without_an_event_is_named_with_its_exit_code_and_log(scene, tmp_path):
    """No event, no guessing from stderr: the exit code, and the log (the worker's stderr) kept to read."""
    class Broken:
        name = "broken"

        def arguments(self, folder):
            return ["no-such-command"]

    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    logic = ReconstructionLogic(tempRoot=temp_root)
    logic.startJob(Broken())
    final = logic.waitForCompletion(timeout_s=300)
    assert final["type"] == "error" and final["returncode"] == 2 and final["kind"] == "input"
    log = next(temp_root.iterdir())
    assert final["message"] == f"the engine stopped with exit code 2 before it could report why; its log: {log}"
    assert "no-such-command" in log.read_text()  # what argparse said is there, for a person
