#!/usr/bin/env python
"""Validate axonct's cone-beam DRR projector (`axonct.physics.drr.project`) against DiffDRR 0.6.1.

The same analytic phantom (``Testing/engine/phantoms.py``: body, two lungs, a left-anterior heart,
a posterior spine, a superior-left marker and an inferior-right blob, so any flip or transposition
shows) is rendered by both projectors in the X2CT geometry (source-isocenter 541 mm,
source-detector 949 mm, 500 mm square flat detector) for the PA frontal and the left-lateral view.
Both are fed the *attenuation itself* (1/mm), so both outputs are line integrals (dimensionless,
mu * mm) and no intensity scale has to be fitted: the printed scale ratio checks that.

With ``--write-reference`` the DiffDRR images and everything needed to rebuild the phantom
(parameters, not the volume) go to ``Testing/engine/data/diffdrr_reference.npz``, which
``Testing/engine/test_drr_vs_diffdrr.py`` checks in CI without DiffDRR installed.

Setting up the separate venv (never install DiffDRR in the project venv)
-----------------------------------------------------------------------
::

    python3 -m venv /tmp/ddvenv
    /tmp/ddvenv/bin/pip install torch==2.13.0            # CPU wheel; pin it, or pip pulls CUDA builds
    echo torch==2.13.0 > /tmp/ddconstraints.txt
    /tmp/ddvenv/bin/pip install -c /tmp/ddconstraints.txt torchio pandas einops fastcore
    /tmp/ddvenv/bin/pip install --no-deps diffdrr==0.6.1

(torchio brings numpy, scipy, nibabel, SimpleITK, tqdm.) ``diffdrr.data``, ``diffdrr.drr``,
``diffdrr.detector``, ``diffdrr.renderers`` and ``diffdrr.pose`` import none of torchvision, timm,
pyvista, kornia or matplotlib (only ``metrics``, ``registration``, ``utils`` and ``visualization``
do, and they are not used), so no stub modules are needed. Run from the repository root::

    PYTHONPATH=AXONReconstruction /tmp/ddvenv/bin/python scripts/validate_drr_against_diffdrr.py
    PYTHONPATH=AXONReconstruction /tmp/ddvenv/bin/python scripts/validate_drr_against_diffdrr.py --write-reference

Conventions mapping (worked out from DiffDRR 0.6.1's ``data.read``, ``detector.Detector`` and
``pose.convert``, and checked numerically: ``--check-orientation`` prints the ray end points and
scores all 8 flips/transposes of DiffDRR's image against ours)
-------------------------------------------------------------------------------------------------
* Volume. DiffDRR works in RAS+ world millimetres through a torchio ``ScalarImage`` whose data is
  indexed ``[i, j, k]`` (channel first). Our cube is ``mu[z, y, x]`` on an identity LPS grid, so
  the data handed over is ``mu.transpose(2, 1, 0)`` (``[x, y, z]``) with affine
  ``diag(-s, -s, +s)`` (LPS -> RAS flips x and y) and translation ``(fov/2 - s/2) * (1, 1, -1)``,
  i.e. voxel centres at ``(i + 0.5) s - fov/2`` exactly as in axonct. ``read(center_volume=True)``
  moves the voxel-centre midpoint ``(N-1)/2`` to the world origin, which is already the case: the
  DiffDRR isocenter is our isocenter. The voxel ``i`` is centred on integer voxel coordinate ``i``
  (``voxel_shift=0.5``, DiffDRR's default), matching our voxel-centre convention.
* Intensities. ``read`` maps HU to a min-max normalised "density"; we bypass it by overwriting
  ``subject.density`` with the attenuation cube (1/mm). DiffDRR multiplies the per-ray parametric
  step by the ray's source-target length in world mm, so its output is sum(mu * mm), the same
  quantity as ``axonct.physics.drr.project``.
* Camera. ``DRR(subject, sdd=949, height=P, delx=500/P)`` (``width=P``, ``dely=delx``, ``x0=y0=0``,
  ``reverse_x_axis=True``: all defaults). In the camera frame the source is at the origin and the
  detector plane at ``z = sdd``; pixel centres are at ``((W/2 - 0.5 - c) * delx, (H/2 - 0.5 - r) * dely)``
  for column ``c``, row ``r`` (``reverse_x_axis`` makes column 0 the +x camera side; row 0 is +y),
  i.e. the same centred pixel grid as axonct's. A pose is ``world = R (Reorient p + t)`` where
  ``Reorient`` comes from ``read(orientation=...)`` and ``(R, t)`` from
  ``convert(rot, t, parameterization="euler_angles", convention="ZXY", degrees=True)``.
* ``orientation="PA"`` (Reorient: camera ``(x, y, z) -> (x, z, y)``, a reflection), rotation
  ``(0, 0, 0)`` and translation ``(0, -541, 0)``: source at RAS ``y = -541`` (posterior), detector
  centre at ``y = +408`` (anterior), column 0 at RAS ``+x`` (patient's right), row 0 superior.
  That is exactly axonct's frontal view (source LPS ``+y * 541``, u = +x_LPS, v = -z).
* Lateral: same, with rotation ``(90, 0, 0)`` (90 deg about +z): source at RAS ``x = +541``
  (patient's right), detector at the patient's left, column 0 anterior, row 0 superior: exactly
  axonct's lateral view (gantry 90 deg, source at -x_LPS * 541, u = +y_LPS).
* Therefore **no flip or transpose** of DiffDRR's output is needed: ``drr(...)[0, 0]`` (rows,
  cols) is compared to ``axonct.physics.drr.project(...)`` as is. (With ``orientation="AP"`` instead, the
  PA view would need a 180 deg rotation about z and then comes out left-right mirrored.)
* Renderers. ``siddon`` (default ``mode="nearest"``: exact line integral of the piecewise-constant
  voxel function) and ``trilinear`` (trilinear samples, rectangle rule, ``n_points`` samples between
  the global entry/exit). axonct uses Joseph's method (bilinear in-plane samples at every voxel
  plane of the dominant axis). The interpolants differ, so the phantom has ramped edges; the
  remaining difference is discretisation, not convention.

Metrics (ours vs DiffDRR, per view): NRMSE = RMSE / (max - min of DiffDRR's image), Pearson r,
max |difference| / max of DiffDRR's image, and the global scale ratio sum(ours) / sum(DiffDRR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "engine"))
sys.path.insert(0, str(REPO / "AXONReconstruction"))

import phantoms  # noqa: E402
from axonct.config import ProjectionGeometry, VolumeGrid  # noqa: E402
from axonct.physics.drr import project  # noqa: E402
from axonct.physics.geometry import view_geometry  # noqa: E402

DEFAULT_REFERENCE = REPO / "Testing" / "engine" / "data" / "diffdrr_reference.npz"
VIEWS = ("frontal", "lateral")
#: DiffDRR pose per view: (rotation in degrees, ZXY Euler) and translation, with orientation="PA".
DIFFDRR_POSES = {"frontal": (0.0, 0.0, 0.0), "lateral": (90.0, 0.0, 0.0)}
DIFFDRR_ORIENTATION = "PA"
EULER_CONVENTION = "ZXY"
MAPPING = (
    "DiffDRR 0.6.1: read(ScalarImage(mu.transpose(2,1,0), affine=diag(-s,-s,s)+t), orientation='PA'), "
    "subject.density := mu (1/mm); DRR(sdd=SDD, height=width=P, delx=dely=D/P, reverse_x_axis=True); "
    "pose = convert(rot_deg, (0,-SID,0), 'euler_angles', 'ZXY', degrees=True) with rot = (0,0,0) frontal, "
    "(90,0,0) lateral; output image [row, col] used as is (no flip/transpose)."
)


def metrics(ours: np.ndarray, ref: np.ndarray) -> dict:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = ours - ref
    rng = float(ref.max() - ref.min())
    return {
        "nrmse": float(np.sqrt(np.mean(diff**2)) / rng),
        "pearson": float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1]),
        "max_abs_rel": float(np.abs(diff).max() / np.abs(ref).max()),
        "scale_ratio": float(ours.sum() / ref.sum()),
    }


def lps_to_torchio(volume_zyx: np.ndarray, fov_mm: float):
    """(data [1, X, Y, Z], RAS affine) for a [z, y, x] LPS cube centred on the isocenter."""
    size = volume_zyx.shape[0]
    s = fov_mm / size
    c0 = fov_mm / 2.0 - s / 2.0  # minus the LPS coordinate of voxel centre 0
    affine = np.array(
        [[-s, 0, 0, c0], [0, -s, 0, c0], [0, 0, s, -c0], [0, 0, 0, 1]],
        dtype=np.float64,
    )
    data = torch.from_numpy(np.ascontiguousarray(volume_zyx.transpose(2, 1, 0)))[None]
    return data, affine


def diffdrr_render(
    volume_zyx: np.ndarray,
    grid: VolumeGrid,
    geometry: ProjectionGeometry,
    renderer: str,
    n_points: int,
    verbose: bool = False,
) -> dict[str, np.ndarray]:
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    data, affine = lps_to_torchio(volume_zyx, grid.fov_mm)
    subject = read(ScalarImage(tensor=data, affine=affine), orientation=DIFFDRR_ORIENTATION, center_volume=True)
    subject.density.set_data(data.clone())  # feed attenuation (1/mm), bypassing read's HU->density map
    assert np.allclose(subject.volume.get_center(), 0.0, atol=1e-6), "isocenter moved"
    drr = DRR(
        subject,
        sdd=geometry.source_to_detector_mm,
        height=geometry.detector_pixels,
        delx=geometry.pixel_spacing_mm,
        renderer=renderer,
    )
    kwargs = {"n_points": n_points} if renderer == "trilinear" else {}
    out = {}
    for view in VIEWS:
        rot = torch.tensor([DIFFDRR_POSES[view]], dtype=torch.float32)
        trans = torch.tensor([[0.0, -geometry.source_to_isocenter_mm, 0.0]])
        with torch.no_grad():
            img = drr(rot, trans, parameterization="euler_angles", convention=EULER_CONVENTION, degrees=True, **kwargs)
            if verbose:
                from diffdrr.pose import convert

                pose = convert(rot, trans, parameterization="euler_angles", convention=EULER_CONVENTION, degrees=True)
                src, tgt = drr.detector(pose, None)
                P = geometry.detector_pixels
                tgt = tgt[0].reshape(P, P, 3)
                lps = torch.tensor([-1.0, -1.0, 1.0])
                print(f"  [{view}] DiffDRR source (LPS mm) {(src[0, 0] * lps).numpy().round(2)}")
                print(f"  [{view}] DiffDRR pixel[0,0] {(tgt[0, 0] * lps).numpy().round(2)}  pixel[0,-1] {(tgt[0, -1] * lps).numpy().round(2)}  pixel[-1,0] {(tgt[-1, 0] * lps).numpy().round(2)}")
                g = view_geometry(view, geometry)
                pc = g.pixel_centers()
                print(f"  [{view}] axonct  source (LPS mm) {g.source.round(2)}")
                print(f"  [{view}] axonct  pixel[0,0] {pc[0, 0].round(2)}  pixel[0,-1] {pc[0, -1].round(2)}  pixel[-1,0] {pc[-1, 0].round(2)}")
        out[view] = img[0, 0].numpy().astype(np.float32)
    return out


def axonct_render(volume_zyx: np.ndarray, grid: VolumeGrid, geometry: ProjectionGeometry) -> dict[str, np.ndarray]:
    vol = torch.from_numpy(volume_zyx)
    with torch.no_grad():
        return {v: project(vol, grid, view_geometry(v, geometry)).numpy() for v in VIEWS}


def dihedral_scores(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Pearson r of ours against each of the 8 flips/transposes of the reference image."""
    cands = {
        "identity": ref,
        "fliplr": ref[:, ::-1],
        "flipud": ref[::-1, :],
        "rot180": ref[::-1, ::-1],
        "transpose": ref.T,
        "transpose+fliplr": ref.T[:, ::-1],
        "transpose+flipud": ref.T[::-1, :],
        "antitranspose": ref.T[::-1, ::-1],
    }
    return {k: float(np.corrcoef(ours.ravel(), v.ravel())[0, 1]) for k, v in cands.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96, help="phantom cube size (voxels)")
    ap.add_argument("--fov", type=float, default=320.0, help="cube side (mm)")
    ap.add_argument("--pixels", type=int, default=64, help="detector pixels per side")
    ap.add_argument("--edge-mm", type=float, default=phantoms.DEFAULT_EDGE_MM, help="phantom edge ramp width")
    ap.add_argument("--renderers", nargs="+", default=["siddon", "trilinear"], choices=["siddon", "trilinear"])
    ap.add_argument("--n-points", type=int, default=1000, help="samples per ray for DiffDRR's trilinear renderer")
    ap.add_argument("--check-orientation", action="store_true", help="print ray end points of both projectors")
    ap.add_argument("--write-reference", action="store_true", help=f"write {DEFAULT_REFERENCE.relative_to(REPO)}")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--nrmse-max", type=float, default=0.01)
    ap.add_argument("--pearson-min", type=float, default=0.999)
    args = ap.parse_args(argv)

    import diffdrr

    torch.set_num_threads(min(2, torch.get_num_threads()))
    grid = VolumeGrid(size=args.size, fov_mm=args.fov)
    geometry = ProjectionGeometry(detector_pixels=args.pixels)
    vol = phantoms.build_phantom(args.size, args.fov, phantoms.CHEST_PHANTOM, args.edge_mm)
    print(f"DiffDRR {diffdrr.__version__}, torch {torch.__version__}; phantom {args.size}^3 over {args.fov} mm, "
          f"edge {args.edge_mm} mm; detector {args.pixels}^2 x {geometry.pixel_spacing_mm:.4f} mm; "
          f"SID {geometry.source_to_isocenter_mm} SDD {geometry.source_to_detector_mm}")

    ours = axonct_render(vol, grid, geometry)
    refs: dict[str, dict[str, np.ndarray]] = {}
    ok = True
    for r in args.renderers:
        refs[r] = diffdrr_render(vol, grid, geometry, r, args.n_points, verbose=args.check_orientation and r == args.renderers[0])
        for v in VIEWS:
            m = metrics(ours[v], refs[r][v])
            scores = dihedral_scores(ours[v], refs[r][v])
            best = max(scores, key=scores.get)
            good = m["nrmse"] < args.nrmse_max and m["pearson"] > args.pearson_min and best == "identity"
            ok &= good
            print(f"axonct vs DiffDRR[{r:9s}] {v:8s}: NRMSE {100 * m['nrmse']:.3f} %  r {m['pearson']:.6f}  "
                  f"max|d|/max {100 * m['max_abs_rel']:.2f} %  scale {m['scale_ratio']:.5f}  "
                  f"best orientation '{best}' (r={scores[best]:.4f}; next {sorted(scores.values())[-2]:.4f})  "
                  f"{'OK' if good else 'FAIL'}")
    if len(refs) == 2:
        for v in VIEWS:
            m = metrics(refs["trilinear"][v], refs["siddon"][v])
            print(f"DiffDRR trilinear vs siddon (baseline)  {v:8s}: NRMSE {100 * m['nrmse']:.3f} %  r {m['pearson']:.6f}  "
                  f"max|d|/max {100 * m['max_abs_rel']:.2f} %  scale {m['scale_ratio']:.5f}")

    if args.write_reference:
        names = list(refs)
        images = np.stack([np.stack([refs[r][v] for v in VIEWS]) for r in names]).astype(np.float32)
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            args.reference,
            images=images,  # [renderer, view, row, col], line integrals (mu * mm)
            renderers=np.array(names),
            views=np.array(VIEWS),
            phantom_shapes=phantoms.CHEST_PHANTOM,
            edge_mm=np.float64(args.edge_mm),
            grid_size=np.int64(args.size),
            fov_mm=np.float64(args.fov),
            source_to_isocenter_mm=np.float64(geometry.source_to_isocenter_mm),
            source_to_detector_mm=np.float64(geometry.source_to_detector_mm),
            detector_size_mm=np.float64(geometry.detector_size_mm),
            detector_pixels=np.int64(geometry.detector_pixels),
            trilinear_n_points=np.int64(args.n_points),
            diffdrr_version=np.array(diffdrr.__version__),
            torch_version=np.array(torch.__version__),
            mapping=np.array(MAPPING),
            diffdrr_poses=np.array(json.dumps(DIFFDRR_POSES)),
        )
        print(f"wrote {args.reference} ({args.reference.stat().st_size / 1024:.1f} KiB)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
