"""Refuse truncated volume files before ITK reads them.

ITK's NIfTI reader fills a truncated gzip stream with zeros (a CT then gets a slab of -1024 HU, or 0,
without any error). Here the voxel data a file actually holds (decompressed, streamed in blocks so
memory stays flat) is compared with the size its header describes: NIfTI-1/2 (.nii, .nii.gz), NRRD
(.nrrd, .nhdr; raw or gzip encoding) and MetaImage (.mha, .mhd; raw or zlib-compressed). A header this
module cannot parse is left to ITK's own checks.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from axonct.errors import AxonInputError

_BLOCK = 1 << 22

_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "char"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_SIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_MET_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
             "MET_DOUBLE": 8}


def check_not_truncated(path: str | Path) -> None:
    """AxonInputError if the file holds less voxel data than its header describes (or a broken stream)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        _check_nifti(path, compressed=name.endswith(".gz"))
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_meta(path)


def _refuse(path: Path, expected: int, found: int | None, detail: str = "") -> None:
    held = "" if found is None else f" but holds only {_size(found)}"
    raise AxonInputError(path, f"is truncated or corrupt: its header describes {_size(expected)} of voxel data{held}"
                               f"{detail} (an interrupted copy or download?); copy the file again")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def _stream_length(read, limit: int) -> int:
    """Bytes a stream yields, reading at most ``limit`` + 1 (enough to know it is not short)."""
    total = 0
    while total <= limit:
        block = read(min(_BLOCK, limit + 1 - total))
        if not block:
            break
        total += len(block)
    return total


