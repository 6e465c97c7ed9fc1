"""Never destroy a user's files (issue 15): every case creates the user's files first and checks they
are byte-identical afterwards, the exit code and the one-line message, and that no hidden partial or
old copy is left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from axonct.app import cli
from axonct.io import output_policy
from axonct.pipeline.checkpoint import read_card, read_resume, save_stage
from axonct.errors import AxonInputError
from axonct.io.output_policy import MANIFEST, Outputs
from axonct.presets import load_preset
from axonct.io.volume_export import report_name, sibling
from axonct.io.volume_integrity import check_not_truncated
from synthetic import synthetic_chest, write_nifti

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), OMP_NUM_THREADS="1")


def axon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "axonct.app.cli", *args], capture_output=True, text=True, env=_env())


def user_files(folder: Path) -> dict[Path, bytes]:
    """The user's own files, made before AXON runs."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "thesis.txt").write_bytes(b"four years of work\n")
    (folder / "sub" / "results.csv").write_bytes(b"case,psnr\n1,30.1\n")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_untouched(files: dict[Path, bytes]) -> None:
    for path, content in files.items():
        assert path.is_file() and path.read_bytes() == content, path


def leftovers(root: Path) -> list[str]:
    """Hidden partial/old copies or probes anywhere under root (the manifest is the one hidden file allowed)."""
    return [str(p) for p in root.rglob(".*") if p.name != MANIFEST]


def error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, "no message"
    return lines[-1]


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return write_nifti(synthetic_chest(seed=4), tmp_path_factory.mktemp("ct") / "chest.nii.gz")


