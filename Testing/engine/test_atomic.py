"""The one atomic-write helper (axonct.atomic): a file or folder is in place whole or not at all,
its temporary never survives, and it loads without torch (the Slicer GUI process uses it)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from axonct.atomic import PARTIAL_TAG, atomic_dir, atomic_path, remove_partials, write_text

REPO = Path(__file__).resolve().parents[2]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and PARTIAL_TAG in tmp.name and tmp.suffix == ".json"
            tmp.write_text("half")
            raise RuntimeError("cut off")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_finished_write_replaces_and_gets_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "w.txt"
    with atomic_path(target) as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # like safetensors / mkstemp writers
        os.write(fd, b"new")
        os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["w.txt"]


def test_atomic_dir_replaces_a_whole_folder_or_nothing(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    (case / "a").write_text("1")
    with pytest.raises(KeyError):
        with atomic_dir(case) as tmp:
            (tmp / "b").write_text("2")
            raise KeyError("x")
    assert [p.name for p in case.iterdir()] == ["a"]
    with atomic_dir(case) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in case.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_remove_partials_counts_only_leftovers(tmp_path):
    (tmp_path / f".x{PARTIAL_TAG}1234.nrrd").write_text("")
    (tmp_path / f".d{PARTIAL_TAG}5678").mkdir()
    (tmp_path / "keep.nrrd").write_text("")
    assert remove_partials(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nrrd"]


def test_the_precision_probe_cache_is_written_through_it(tmp_path, monkeypatch):
    """runtime's probe cache goes through write_text (no second tmp + rename of its own)."""
    from axonct import runtime

    seen = []
    monkeypatch.setattr(runtime, "write_text", lambda path, text: seen.append(path) or write_text(path, text))
    cache = tmp_path / "cache" / "probe.json"
    runtime._store(cache, "k", {"fp32_s": 1.0, "bf16_s": 2.0})
    assert seen == [cache] and json.loads(cache.read_text()) == {"k": {"fp32_s": 1.0, "bf16_s": 2.0}}
    assert sorted(p.name for p in cache.parent.iterdir()) == ["probe.json"]


def test_it_is_core_and_torch_free():
    code = "import sys\nsys.modules['torch'] = None\nsys.modules['numpy'] = None\nimport axonct.atomic\n"
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