# ----------------------------------------------------------------------------- NIfTI


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/2 header that locate and size the voxel data."""

    byteorder: str  # "<" or ">"
    header_size: int  # 348 (NIfTI-1) or 540 (NIfTI-2)
    dims: tuple[int, ...]  # extents of the used dimensions
    datatype: int
    bitpix: int
    vox_offset: float
    single_file: bool  # n+1 / n+2: header and voxels in one file

    @property
    def data_start(self) -> int:
        return max(int(self.vox_offset), self.header_size)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))


def parse_nifti_header(head: bytes) -> NiftiHeader | None:
    """The first 540 bytes of a NIfTI file -> its header fields, or None when it is not one we can size."""
    if len(head) < 348:
        return None
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=order + "i4")[0])
        if size in (348, 540):
            break
    else:
        return None
    if size == 348:
        dim = np.frombuffer(head[40:56], dtype=order + "i2").astype(np.int64)
        datatype = int(np.frombuffer(head[70:72], dtype=order + "i2")[0])
        bitpix = int(np.frombuffer(head[72:74], dtype=order + "i2")[0])
        offset = float(np.frombuffer(head[108:112], dtype=order + "f4")[0])
        magic = head[344:348]
        if magic[:3] not in (b"n+1", b"ni1"):
            return None
        single_file = magic[:3] == b"n+1"
    else:
        if len(head) < 540:
            return None
        dim = np.frombuffer(head[16:80], dtype=order + "i8")
        datatype = int(np.frombuffer(head[12:14], dtype=order + "i2")[0])
        bitpix = int(np.frombuffer(head[14:16], dtype=order + "i2")[0])
        offset = float(np.frombuffer(head[168:176], dtype=order + "i8")[0])
        single_file = head[4:7] == b"n+2"
    n_dim = int(dim[0])
    if not 1 <= n_dim <= 7 or not math.isfinite(offset):
        return None
    extents = tuple(int(d) for d in dim[1 : n_dim + 1])
    if any(d < 1 for d in extents):
        return None
    return NiftiHeader(order, size, extents, datatype, bitpix, offset, single_file)


def _nifti_expected(head: bytes) -> int | None:
    h = parse_nifti_header(head)
    if h is None or not h.single_file or h.bitpix <= 0 or h.bitpix % 8:
        return None
    return h.data_start + h.n_voxels * h.bitpix // 8


def _check_nifti(path: Path, compressed: bool) -> None:
    try:
        if not compressed:
            with open(path, "rb") as f:
                expected = _nifti_expected(f.read(540))
            found = path.stat().st_size
            if expected is not None and found < expected:
                _refuse(path, expected, found)
            return
        with gzip.open(path, "rb") as f:
            head = f.read(540)
            expected = _nifti_expected(head)
            if expected is None:
                return
            found = len(head) + _stream_length(f.read, max(expected - len(head), 0))
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        _refuse_stream(path, exc)
        return
    except OSError:
        return  # unreadable: the image reader says so
    if found < expected:
        _refuse(path, expected, found)


def _refuse_stream(path: Path, exc: Exception) -> None:
    raise AxonInputError(path, f"is truncated or corrupt: its compressed data stops or breaks before the end "
                               f"({exc}) (an interrupted copy or download?); copy the file again")


# ----------------------------------------------------------------------------- NRRD


def _read_text_header(f, is_end) -> tuple[list[str], int] | None:
    """Header lines up to the end marker and the byte offset just after it."""
    lines, pos = [], 0
    while True:
        raw = f.readline(65536)
        if not raw:
            return None
        pos += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        if is_end(line, lines):
            lines.append(line)
            return lines, pos
        lines.append(line)
        if len(lines) > 10000:
            return None


def _check_nrrd(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            if not f.read(4) == b"NRRD":
                return
            f.seek(0)
            parsed = _read_text_header(f, lambda line, lines: line.strip() == "")
            fields = {}
            if parsed is None:
                if path.name.lower().endswith(".nhdr"):
                    f.seek(0)
                    parsed = (f.read().decode("latin-1").splitlines(), None)
                else:
                    return
            for line in parsed[0][1:]:
                if ":" in line and not line.startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.lstrip("=").strip()
            data_offset = parsed[1]
    except OSError:
        return
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        itemsize = _NRRD_SIZE.get(fields.get("type", "").lower())
    except (KeyError, ValueError):
        return
    encoding = fields.get("encoding", "raw").lower()
    if itemsize is None or not sizes or any(s < 1 for s in sizes) or encoding not in ("raw", "gz", "gzip"):
        return
    expected = int(np.prod(sizes, dtype=np.int64)) * itemsize
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if data_file.split()[0].upper() == "LIST" or "%" in data_file or len(data_file.split()) > 1:
            return  # multi-file data: left to ITK
        target, skip = path.parent / data_file, 0
    else:
        if data_offset is None:
            return
        target, skip = path, data_offset
    try:
        byte_skip = int(fields.get("byte skip", "0"))
    except ValueError:
        return
    if byte_skip < 0 or int(fields.get("line skip", "0") or 0) != 0:
        return
    try:
        with open(target, "rb") as f:
            f.seek(skip)
            if encoding == "raw":
                found = max(target.stat().st_size - skip - byte_skip, 0)
            else:
                with gzip.GzipFile(fileobj=f, mode="rb") as g:
                    found = max(_stream_length(g.read, expected + byte_skip) - byte_skip, 0)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        _refuse_stream(path, exc)
        return
    except OSError:
        return
    if found < expected:
        _refuse(path, expected, found)


# ----------------------------------------------------------------------------- MetaImage


def _check_meta(path: Path) -> None:
    def end(line, lines):
        return line.split("=")[0].strip() == "ElementDataFile"

    try:
        with open(path, "rb") as f:
            parsed = _read_text_header(f, end)
    except OSError:
        return
    if parsed is None:
        return
    fields = {}
    for line in parsed[0]:
        if "=" in line:
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        itemsize = _MET_SIZE[fields["ElementType"].upper()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except (KeyError, ValueError):
        return
    if not dims or any(d < 1 for d in dims) or channels < 1 or header_size != 0:
        return
    expected = int(np.prod(dims, dtype=np.int64)) * itemsize * channels
    compressed = fields.get("CompressedData", "False").lower() == "true"
    data_file = fields["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        target, skip = path, parsed[1]
    elif data_file.upper().startswith("LIST") or "%" in data_file or len(data_file.split()) > 1:
        return
    else:
        target, skip = path.parent / data_file, 0
    try:
        with open(target, "rb") as f:
            f.seek(skip)
            if not compressed:
                found = max(target.stat().st_size - skip, 0)
            else:
                d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header
                found = 0
                while found <= expected:
                    block = f.read(_BLOCK)
                    if not block:
                        break
                    found += len(d.decompress(block, expected + 1 - found))
                    while d.unconsumed_tail and found <= expected:
                        found += len(d.decompress(d.unconsumed_tail, expected + 1 - found))
                    if d.eof:
                        break
                ended_early = found < expected and not d.eof
    except zlib.error as exc:
        _refuse_stream(path, exc)
        return
    except OSError:
        return
    if compressed and ended_early:
        _refuse_stream(path, EOFError("the compressed stream ends early"))
    if found < expected:
        _refuse(path, expected, found)