@pytest.fixture(scope="module")
def truncated_ct(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    whole = write_nifti(synthetic_chest(seed=5), folder / "whole.nii.gz").read_bytes()
    path = folder / "LIDC-IDRI-0009.nii.gz"
    path.write_bytes(whole[: len(whole) // 2])
    (folder / "whole.nii.gz").unlink()
    return path


# ----------------------------------------------------------------------------- folders are never replaced


def test_drr_into_an_existing_folder_writes_beside_the_users_files(ct, tmp_path):
    out = tmp_path / "myfolder"
    mine = user_files(out)
    os.chmod(out, 0o755)
    proc = axon("drr", "--ct", str(ct), "--out", str(out), "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert_untouched(mine)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert (out / "frontal.nrrd").is_file() and (out / "geometry.json").is_file()
    assert leftovers(tmp_path) == []
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    again = axon("drr", "--ct", str(ct), "--out", str(out), "--preset", "tiny")
    assert again.returncode == 2
    assert "--overwrite" in error_line(again) and "frontal" in error_line(again)
    assert_untouched(before)

    proc = axon("drr", "--ct", str(ct), "--out", str(out), "--preset", "tiny", "--overwrite", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert_untouched(mine)
    assert leftovers(tmp_path) == []


def test_drr_never_replaces_a_file_it_did_not_write(ct, tmp_path):
    mine = user_files(tmp_path / "views")  # a folder that happens to hold a file named like an output
    (tmp_path / "views" / "montage.png").write_bytes(b"my own montage")
    mine[tmp_path / "views" / "montage.png"] = b"my own montage"
    for extra in ([], ["--overwrite"]):
        proc = axon("drr", "--ct", str(ct), "--out", str(tmp_path / "views"), "--preset", "tiny", *extra)
        assert proc.returncode == 2
        assert "montage.png" in error_line(proc) and "not written by AXON" in error_line(proc)
    assert_untouched(mine)
    assert not (tmp_path / "views" / "frontal.nrrd").exists() and leftovers(tmp_path) == []


def test_out_naming_an_existing_file_is_refused_without_a_copy(ct, tmp_path):
    mine = user_files(tmp_path)
    proc = axon("drr", "--ct", str(ct), "--out", str(tmp_path / "thesis.txt"), "--preset", "tiny")
    assert proc.returncode == 2 and "is a file" in error_line(proc)
    proc = axon("demo", "--out", str(tmp_path / "thesis.txt"))
    assert proc.returncode == 2 and "is a file" in error_line(proc)
    assert_untouched(mine)
    assert leftovers(tmp_path) == []


def test_new_output_folders_get_normal_permissions(ct, tmp_path):
    old = os.umask(0o022)
    try:
        proc = axon("drr", "--ct", str(ct), "--out", str(tmp_path / "a" / "b"), "--preset", "tiny", "--realism", "off")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755


def test_demo_shares_the_policy(tiny_weights, tmp_path):
    from axonct.tools.demo import run_demo

    out = tmp_path / "demo"
    mine = user_files(out)
    run_demo(out, weights=tiny_weights, steps=2, device="cpu")
    assert_untouched(mine)
    assert (out / "metrics.json").is_file() and leftovers(tmp_path) == []
    with pytest.raises(AxonInputError, match="--overwrite"):
        run_demo(out, weights=tiny_weights, steps=2, device="cpu")


# ----------------------------------------------------------------------------- reconstruct


def _reconstruct(frontal, weights, out, *extra):
    return axon("reconstruct", "--frontal", str(frontal), "--out", str(out), "--weights", str(weights),
                "--steps", "2", "--device", "cpu", *extra)


def test_reconstruct_dicom_series_into_an_existing_folder(tiny_weights, frontal, tmp_path):
    out = tmp_path / "myfolder"
    mine = user_files(out)
    proc = _reconstruct(frontal, tiny_weights, str(out) + "/")
    assert proc.returncode == 0, proc.stderr
    assert_untouched(mine)
    assert len(list(out.glob("slice_*.dcm"))) == 64
    assert (tmp_path / "myfolder_report.json").is_file()
    assert leftovers(tmp_path) == []


def test_report_name_keeps_the_whole_output_name(tiny_weights, frontal, tmp_path):
    mine = {tmp_path / "scan.json": b'{"mine": true}'}
    (tmp_path / "scan.json").write_bytes(mine[tmp_path / "scan.json"])
    for version in ("v1", "v2"):
        proc = _reconstruct(frontal, tiny_weights, tmp_path / f"scan.{version}.nrrd")
        assert proc.returncode == 0, proc.stderr
        files = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("AXON_PROGRESS "))["files"]
        assert files["report"] == str(tmp_path / f"scan.{version}_report.json")
        assert (tmp_path / f"scan.{version}_report.json").is_file()
    assert_untouched(mine)
    assert leftovers(tmp_path) == []


def test_names_derive_from_the_whole_output_name():
    assert report_name("a/scan.v2.nrrd") == Path("a/scan.v2_report.json")
    assert report_name("a/scan.v2.nii.gz") == Path("a/scan.v2_report.json")
    assert report_name("a/out.dicom") == Path("a/out.dicom_report.json")
    assert report_name("a/series") == Path("a/series_report.json")
    assert sibling("a/scan.v2.nii.gz", "std") == Path("a/scan.v2_std.nii.gz")


def test_a_folder_where_the_report_goes_is_refused_before_compute(tiny_weights, frontal, tmp_path):
    out = tmp_path / "recon.nrrd"
    assert _reconstruct(frontal, tiny_weights, out).returncode == 0  # the user's older result
    (tmp_path / "recon_report.json").unlink()
    (tmp_path / "recon_report.json").mkdir()
    older = {out: out.read_bytes()}
    proc = _reconstruct(frontal, tiny_weights, out, "--overwrite")
    assert proc.returncode == 2 and "recon_report.json" in error_line(proc) and "is a folder" in error_line(proc)
    assert "AXON_PROGRESS {\"stage\"" not in proc.stdout  # refused before any sampling step
    assert_untouched(older)
    assert leftovers(tmp_path) == []


def test_reconstruct_never_replaces_a_users_file(tiny_weights, frontal, tmp_path):
    mine = {tmp_path / "recon.nrrd": b"not AXON's"}
    (tmp_path / "recon.nrrd").write_bytes(b"not AXON's")
    for extra in ([], ["--overwrite"]):
        proc = _reconstruct(frontal, tiny_weights, tmp_path / "recon.nrrd", *extra)
        assert proc.returncode == 2 and "not written by AXON" in error_line(proc)
    assert_untouched(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon.nrrd"]


def test_a_failing_commit_restores_every_older_file(tmp_path):
    """All or none: the new volume is renamed into place, then the report cannot be; the older
    volume comes back byte-identical and nothing hidden stays."""
    vol, rep = tmp_path / "recon.nrrd", tmp_path / "recon_report.json"
    first = Outputs("reconstruct")
    first.file(vol), first.file(rep)
    with first:
        first.path(vol).write_bytes(b"old volume")
        first.path(rep).write_bytes(b"old report")
    rep.unlink()
    older = {vol: vol.read_bytes()}
    run = Outputs("reconstruct", overwrite=True)
    run.file(vol), run.file(rep)
    with pytest.raises(AxonInputError, match="appeared while this run was computing.*nothing of this run was kept"):
        with run:
            run.path(vol).write_bytes(b"new volume")
            run.path(rep).write_bytes(b"new report")
            (rep / "x").mkdir(parents=True)  # the report's name becomes a folder before the renames
    assert_untouched(older)
    assert leftovers(tmp_path) == []


def test_overwrite_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "a.json"
    with Outputs("x") as o:
        o.file(target)
        o.path(target).write_text("1")
    o = Outputs("x", overwrite=True)
    o.file(target)
    with pytest.raises(RuntimeError):
        with o:
            o.path(target).write_text("2")
            assert target.read_text() == "1"
            raise RuntimeError("the run fails while writing")
    assert target.read_text() == "1" and leftovers(tmp_path) == []
    target.write_text("edited by the user")  # changed since AXON wrote it: now it is the user's
    with pytest.raises(AxonInputError, match="not written by AXON"):
        Outputs("x", overwrite=True).file(target)


# ----------------------------------------------------------------------------- truncated volumes


def _prediction(ct: Path, folder: Path) -> Path:
    """A volume on a model grid, as `axon reconstruct` writes it."""
    from axonct.config import VolumeGrid
    from axonct.io.ct_preprocess import ct_to_model

    path = folder / "pred.nrrd"
    sitk.WriteImage(ct_to_model(sitk.ReadImage(str(ct)), VolumeGrid(size=32, fov_mm=320.0)).to_hu_image(), str(path))
    return path


def test_truncated_nifti_is_refused_by_drr_evaluate_and_prepare(truncated_ct, ct, tmp_path):
    proc = axon("drr", "--ct", str(truncated_ct), "--out", str(tmp_path / "v"), "--preset", "tiny")
    assert proc.returncode == 2 and "truncated" in error_line(proc) and truncated_ct.name in error_line(proc)
    proc = axon("evaluate", "--pred", str(_prediction(ct, tmp_path)), "--gt", str(truncated_ct))
    assert proc.returncode == 2 and "truncated" in error_line(proc) and truncated_ct.name in error_line(proc)
    (tmp_path / "pred.nrrd").unlink()
    cts = tmp_path / "cts"
    cts.mkdir()
    shutil.copy(truncated_ct, cts / truncated_ct.name)
    shutil.copy(ct, cts / "LIDC-IDRI-0001.nii.gz")
    proc = axon("prepare", "--ct", str(cts), "--out", str(tmp_path / "cache"), "--preset", "tiny", "--no-progress")
    assert "Traceback" not in proc.stderr
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert [c["case_id"] for c in manifest["cases"]] == ["LIDC-IDRI-0001"]
    assert "truncated" in json.dumps(manifest["failed"])
    assert not (tmp_path / "cache" / "cases" / "LIDC-IDRI-0009").exists()
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("name,compressed", [("ct.nii.gz", True), ("ct.nii", False), ("ct.nrrd", True),
                                             ("ct.nrrd", False), ("ct.mha", True), ("ct.mha", False)])
def test_truncated_volumes_are_detected(tmp_path, name, compressed):
    path = tmp_path / name
    sitk.WriteImage(synthetic_chest(seed=6), str(path), useCompression=compressed)
    check_not_truncated(path)  # the whole file passes
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(AxonInputError, match="truncated"):
        check_not_truncated(path)


# ----------------------------------------------------------------------------- locations checked up front


def _no_compute(monkeypatch):
    from axonct.tools import drr_export

    def fail(*a, **k):
        raise AssertionError("computed before checking the output location")

    monkeypatch.setattr(drr_export, "make_training_pair", fail)


def test_unwritable_location_is_refused_before_compute(ct, tmp_path, monkeypatch, capsys):
    _no_compute(monkeypatch)

    def denied(folder):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(output_policy, "probe_write", denied)
    assert cli.main(["drr", "--ct", str(ct), "--out", str(tmp_path / "v"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(ct, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        proc = axon("drr", "--ct", str(ct), "--out", str(ro / "v"), "--preset", "tiny")
    finally:
        os.chmod(ro, 0o755)
    assert proc.returncode == 2 and "not writable" in error_line(proc)


def test_full_disk_is_refused_before_compute(ct, tmp_path, monkeypatch, capsys):
    _no_compute(monkeypatch)
    monkeypatch.setattr(output_policy, "disk_free", lambda folder: 1000)
    assert cli.main(["drr", "--ct", str(ct), "--out", str(tmp_path / "v"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "free" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_evaluate_prints_metrics_before_a_failing_montage(ct, tmp_path, monkeypatch, capsys):
    from axonct.tools import compare as evaluation

    pred_path = _prediction(ct, tmp_path)
    mine = user_files(tmp_path / "mine")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "mine" / "m.png"))

    monkeypatch.setattr(evaluation, "save_comparison_montage", full)
    rc = cli.main(["evaluate", "--pred", str(pred_path), "--gt", str(ct), "--montage", str(tmp_path / "mine" / "m.png")])
    out, err = capsys.readouterr()
    assert rc == 2 and "No space left" in err.strip().splitlines()[-1]
    assert json.loads(out)["honest"]["psnr"] > 0  # the metrics were printed first
    assert_untouched(mine)
    assert not (tmp_path / "mine" / "m.png").exists() and leftovers(tmp_path) == []
    # a montage over a user's file is refused before any compute
    rc = cli.main(["evaluate", "--pred", str(pred_path), "--gt", str(ct), "--montage", str(tmp_path / "mine" / "thesis.txt")])
    assert rc == 2 and "not written by AXON" in capsys.readouterr().err
    assert_untouched(mine)


# ----------------------------------------------------------------------------- signals


def test_sigterm_during_drr_leaves_nothing_partial(ct, tmp_path):
    out = tmp_path / "myfolder"
    mine = user_files(out)
    proc = subprocess.Popen([sys.executable, "-m", "axonct.app.cli", "drr", "--ct", str(ct), "--out", str(out),
                             "--preset", "paper"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    deadline = time.time() + 120
    while not any(".partial-" in p.name for p in out.iterdir()):  # the outputs are being written
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert rc == 143, err
    assert "Traceback" not in err and "terminated" in err.strip().splitlines()[-1]
    assert_untouched(mine)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["sub", "sub/results.csv", "thesis.txt"]
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("args,option", [
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--steps", "0"], "--steps"),
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--steps", "-1"], "--steps"),
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--seed", str(2**64)], "--seed"),
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--seed", "-3"], "--seed"),
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--samples", "1000"], "--samples"),
    (["demo", "--steps", "0"], "--steps"),
    (["evaluate", "--pred", "p", "--gt", "g", "--steps", "0"], "--steps"),
    (["train", "coarse", "--data", "d", "--out", "r", "--steps", "0"], "--steps"),
    (["train", "coarse", "--data", "d", "--out", "r", "--batch-size", "0"], "--batch-size"),
    (["drr", "--ct", "c", "--out", "o", "--seed", "x"], "--seed"),
])
def test_options_are_validated_up_front(args, option, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", *args], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith(f"axon {args[0]}: error: argument {option}")
    assert "out of range" in line or "not a whole number" in line
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_zero_steps_from_a_config(tiny_cache, tmp_path):
    from axonct.training.trainer import train

    preset = load_preset("tiny")
    preset.train.steps = 0
    with pytest.raises(AxonInputError, match="steps"):
        train("coarse", tiny_cache, preset, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- weight cards and resume files


@pytest.fixture()
def card_folder(tmp_path) -> Path:
    save_stage(tmp_path, "coarse", {"w": torch.zeros(2)}, load_preset("tiny"), {"cases": ["a"], "steps_done": 1})
    return tmp_path


@pytest.mark.parametrize("change,phrase", [
    (lambda c: c.pop("sha256"), "'sha256' is missing"),
    (lambda c: c.pop("config"), "'config' is missing"),
    (lambda c: c.update(trained_on="everything"), "'trained_on' should be a JSON object"),
    (lambda c: c.update(tensors=[1, 2]), "'tensors' should be a JSON object"),
    (lambda c: c["trained_on"].update(cases="a"), "trained_on.cases"),
    (lambda c: c["config"]["coarse"].update(unet_res_blocks="8"), "config.coarse.unet_res_blocks"),
    (lambda c: c["config"]["coarse"].update(unet_channels=["16", "32"]), "config.coarse.unet_channels"),
    (lambda c: c["config"]["coarse"].update(bogus=1), "'config' cannot be read"),
    (lambda c: c["config"]["data"]["grid"].update(size="64"), "config.data.grid.size"),
])
def test_damaged_weight_cards_are_refused_with_the_file_named(card_folder, change, phrase):
    card = card_folder / "coarse.json"
    info = json.loads(card.read_text())
    read_card(card_folder, "coarse")  # the whole card passes
    change(info)
    card.write_text(json.dumps(info))
    with pytest.raises(AxonInputError, match="coarse.json") as exc:
        read_card(card_folder, "coarse")
    assert phrase in str(exc.value)


def test_truncated_resume_file_is_refused(tiny_cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"stage": "coarse", "preset": {}, "step": 3, "model": {"w": torch.zeros(1000)}, "optimizer": {},
                "ema": []}, run / "resume.pt")
    assert read_resume(run / "resume.pt")["step"] == 3
    data = (run / "resume.pt").read_bytes()
    (run / "resume.pt").write_bytes(data[: len(data) // 2])
    mine = {run / "resume.pt": (run / "resume.pt").read_bytes()}
    with pytest.raises(AxonInputError, match="resume.pt.*truncated"):
        read_resume(run / "resume.pt")
    proc = axon("train", "coarse", "--data", str(tiny_cache), "--out", str(run), "--resume", "--device", "cpu",
                "--no-progress")
    assert proc.returncode == 2 and "resume.pt" in error_line(proc) and "truncated" in error_line(proc)
    assert_untouched(mine)


# ----------------------------------------------------------------------------- races and late signals


def test_a_file_created_at_a_new_output_name_during_the_run_is_never_overwritten(tmp_path):
    """Names are checked before compute and again, without a race, when the files go into place."""
    target, other = tmp_path / "out" / "frontal.nrrd", tmp_path / "out" / "lateral.nrrd"
    run = Outputs("drr")
    run.folder(tmp_path / "out"), run.file(target), run.file(other)
    with pytest.raises(AxonInputError, match="appeared while this run was computing"):
        with run:
            run.path(other).write_bytes(b"ours")
            run.path(target).write_bytes(b"ours")
            target.write_bytes(b"someone else's")  # written while this run computed
    assert target.read_bytes() == b"someone else's" and not other.exists()
    assert leftovers(tmp_path) == []


def test_a_second_run_into_the_same_new_folder_is_refused_not_merged(tmp_path):
    """Two `axon drr` runs planned into one new folder: the first commits, the second is refused and
    the first one's files stay as they were (it used to report success after replacing them)."""
    folder = tmp_path / "drrs"
    runs = [Outputs("drr"), Outputs("drr")]
    for run in runs:  # both planned before either wrote anything
        run.folder(folder), run.file(folder / "frontal.nrrd")
    with runs[0]:
        runs[0].path(folder / "frontal.nrrd").write_bytes(b"first")
    with pytest.raises(AxonInputError, match="appeared while this run was computing"):
        with runs[1]:
            runs[1].path(folder / "frontal.nrrd").write_bytes(b"second")
    assert (folder / "frontal.nrrd").read_bytes() == b"first" and leftovers(tmp_path) == []


def test_a_signal_during_the_renames_restores_the_older_set(tmp_path, monkeypatch):
    """SIGTERM while the files go into place used to exit 143 ("nothing partial was kept") with the new
    set already in place: now the renames are undone and the older files come back."""
    import signal

    from axonct.io import output_policy

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    with Outputs("drr") as first:
        first.path(a).write_text("old a")
        first.path(b).write_text("old b")
    older = {a: a.read_bytes(), b: b.read_bytes()}
    real_replace = os.replace

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if Path(dst) == a:
            output_policy._pending.append(signal.SIGTERM)  # as the deferring handler would record it

    monkeypatch.setattr(output_policy.os, "replace", replace_then_signal)
    run = Outputs("drr", overwrite=True)
    run.file(a), run.file(b)
    with pytest.raises(output_policy.Terminated):
        with run:
            run.path(a).write_text("new a")
            run.path(b).write_text("new b")
    monkeypatch.setattr(output_policy.os, "replace", real_replace)
    assert_untouched(older)
    assert leftovers(tmp_path) == [] and output_policy._pending == []
