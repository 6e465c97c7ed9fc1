"""`axon train`, `prepare` and `synth` under the output policy: a user's file is never replaced or
appended to, a new folder is removed when the run ends before keeping anything, and a full disk is
one line, not a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from axonct.app import cli
from axonct.io import output_policy


def _user_file(folder: Path, name: str, text: str = "mine\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory, real_ct_path) -> Path:
    img = sitk.ReadImage(str(real_ct_path))
    small = sitk.Resample(img, [64, 64, 34], sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                          [s * 8 for s in img.GetSpacing()[:2]] + [img.GetSpacing()[2] * 4], img.GetDirection(), -1024)
    path = tmp_path_factory.mktemp("ct") / "LIDC-IDRI-0001.nii.gz"
    sitk.WriteImage(sitk.Cast(small, sitk.sitkInt16), str(path))
    return path


def _train_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"base": "tiny", "train": {"batch_size": 1, "checkpoint_every": 1, "validate_every": 100,
                                                         "log_every": 1, "val_cases": 1}}))
    return cfg


@pytest.mark.parametrize("name", ["config.json", "train_log.csv", "val_log.csv", "train_summary.json"])
def test_train_never_replaces_or_appends_to_a_users_file(tiny_cache, tmp_path, capsys, name):
    mine = _user_file(tmp_path / "run", name)
    rc = cli.main(["train", "sr", "--data", str(tiny_cache), "--config", str(_train_config(tmp_path)),
                   "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and name in err[0] and "not written by AXON" in err[0]
    assert mine.read_text() == "mine\n" and sorted(p.name for p in (tmp_path / "run").iterdir()) == [name]


def test_a_training_run_continues_what_axon_wrote(tiny_cache, tmp_path, capsys, one_thread):
    args = ["train", "sr", "--data", str(tiny_cache), "--config", str(_train_config(tmp_path)),
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(args + ["--steps", "1"]) == 0
    assert cli.main(args + ["--steps", "2", "--resume"]) == 0
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]
    recorded = json.loads((tmp_path / "run" / output_policy.MANIFEST).read_text())["files"]
    assert {"config.json", "train_log.csv", "resume.pt", "sr.safetensors", "sr.json",
            "train_summary.json"} <= set(recorded)


def test_a_stopped_training_run_leaves_no_new_folder(tiny_cache, tmp_path, monkeypatch, capsys):
    from axonct.training import trainer

    def stop(*a, **k):
        raise KeyboardInterrupt()

    monkeypatch.setattr(trainer, "_checkpoint", stop)
    rc = cli.main(["train", "sr", "--data", str(tiny_cache), "--config", str(_train_config(tmp_path)),
                   "--out", str(tmp_path / "new" / "run"), "--steps", "1", "--no-progress"])
    assert rc == 130 and not (tmp_path / "new" / "run").exists()


def test_resume_without_a_checkpoint_says_it_starts_a_new_run(tiny_cache, tmp_path, capsys, one_thread):
    rc = cli.main(["train", "sr", "--data", str(tiny_cache), "--config", str(_train_config(tmp_path)),
                   "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--resume"])
    captured = capsys.readouterr()
    assert rc == 0 and "holds no checkpoint" in captured.out + captured.err


@pytest.mark.parametrize("command", ["prepare", "synth"])
@pytest.mark.parametrize("name", ["config.json", "splits.json"])
def test_prepare_and_synth_never_replace_a_users_file(small_ct, tmp_path, capsys, command, name):
    mine = _user_file(tmp_path / "cache", name)
    args = (["prepare", "--ct", str(small_ct), "--no-progress"] if command == "prepare"
            else ["synth", "--count", "1", "--seed", "7"])
    rc = cli.main([*args, "--out", str(tmp_path / "cache"), "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and name in err[-1] and "not written by AXON" in err[-1]
    assert mine.read_text() == "mine\n" and [p.name for p in (tmp_path / "cache").iterdir()] == [name]


def test_synth_refused_leaves_no_new_folder(tmp_path, capsys):
    z, y, x = np.mgrid[:40, :64, :64]
    water = np.where((y - 32) ** 2 + (x - 32) ** 2 < 28**2, 0, -1000).astype(np.int16)
    img = sitk.GetImageFromArray(water)
    img.SetSpacing((5.0, 5.0, 5.0))
    sitk.WriteImage(img, str(tmp_path / "water.nii.gz"))
    rc = cli.main(["synth", "--ct", str(tmp_path / "water.nii.gz"), "--out", str(tmp_path / "new"), "--count", "1",
                   "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "water.nii.gz" in err[0]
    assert not (tmp_path / "new").exists()


def test_synth_ignores_a_sibling_folder_it_cannot_read(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_exists = Path.exists

    def exists(self, *a, **k):
        if self.parent == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_exists(self, *a, **k)

    monkeypatch.setattr(Path, "exists", exists)
    rc = cli.main(["synth", "--out", str(tmp_path / "syn"), "--count", "1", "--seed", "9", "--preset", "tiny"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "syn" / "manifest.json").is_file()


def test_prepare_with_an_internal_error_on_every_case_fails_in_one_line(small_ct, tmp_path, monkeypatch, capsys):
    from axonct.data import training_pair

    def broken(*a, **k):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(training_pair, "make_training_pair", broken)
    rc = cli.main(["prepare", "--ct", str(small_ct), "--out", str(tmp_path / "cache"), "--preset", "tiny",
                   "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "no case could be prepared" in err[-1] and "simulated bug" in err[-1]
    assert not (tmp_path / "cache").exists()


def test_a_stopped_prepare_keeps_its_finished_cases_and_continues(small_ct, tmp_path, monkeypatch, capsys):
    from axonct.data import prepare

    second = tmp_path / "cts"
    second.mkdir()
    shutil.copy(small_ct, second / "LIDC-IDRI-0001.nii.gz")
    shutil.copy(small_ct, second / "LIDC-IDRI-0002.nii.gz")
    real = prepare._prepare_one
    calls = []

    def stop_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt()
        return real(*a, **k)

    monkeypatch.setattr(prepare, "_prepare_one", stop_on_second)
    out = tmp_path / "cache"
    args = ["prepare", "--ct", str(second), "--out", str(out), "--preset", "tiny", "--no-progress"]
    assert cli.main(args) == 130
    assert len(list((out / "cases").iterdir())) == 1  # the finished case is kept
    monkeypatch.setattr(prepare, "_prepare_one", real)
    assert cli.main(args) == 0
    assert "1 already finished" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A 1 MB tmpfs (needs mount rights: skipped elsewhere), with the up-front free-space check told
    there is plenty, so the disk fills while writing, as when another program fills it meanwhile."""
    where = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    monkeypatch.setattr(output_policy, "disk_free", lambda folder: 1 << 40)
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


