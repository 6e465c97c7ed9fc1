"""The web app's layer without a browser or trame (CI's main environment: slicer-core, real MRML, the real
worker): where uploads and server files may come from and go to, option values typed as text, and the
workflow over the Slicer module's Lib (inputs read by the engine's readers, reconstruct, busy, cancel,
compare, export, segmentation). The page itself is tested in a real browser by test_web_browser.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` package is not slicer-core", allow_module_level=True)

from axonct.errors import AxonInputError  # noqa: E402
from axonct.options import ReconstructOptions  # noqa: E402
from axonweb.files import ServerFiles, WorkFolder, safe_name  # noqa: E402
from axonweb.workflow import Busy, Workflow, option_defaults, parse_options  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- files
def test_client_file_names_cannot_pick_a_path():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\me\\chest pa.png") == "chest_pa.png"
    assert safe_name(".bashrc") == "bashrc"
    assert safe_name("..") == "" and safe_name("/") == "" and safe_name(None) == ""


def test_uploads_go_to_a_new_folder_under_the_work_folder(tmp_path):
    work = WorkFolder(tmp_path / "work", max_upload_mb=1)
    path, name = work.save_upload("frontal", [{"name": "../../escape.png", "size": 3, "content": b"abc"}])
    assert name == "escape.png" and path.read_bytes() == b"abc"
    assert path.parent.parent == work.uploads and path.parent.name.endswith("-frontal")
    again, _ = work.save_upload("frontal", [{"name": "escape.png", "content": [b"ab", b"cd"]}])  # chunked content
    assert again.parent != path.parent and again.read_bytes() == b"abcd" and path.read_bytes() == b"abc"
    folder, shown = work.save_upload("truth", [{"name": f"s{i}.dcm", "content": b"x"} for i in range(3)])
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == ["s0.dcm", "s1.dcm", "s2.dcm"]
    assert shown.startswith("3 files")
    assert not list(tmp_path.glob("escape.png")) and not (tmp_path / "work" / "escape.png").exists()


def test_uploads_over_the_limit_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    work = WorkFolder(tmp_path / "work", max_upload_mb=1)
    with pytest.raises(AxonInputError, match=r"^big\.png: is 1\.5 MB; uploads are limited to 1\.0 MB "
                                             r"\(axon app --max-upload-mb\)$"):
        work.save_upload("frontal", [{"name": "big.png", "size": 10, "content": b"\0" * 1_500_000}])
    with pytest.raises(AxonInputError, match=r"^the 2 files together are 1\.2 MB; uploads are limited"):
        work.save_upload("truth", [{"name": f"{i}.dcm", "content": b"\0" * 600_000} for i in range(2)])
    with pytest.raises(AxonInputError, match="uploaded twice"):
        work.save_upload("truth", [{"name": "a.dcm", "content": b"1"}, {"name": "../a.dcm", "content": b"2"}])
    with pytest.raises(AxonInputError, match="no file arrived"):
        work.save_upload("frontal", [])
    assert list(work.uploads.iterdir()) == []


def test_server_files_only_under_the_data_folder(tmp_path):
    data = tmp_path / "data"
    (data / "series").mkdir(parents=True)
    (data / "pa.png").write_bytes(b"x")
    (data / "series" / "1.dcm").write_bytes(b"x")
    (data / "notes.txt").write_text("x")
    (data / ".hidden.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", data / "link.png")
    files = ServerFiles(data)
    assert files.resolve("pa.png") == ((data / "pa.png").resolve(), "pa.png")
    assert files.resolve(str(data / "series"))[1] == "series"
    for text in ("../secret.png", "link.png", str(tmp_path / "secret.png"), "series/../../secret.png"):
        with pytest.raises(AxonInputError, match=r"is outside the folder this app serves files from"):
            files.resolve(text)
    with pytest.raises(AxonInputError, match=r"^nope\.png: does not exist$"):
        files.resolve("nope.png")
    assert files.listing() == ["link.png", "pa.png", "series/", "series/1.dcm"]


def test_the_start_line_says_who_can_reach_the_app():
    from axonweb.command import binding_note, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    assert binding_note("127.0.0.1", 8080, "/data").startswith("listening on 127.0.0.1 only")
    note = binding_note("0.0.0.0", 8080, "/data")
    assert note.startswith("WARNING: listening on 0.0.0.0: anyone who can reach this machine's port 8080")
    assert "/data" in note and "no login" in note


# ----------------------------------------------------------------------------- options typed in the page
def _cli_message(capsys, *flags: str) -> str:
    from axonct.app.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["reconstruct", "--frontal", "f.png", "--out", "r.nrrd", *flags])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    return line.split(": error: ", 1)[1]


@pytest.mark.parametrize("flag,name,text", [("--steps", "steps", "0"), ("--seed", "seed", "-1"),
                                            ("--samples", "samples", "abc"), ("--consistency-strength",
                                                                              "consistency_strength", "9"),
                                            ("--thorax-width-mm", "thorax_width_mm", "10"),
                                            ("--device", "device", " ")])
def test_a_bad_option_reads_as_the_command_line_says_it(capsys, flag, name, text):
    expected = _cli_message(capsys, flag, text)
    with pytest.raises(AxonInputError) as refused:
        parse_options({**option_defaults(), name: text})
    assert str(refused.value) == expected


def test_the_forms_defaults_are_the_engines_and_empty_means_unset():
    assert parse_options(option_defaults()) == ReconstructOptions()
    chosen = parse_options({**option_defaults(), "steps": " 12 ", "fine_strength": "", "consistency": False,
                            "framing": "none", "device": "cpu"})
    assert (chosen.steps, chosen.fine_strength, chosen.consistency, chosen.framing, chosen.device) == \
        (12, None, False, "none", "cpu")


# ----------------------------------------------------------------------------- the workflow on the Lib
@pytest.fixture
def flow(scene, tiny_weights, tiny_cache, tmp_path):
    from PIL import Image

    from AXONReconstructionLib.logic import ReconstructionLogic

    data = tmp_path / "data"
    data.mkdir()
    case_dir = sorted((tiny_cache / "cases").iterdir())[0]
    drr = np.load(case_dir / "drr.npy")
    for i, view in enumerate(("frontal", "lateral")):
        Image.fromarray((drr[i] / drr[i].max() * 65535).astype(np.uint16)).save(data / f"{view}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + np.arange(3, dtype=np.uint8)).save(data / "colour.png")
    ct = Path(json.loads((case_dir / "case.json").read_text())["source"])
    shutil.copy(ct, data / ("ct" + "".join(ct.suffixes)))  # a copy: a link out of the data folder is refused
    work = WorkFolder(tmp_path / "work")
    logic = ReconstructionLogic(tempRoot=work.jobs, environment={"OMP_NUM_THREADS": "1"})
    wf = Workflow(work, ServerFiles(data), tiny_weights, logic=logic)
    yield wf
    wf.close()


def _wait(wf: Workflow, timeout_s: float = 600) -> list[dict]:
    deadline, seen = time.time() + timeout_s, []
    while wf.logic.isRunning():
        assert time.time() < deadline, f"the job did not end in {timeout_s:g} s; status {wf.status!r}"
        seen += wf.poll()
        time.sleep(0.1)
    return seen + wf.poll()


def test_inputs_are_read_by_the_engines_readers_with_their_messages(flow, tmp_path):
    from axonct.io.radiograph import read_radiograph

    colour = flow.server_files.root / "colour.png"
    with pytest.raises(AxonInputError) as engine:
        read_radiograph(colour, view="frontal")
    with pytest.raises(AxonInputError) as page:
        flow.choose_server_file("frontal", "colour.png")
    assert str(page.value) == str(engine.value).replace(str(colour), "colour.png")
    with pytest.raises(AxonInputError, match=r"^frontal\.png: .*CT"):  # a radiograph is no ground truth
        flow.choose_server_file("truth", "frontal.png")
    assert flow.snapshot()["inputs"] == {"frontal": None, "lateral": None, "truth": None}

    flow.choose_server_file("frontal", "frontal.png")
    shown = flow.snapshot()["inputs"]["frontal"]
    assert shown["name"] == "frontal.png" and shown["source"] == "server"
    assert shown["thumbnail"].startswith("data:image/png;base64,")
    node = flow.node(flow.inputs["frontal"].node_id)
    assert slicer.util.arrayFromVolume(node).shape[0] == 1  # one 2-D image
    first = node.GetID()
    flow.choose_server_file("frontal", "lateral.png")  # replacing an input removes the node it loaded
    assert flow.node(first) is None


def test_reconstruct_busy_cancel_compare_export_segment(flow):
    flow.choose_server_file("frontal", "frontal.png")
    flow.choose_server_file("lateral", "lateral.png")
    flow.choose_server_file("truth", next(p.name for p in flow.server_files.root.iterdir() if p.name.startswith("ct")))
    with pytest.raises(AxonInputError, match=r"^argument --steps: 0 is out of range"):
        flow.start_reconstruction({"steps": "0"})
    assert not flow.logic.isRunning()

    jobs_before = sorted(flow.work.jobs.iterdir())
    nodes_before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    flow.start_reconstruction({"steps": "200", "device": "cpu", "precision": "fp32"})
    with pytest.raises(Busy, match=r"^AXON is busy: a reconstruction started at \d\d:\d\d:\d\d is running"):
        flow.start_reconstruction()
    with pytest.raises(Busy):
        flow.choose_server_file("frontal", "lateral.png")
    assert flow.snapshot()["busy"] and flow.snapshot()["busy_text"].startswith("AXON is busy")
    deadline = time.time() + 600
    while not any(e["type"] == "progress" for e in flow.poll()):
        assert time.time() < deadline and flow.logic.isRunning(), (flow.status, flow.error)
        time.sleep(0.1)
    assert flow.cancel()
    assert flow.status.startswith("Cancelled") and not flow.snapshot()["busy"]
    assert sorted(flow.work.jobs.iterdir()) == jobs_before
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == nodes_before
    assert flow.result_node() is None

    flow.start_reconstruction({"steps": "2"})
    events = _wait(flow)
    done = [e for e in events if e["type"] == "done"]
    assert done, (flow.status, flow.error)
    result = flow.result_node()
    assert result is not None and result.GetName() == "AXON CT from frontal + lateral"
    shown = flow.snapshot()
    assert shown["result"]["name"] == result.GetName() and shown["warnings"] == \
        [str(w) for w in (done[0].get("warnings") if done[0].get("warnings") is not None
                          else done[0]["report"].get("warnings", []))]
    assert shown["status"].startswith("Done in") and not shown["busy"] and shown["error"] == ""

    comparison = flow.compare()
    metrics = {row["metric"]: row for row in comparison["rows"]}
    assert set(metrics) >= {"PSNR (honest)", "SSIM (honest)", "PSNR (X2CT convention)", "MAE"}
    assert 0 < float(metrics["PSNR (honest)"]["value"]) < 60 and float(metrics["MAE"]["value"]) > 0
    assert flow.node(comparison["differenceID"]) is not None

    for fmt in ("nrrd", "nifti", "dicom"):
        record = flow.export(fmt)
        download = Path(record["download"])
        assert download.is_relative_to(flow.work.exports) and download.stat().st_size == record["bytes"] > 0
    assert download.suffix == ".zip"
    members = zipfile.ZipFile(download).namelist()
    assert members and all(n.endswith(".dcm") for n in members)  # no output-policy manifest in the download
    assert len(members) == result.GetImageData().GetDimensions()[2]

    segments = {s["name"]: s["ml"] for s in flow.create_segmentation()["segments"]}
    assert set(segments) == {"body", "lungs", "bone"} and segments["body"] > 0


def test_axon_app_without_the_app_extra_says_what_to_install(tmp_path):
    """In an environment without trame (CI's main one), one line and exit 2, nothing written."""
    pytest.importorskip("axonweb")
    if __import__("importlib").util.find_spec("trame_slicer") is not None:
        pytest.skip("trame-slicer is installed here")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("AXONReconstruction", "AXONWeb")))
    for command in (["axonct.app.cli", "app"], ["axonweb"]):  # `axon app`, and `python -m axonweb`
        proc = subprocess.run([sys.executable, "-m", *command, "--work-dir", tmp_path / "w"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            'axon app: error: the web app needs trame, trame-slicer: pip install "axon-xray2ct[app]"']
        assert not (tmp_path / "w").exists()


def test_axon_help_loads_no_trame_or_torch():
    """`axon app` is registered from axonweb.command, which imports only the standard library and
    the torch-free options: every `axon ... --help` stays light."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("AXONReconstruction", "AXONWeb")))
    code = ("import sys\nfrom axonct.app.cli import build_parser\n"
            "sub = build_parser()._subparsers._group_actions[0]\nassert 'app' in sub.choices, sorted(sub.choices)\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'trame', 'trame_slicer', 'slicer', 'vtk') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
