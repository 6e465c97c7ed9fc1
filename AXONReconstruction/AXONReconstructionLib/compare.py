"""Compare a reconstruction with a ground-truth CT in the scene, without Qt: the ground truth on the
reconstruction's grid, aligned by body centroids (as `axon evaluate` puts it there), a difference
volume, and the metrics (PSNR/SSIM in two labelled conventions, MAE in HU) as a table node, all
referenced from the reconstruction node so a second comparison updates them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import slicer

from . import mrmlio

DIFFERENCE_WINDOW_LEVEL = (1000.0, 0.0)
REF_DIFFERENCE = "AXONDifference"
REF_TRUTH_ON_GRID = "AXONGroundTruthOnGrid"
REF_METRICS = "AXONMetrics"


class ComparisonLogic:
    """Mixed into `logic.ReconstructionLogic`; ``self.temporaryRoot()`` (a scratch folder) comes from the
    host class (`job.ReconstructionJobs`)."""

    def compare(self, reconstructionNode, groundTruthNode) -> dict:
        """Ground truth -> the reconstruction's grid exactly as `axon evaluate` does
        (`axonct.tools.compare.align_ground_truth`: translated so the body centroids coincide, then
        resampled onto the reconstruction's own grid, anti-aliased, bed removed), then scored with
        `axonct.tools.compare.score_aligned` (``metrics`` also holds ``alignment`` and ``grid``). Adds
        (or updates) a difference volume, the ground truth on the grid and a metrics table, all
        referenced from the reconstruction node."""
        import SimpleITK as sitk

        from axonct.io.ct import read_ct
        from axonct.io.ct_preprocess import unit_to_hu
        from axonct.errors import AxonInputError
        from axonct.tools.compare import align_ground_truth, score_aligned

        if groundTruthNode is None:
            raise ValueError("choose a ground-truth CT volume")
        if reconstructionNode is None or reconstructionNode.GetImageData() is None:
            raise ValueError("choose a reconstruction volume first")
        prediction = mrmlio.imageFromVolumeNode(reconstructionNode, np.float32)
        temp = Path(tempfile.mkdtemp(prefix="AXON-compare-", dir=self.temporaryRoot()))
        try:
            path = temp / "ground_truth.nrrd"
            sitk.WriteImage(mrmlio.imageFromVolumeNode(groundTruthNode, np.float32), str(path), False)
            try:
                truth_image = read_ct(path)  # the same checks as `axon evaluate --gt`
            except AxonInputError as exc:
                raise ValueError(f"ground truth '{groundTruthNode.GetName()}' {exc.problem}") from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        try:
            aligned = align_ground_truth(prediction, truth_image, sources=(
                f"'{reconstructionNode.GetName()}'", f"ground truth '{groundTruthNode.GetName()}'"))
        except AxonInputError as exc:
            raise ValueError(str(exc)) from None
        metrics = score_aligned(aligned)
        pred_hu, gt_hu = unit_to_hu(aligned.pred_unit, aligned.window), unit_to_hu(aligned.gt_unit, aligned.window)

        name = reconstructionNode.GetName()
        truth = self._referencedVolume(reconstructionNode, REF_TRUTH_ON_GRID, f"{groundTruthNode.GetName()} on AXON grid")
        mrmlio.copyGeometry(reconstructionNode, truth, gt_hu.astype(np.float32))
        mrmlio.setWindowLevel(truth, *mrmlio.CT_WINDOW_LEVEL)
        diff = self._referencedVolume(reconstructionNode, REF_DIFFERENCE, f"{name} minus ground truth (HU)")
        mrmlio.copyGeometry(reconstructionNode, diff, (pred_hu - gt_hu).astype(np.float32))
        mrmlio.setWindowLevel(diff, *DIFFERENCE_WINDOW_LEVEL)
        table = self._metricsTable(reconstructionNode, metrics, f"{name} metrics")
        return {"metrics": metrics, "differenceNode": diff, "groundTruthOnGridNode": truth, "tableNode": table}

    @staticmethod
    def _referencedVolume(owner, role: str, name: str):
        node = owner.GetNodeReference(role)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            scene = slicer.mrmlScene
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
            owner.SetNodeReferenceID(role, node.GetID())
        return node

    @staticmethod
    def metricRows(metrics: dict) -> list[tuple[str, float, str, str]]:
        h, x = metrics["honest"], metrics["x2ct"]
        body = metrics.get("mae_hu_body")
        return [
            ("PSNR (honest)", h["psnr"], "dB", h["convention"]),
            ("SSIM (honest)", h["ssim"], "", h["convention"]),
            ("PSNR (X2CT convention)", x["psnr"], "dB", x["convention"]),
            ("SSIM (X2CT convention)", x["ssim"], "", x["convention"]),
            ("MAE", metrics["mae_hu"], "HU", "whole cube"),
            ("MAE inside the body", float("nan") if body is None else body, "HU", "ground truth above -500 HU"),
        ]

    def _metricsTable(self, owner, metrics: dict, name: str):
        import vtk

        table_node = owner.GetNodeReference(REF_METRICS)
        if table_node is None:
            scene = slicer.mrmlScene
            table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
            owner.SetNodeReferenceID(REF_METRICS, table_node.GetID())
        rows = self.metricRows(metrics)
        columns = [("Metric", vtk.vtkStringArray), ("Value", vtk.vtkDoubleArray), ("Unit", vtk.vtkStringArray),
                   ("Convention", vtk.vtkStringArray)]
        table = table_node.GetTable()
        wasModifying = table_node.StartModify()
        while table.GetNumberOfColumns():
            table.RemoveColumn(0)
        for c, (title, kind) in enumerate(columns):
            array = kind()
            array.SetName(title)
            array.SetNumberOfValues(len(rows))
            for r, row in enumerate(rows):
                array.SetValue(r, float(row[c]) if kind is vtk.vtkDoubleArray else str(row[c]))
            table.AddColumn(array)
        table.Modified()
        table_node.Modified()
        table_node.EndModify(wasModifying)
        return table_node

    @staticmethod
    def metricsText(metrics: dict) -> str:
        h, x = metrics["honest"], metrics["x2ct"]
        body = metrics.get("mae_hu_body")
        text = (f"PSNR {h['psnr']:.2f} dB, SSIM {h['ssim']:.3f} (honest: 3D, whole volume)\n"
                f"PSNR {x['psnr']:.2f} dB, SSIM {x['ssim']:.3f} (X2CT papers' convention)\n"
                f"MAE {metrics['mae_hu']:.0f} HU")
        if body is not None:
            text += f", inside the body {body:.0f} HU"
        shift = (metrics.get("alignment") or {}).get("shift_mm")
        if shift is not None:
            text += "\nGround truth moved by ({:.1f}, {:.1f}, {:.1f}) mm (LPS): body centroids aligned".format(*shift)
        return text
