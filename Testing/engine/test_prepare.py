"""`axon prepare`: cache contents, bad cases skipped and logged, resume, atomic cases, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from axonct.data import prepare as prep
from axonct.config import data_preset
from axonct.errors import AxonInputError, AxonRunError
from synthetic import synthetic_chest, write_nifti


@pytest.fixture()
def ct_folder(tmp_path: Path) -> Path:
    root = tmp_path / "cts"
    write_nifti(synthetic_chest(seed=1), root / "LIDC-IDRI-0001.nii.gz")
    write_nifti(synthetic_chest(seed=2), root / "sub" / "LIDC-IDRI-0002.nii.gz")
    (root / "LIDC-IDRI-0003.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    nan = sitk.GetArrayFromImage(synthetic_chest(seed=3))
    nan[5, 5, 5] = np.nan
    bad = sitk.GetImageFromArray(nan)
    bad.SetSpacing((6.0, 6.0, 6.0))
    write_nifti(bad, root / "LIDC-IDRI-0004.nii.gz")
    return root


def _run(ct_folder, out, **kw):
    return prep.prepare_cache([ct_folder], out, data_preset("tiny"), progress=False, **kw)


def test_prepare_writes_cases_and_logs_bad_ones(ct_folder, tmp_path):
    out = tmp_path / "cache"
    manifest = _run(ct_folder, out)
    ids = sorted(c["case_id"] for c in manifest["cases"])
    assert ids == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    failed = {Path(f["source"]).name: f["error"] for f in manifest["failed"]}
    assert set(failed) == {"LIDC-IDRI-0003.nii.gz", "LIDC-IDRI-0004.nii.gz"}
    assert "LIDC-IDRI-0003.nii.gz" in failed["LIDC-IDRI-0003.nii.gz"]
    assert "NaN" in failed["LIDC-IDRI-0004.nii.gz"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 2
    for cid in ids:
        case = out / "cases" / cid
        ct = np.load(case / "ct.npy")
        drr = np.load(case / "drr.npy")
        assert ct.shape == (64, 64, 64) and ct.dtype == np.float16
        assert 0 <= ct.min() and ct.max() <= 1 and ct.max() > 0.3
        assert drr.shape == (2, 64, 64) and np.isfinite(drr).all() and drr.max() > 0
        assert json.loads((case / "case.json").read_text())["patient_id"] == cid
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(sum((v for v in splits["cases"].values()), [])) == ids


def test_prepare_resumes_and_never_leaves_half_cases(ct_folder, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    real_save = np.save

    def failing_save(path, arr, *a, **k):
        if Path(path).name == "drr.npy":
            raise OSError("disk full (simulated)")
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(prep.np, "save", failing_save)
    with pytest.raises(AxonRunError, match="no case could be prepared: 2 of 4 inputs.*disk full"):
        _run(ct_folder, out)
    # each case died after ct.npy was written: nothing of it may remain, nor the new, empty cache
    assert not out.exists()
    monkeypatch.setattr(prep.np, "save", real_save)
    second = _run(ct_folder, out)
    assert sorted(c["case_id"] for c in second["cases"]) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    stamp = (out / "cases" / "LIDC-IDRI-0001" / "ct.npy").stat().st_mtime_ns
    third = _run(ct_folder, out)
    assert third["skipped_as_finished"] == 2
    assert (out / "cases" / "LIDC-IDRI-0001" / "ct.npy").stat().st_mtime_ns == stamp


def test_parallel_workers_give_the_same_cache(ct_folder, tmp_path):
    a = _run(ct_folder, tmp_path / "a", workers=1)
    b = _run(ct_folder, tmp_path / "b", workers=2)
    assert [c["case_id"] for c in a["cases"]] == [c["case_id"] for c in b["cases"]]
    for c in a["cases"]:
        for name in ("ct.npy", "drr.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "a" / "cases" / c["case_id"] / name),
                                          np.load(tmp_path / "b" / "cases" / c["case_id"] / name))


def test_a_cache_refuses_a_different_config(ct_folder, tmp_path):
    out = tmp_path / "cache"
    _run(ct_folder, out)
    with pytest.raises(AxonInputError, match="different grid/geometry"):
        prep.prepare_cache([ct_folder], out, data_preset("cpu"), progress=False)


def test_seeded_patient_level_split():
    patients = [f"P{i:03d}" for i in range(100)]
    s1 = prep.make_splits(patients, seed=7)
    s2 = prep.make_splits(list(reversed(patients)), seed=7)
    assert s1 == s2
    assert (len(s1["train"]), len(s1["val"]), len(s1["test"])) == (80, 10, 10)
    assert not set(s1["train"]) & set(s1["test"])
    assert prep.make_splits(patients, seed=8)["test"] != s1["test"]


def test_published_x2ct_lists_by_patient_id(tmp_path):
    train = tmp_path / "train.txt"
    test = tmp_path / "test.txt"
    train.write_text("LIDC-IDRI-0001.20000101.3000566.1\nLIDC-IDRI-0002.20000101.3000522.1\n"
                     "LIDC-IDRI-0003.20000101.3000611.1\nLIDC-IDRI-0005.20000101.3000555.1\n")
    test.write_text("LIDC-IDRI-0004.20000101.3000534.1\n")
    patients = ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003", "LIDC-IDRI-0004", "LIDC-IDRI-0099"]
    s = prep.make_splits(patients, seed=0, val_fraction=0.34,
                         train_list=prep.read_id_list(train), test_list=prep.read_id_list(test))
    assert s["test"] == ["LIDC-IDRI-0004"]
    assert len(s["val"]) == 1 and len(s["train"]) == 2
    assert set(s["train"]) | set(s["val"]) == {"LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"}
    assert s["unassigned"] == ["LIDC-IDRI-0099"]
