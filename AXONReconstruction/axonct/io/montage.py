"""PNG montages of volumes and views, for people to look at (no matplotlib dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from axonct.errors import AxonInputError
from axonct.atomic import atomic_path


def to_uint8(img: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    lo = float(np.percentile(img, 0.5)) if lo is None else lo
    hi = float(np.percentile(img, 99.5)) if hi is None else hi
    return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def orthogonal_slices(cube: np.ndarray) -> dict[str, np.ndarray]:
    """Mid slices of a [z, y, x] LPS cube in radiological display (patient right on the left, head up)."""
    z, y, x = (s // 2 for s in cube.shape)
    return {
        "axial": cube[z, :, :],  # rows anterior->posterior, cols right->left
        "coronal": cube[::-1, y, :],  # rows superior->inferior, cols right->left
        "sagittal": cube[::-1, :, x],  # rows superior->inferior, cols anterior->posterior
    }


MONTAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def montage_format(path: str | Path) -> str:
    """The image format a montage's name asks for; other names are refused (a JPEG name holding PNG
    data fools every viewer that trusts the extension)."""
    suffix = Path(path).suffix.lower()
    if suffix not in MONTAGE_FORMATS:
        raise AxonInputError(path, "a montage is written as .png or .jpg; choose one of those names")
    return MONTAGE_FORMATS[suffix]


def save_montage(rows: list[list[tuple[str, np.ndarray]]], path: str | Path, tile: int = 192) -> Path:
    """Grid of labelled uint8 tiles; each row is a list of (label, image). PNG or JPEG by the name."""
    ncols = max(len(r) for r in rows)
    label_h = 16
    canvas = Image.new("L", (ncols * tile, len(rows) * (tile + label_h)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        for j, (label, img) in enumerate(row):
            arr = img if img.dtype == np.uint8 else to_uint8(img)
            im = Image.fromarray(arr).resize((tile, tile), Image.BILINEAR)
            top = i * (tile + label_h)
            canvas.paste(im, (j * tile, top + label_h))
            draw.text((j * tile + 3, top + 2), label, fill=255)
    path = Path(path)
    fmt = montage_format(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return path