def _only_user_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("command", ["drr", "prepare"])
def test_a_disk_that_fills_while_writing_is_one_line_and_leaves_nothing(small_ct, full_disk, capsys, command):
    _user_file(full_disk, "keep.txt")
    out = full_disk / "out"
    args = {"drr": ["drr", "--ct", str(small_ct), "--out", str(out), "--preset", "paper"],
            "prepare": ["prepare", "--ct", str(small_ct), "--out", str(out), "--preset", "cpu", "--no-progress"]}
    rc = cli.main(args[command])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert _only_user_files(full_disk) == ["keep.txt"]


def test_reconstruct_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_weights, frontal, full_disk, capsys):
    _user_file(full_disk, "keep.txt")
    big = full_disk / "filler"
    with open(big, "wb") as f:  # leave less than a volume's worth
        f.write(b"\0" * (1024 * 1024 - 64 * 1024))
    rc = cli.main(["reconstruct", "--frontal", str(frontal), "--out", str(full_disk / "r.nrrd"),
                   "--weights", str(tiny_weights), "--consistency", "off", "--steps", "2"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "AXON_PROGRESS" not in line]
    assert rc == 2 and "No space left on device" in err[-1], err
    assert _only_user_files(full_disk) == ["filler", "keep.txt"]
    os.unlink(big)


def test_a_stopped_synth_keeps_finished_chests_or_leaves_no_new_folder(tmp_path, monkeypatch, capsys):
    from axonct.data import synthetic_cache

    real = synthetic_cache.schema.write_case
    calls = []

    def stop_on(n):
        def write(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise output_policy.Terminated()
            return real(*a, **k)
        return write

    args = ["synth", "--count", "2", "--seed", "11", "--preset", "tiny", "--out"]
    monkeypatch.setattr(synthetic_cache.schema, "write_case", stop_on(1))
    assert cli.main(args + [str(tmp_path / "first")]) == 143
    assert not (tmp_path / "first").exists()  # stopped before its first chest: nothing left
    calls.clear()
    monkeypatch.setattr(synthetic_cache.schema, "write_case", stop_on(2))
    assert cli.main(args + [str(tmp_path / "second")]) == 143
    assert len(list((tmp_path / "second" / "cases").iterdir())) == 1  # the finished chest stays
    monkeypatch.setattr(synthetic_cache.schema, "write_case", real)
    assert cli.main(args + [str(tmp_path / "second")]) == 0
    assert len(json.loads((tmp_path / "second" / "manifest.json").read_text())["cases"]) == 2
