"""The `axon` command line: help texts, `axon drr` outputs and errors, `axon benchmark drr` output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]


def axon(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"axon {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("command,expected", [
    ([], ["demo", "reconstruct", "evaluate", "train", "drr", "prepare", "benchmark", "fetch-data"]),
    (["drr"], ["--ct", "--out", "--views", "--realism", "--preset", "--sid", "--keep-bed"]),
    (["prepare"], ["--ct", "--out", "--workers", "--train-list", "--test-list", "--seed"]),
    (["benchmark"], ["drr", "pipeline", "--sizes", "--device", "--json", "--projection-only"]),
    (["reconstruct"], ["--frontal", "--lateral", "--out", "--weights", "--steps", "--samples", "--seed", "--device"]),
    (["evaluate"], ["--pred", "--gt", "--data", "--split", "--weights"]),
    (["train"], ["coarse", "baseline", "--data", "--config", "--resume"]),
    (["demo"], ["--out"]),
    (["fetch-data"], ["--dir"]),
])
def test_help(command, expected):
    out = axon(*command, "--help").stdout
    for word in expected:
        assert word in out, (command, word)


def test_drr_writes_views_with_geometry(real_ct_path, tmp_path):
    out = tmp_path / "views"
    axon("drr", "--ct", str(real_ct_path), "--out", str(out), "--preset", "tiny", "--seed", "3")
    info = json.loads((out / "geometry.json").read_text())
    for name in ("frontal", "lateral", "frontal_realistic", "lateral_realistic", "ct_model_grid"):
        assert (out / info["files"][name]).exists()
    assert (out / "montage.png").exists() and (out / "frontal.png").exists()
    frontal = sitk.ReadImage(str(out / "frontal.nrrd"))
    assert frontal.GetSize() == (64, 64)
    assert np.allclose(frontal.GetSpacing(), (500 / 64, 500 / 64))
    assert frontal.GetMetaData("axon_view") == "frontal"
    assert info["views"]["lateral"]["source_mm"] == pytest.approx([-541.0, 0.0, 0.0], abs=1e-6)
    cube = sitk.ReadImage(str(out / "ct_model_grid.nrrd"))
    assert cube.GetSize() == (64, 64, 64) and np.allclose(cube.GetSpacing(), (5.0, 5.0, 5.0))
    assert np.allclose(cube.GetDirection(), np.eye(3).ravel())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_drr_bad_input_names_the_file_and_leaves_nothing(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"garbage")
    out = tmp_path / "views"
    proc = axon("drr", "--ct", str(bad), "--out", str(out), "--preset", "tiny", check=False)
    assert proc.returncode == 2
    assert "scan.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]


def test_drr_refuses_impossible_geometry(real_ct_path, tmp_path):
    proc = axon("drr", "--ct", str(real_ct_path), "--out", str(tmp_path / "o"), "--sid", "900", "--sdd", "800",
                check=False)
    assert proc.returncode == 2 and "--sdd" in proc.stderr


def test_benchmark_drr_reports_a_table_and_json(tmp_path):
    result = tmp_path / "bench.json"
    proc = axon("benchmark", "drr", "--sizes", "32", "--repeats", "1", "--device", "cpu", "--json", str(result))
    data = json.loads(result.read_text())
    assert data["benchmark"] == "drr" and data["rows"][0]["ct"] == "32^3"
    assert data["rows"][0]["median_s"] > 0 and "machine" in data
    assert "median_s" in proc.stdout


def test_benchmark_pipeline_reports_each_stage(tmp_path):
    result = tmp_path / "pipe.json"
    axon("benchmark", "pipeline", "--config", "tiny", "--steps", "2", "--device", "cpu", "--json", str(result))
    data = json.loads(result.read_text())
    assert [r["stage"] for r in data["rows"]] == ["coarse", "fine", "sr", "total"]
    for r in data["rows"]:
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 0 and r["gflop"] > 0 and r["projected_h100_s"] >= 0
    assert data["rows"][-1]["gflop"] == pytest.approx(sum(r["gflop"] for r in data["rows"][:3]), abs=0.2)
    # the same --json again replaces an earlier AXON output only with --overwrite (issue 15)
    again = axon("benchmark", "pipeline", "--config", "tiny", "--projection-only", "--json", str(result), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    axon("benchmark", "pipeline", "--config", "tiny", "--projection-only", "--json", str(result), "--overwrite")
    projected = json.loads(result.read_text())["rows"]
    assert all(r["seconds"] is None for r in projected) and projected[-1]["gflop"] > 0
