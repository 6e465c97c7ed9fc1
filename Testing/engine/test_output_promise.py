"""The output promise on the commands and files it missed: `axon synth --gallery` never replaces a
user's file, a montage is written in the format its name says, and finished files get the usual
permissions (not a writer's private 0600)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest


def axon(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "axonct.app.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_synth_gallery_never_replaces_a_users_file(tmp_path):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's own picture")
    proc = axon("synth", "--out", tmp_path / "cache", "--count", "1", "--preset", "tiny", "--gallery", mine)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "mine.png" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert mine.read_bytes() == b"the user's own picture"
    assert not (tmp_path / "cache").exists()  # refused before any chest was made


@pytest.mark.parametrize("name", ["gallery.tif", "gallery"])
def test_synth_gallery_name_must_be_an_image_format(tmp_path, name):
    proc = axon("synth", "--out", tmp_path / "cache", "--count", "1", "--preset", "tiny", "--gallery", tmp_path / name)
    assert proc.returncode == 2 and ".png or .jpg" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "cache").exists()


def test_a_montage_is_written_in_the_format_its_name_says(tmp_path):
    from PIL import Image

    from axonct.io.montage import save_montage

    tiles = [[("a", np.zeros((8, 8), np.uint8)), ("b", np.full((8, 8), 200, np.uint8))]]
    for name, fmt in (("m.jpg", "JPEG"), ("m.jpeg", "JPEG"), ("m.png", "PNG"), ("M.JPG", "JPEG")):
        save_montage(tiles, tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt, name


def test_evaluate_refuses_a_montage_name_it_cannot_write_before_scoring(tmp_path):
    proc = axon("evaluate", "--pred", tmp_path / "p.nrrd", "--gt", tmp_path / "g.nii.gz",
                "--montage", tmp_path / "m.gif")
    assert proc.returncode == 2 and "m.gif" in proc.stderr and ".png or .jpg" in proc.stderr, proc.stderr


def test_saved_weights_are_readable_by_others_like_every_other_output(tmp_path):
    import torch

    from axonct.pipeline.checkpoint import save_stage
    from axonct.presets import model_preset

    old = os.umask(0o022)
    try:
        path = save_stage(tmp_path, "sr", {"w": torch.zeros(3)}, model_preset("tiny"), {"cases": []})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "sr.json").stat().st_mode & 0o777 == 0o644


def _special_inputs(tmp_path):
    fifo = tmp_path / "ct_pipe.nii.gz"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    return {"FIFO": fifo, "character device": "/dev/zero", "loops back": loop}


@pytest.mark.parametrize("reason", ["FIFO", "character device", "loops back"])
def test_special_files_are_refused_with_their_true_reason(tmp_path, reason):
    """A FIFO given as the CT used to hang forever; /dev/zero and a symlink loop got wrong reasons."""
    path = _special_inputs(tmp_path)[reason]
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "drr", "--ct", str(path), "--out",
                           str(tmp_path / "out"), "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and reason in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "reconstruct", "--frontal", str(path), "--out",
                           str(tmp_path / "r.nrrd"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and reason in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("when", ["after the last sampling step", "while the outputs are staged"])
def test_a_cancel_after_the_last_sampling_step_still_wins(tiny_weights, frontal, tmp_path, monkeypatch, when):
    """Slicer's Cancel (SIGTERM -> the job's stop flag) used to be ignored once sampling was over: the
    run exited 0 and wrote its outputs, over an earlier run's with --overwrite."""
    import io

    from axonct.app import reconstruct_job as job
    from axonct.app.protocol import Cancelled, ProgressLines
    from axonct.options import ReconstructOptions
    from axonct.pipeline.reconstruction import AxonPipeline

    out = tmp_path / "r.nrrd"
    req = job.ReconstructRequest(frontal=str(frontal), out=str(out), weights=str(tiny_weights), overwrite=True,
                                 options=ReconstructOptions(device="cpu", precision="fp32", steps=2))
    job.run_reconstruction(req, ProgressLines(stream=io.StringIO()))  # an earlier run's outputs
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    stop = {"now": False}
    if when == "after the last sampling step":
        original = AxonPipeline.__call__

        def sample_then_signal(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            stop["now"] = True  # the signal arrives just after the last step
            return result

        monkeypatch.setattr(AxonPipeline, "__call__", sample_then_signal)
    else:
        original_write = job.write_volume

        def write_then_signal(*args, **kwargs):
            path = original_write(*args, **kwargs)
            stop["now"] = True  # the signal arrives while the files are being staged
            return path

        monkeypatch.setattr(job, "write_volume", write_then_signal)
    with pytest.raises(Cancelled):
        job.run_reconstruction(req, ProgressLines(stream=io.StringIO(), should_stop=lambda: stop["now"]))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing new, nothing left over
