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
