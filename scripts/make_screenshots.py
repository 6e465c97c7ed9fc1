"""The extension's screenshots from a real reconstruction, real Slicer views and the real panel.

Run by scripts/make_screenshots.sh in the screenshot environment (.venv-screens: trame-slicer, which
brings Slicer's MRML, slice and 3D view logic, and VTK with offscreen OpenGL; PySide6 for the panel):

    python scripts/make_screenshots.py --demo out/screenshots-demo --out Resources/Screenshots

`--demo` is the folder `axon demo` wrote (reconstruction.nrrd and ground_truth_model_grid.nrrd of the
bundled chest case, metrics.json). Writes, each a PNG under 500 KB:

- AXONReconstruction-1.png: a Slicer-like window, the AXON panel beside the views;
- AXONReconstruction-slices.png: coronal and axial slice views, reconstruction beside ground truth,
  both in the CT window the module applies (W 1500 / L -400);
- AXONReconstruction-3d.png: 3D volume rendering of the reconstruction, preset CT-Chest-Contrast-Enhanced;
- AXONReconstruction-panel.png: the panel alone (its .ui rendered by PySide6 offscreen).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "AXONReconstruction"))

CT_WINDOW_LEVEL = (1500.0, -400.0)  # = AXONReconstructionLib.logic.CT_WINDOW_LEVEL (checked below)
VR_PRESET = "CT-Chest-Contrast-Enhanced"
VIEW = 360  # pixels per slice view side
SLICE_COLORS = {"Red": "#F34A33", "Yellow": "#EDD54C", "Green": "#6EB04B"}
MAX_BYTES = 500_000


def log(text: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ------------------------------------------------------------------ Slicer views (trame-slicer)
class Views:
    def __init__(self):
        from trame_slicer.core import SlicerApp
        from trame_slicer.views import DirectViewFactory

        self.app = SlicerApp()
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        self.scene = self.app.scene

    def load(self, path: Path, name: str):
        if not path.is_file():
            raise FileNotFoundError(f"missing volume {path} (run `axon demo --out {path.parent}` first)")
        node = self.app.volumes_logic.AddArchetypeVolume(str(path), name, 4)
        if node is None:
            raise RuntimeError(f"Slicer could not read {path}")
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*CT_WINDOW_LEVEL)
        return node

    def slice_image(self, tag: str, orientation: str, node, size=(VIEW, VIEW)) -> np.ndarray:
        from trame_slicer.views import ViewLayoutDefinition

        view = self.app.view_manager.create_view(ViewLayoutDefinition.slice_view(orientation, label=tag))
        self.app.view_manager.set_current_view_ids(list(set(self.app.view_manager.get_current_view_ids()) | {tag}))
        view.render_window().SetSize(*size)
        view.set_background_volume_id(node.GetID())
        view.set_foreground_volume_id(None)
        view.fit_view_to_content()
        return self._grab(view)

    def volume_rendering(self, node, size) -> np.ndarray:
        from trame_slicer.views import ViewLayoutDefinition

        view = self.app.view_manager.create_view(ViewLayoutDefinition.threed_view(name="ThreeD", label="1"))
        self.app.view_manager.set_current_view_ids(list(set(self.app.view_manager.get_current_view_ids()) | {"ThreeD"}))
        view.render_window().SetSize(*size)
        vr = self.app.volume_rendering
        if VR_PRESET not in vr.preset_names():
            raise RuntimeError(f"volume rendering preset {VR_PRESET} not found")
        display = vr.create_display_node(node, VR_PRESET)
        display.SetViewNodeIDs([view.get_view_node_id()])
        display.SetVisibility(True)
        view.reset_camera()
        view.reset_focal_point()
        camera = view.renderer().GetActiveCamera()
        camera.Zoom(1.1)
        return self._grab(view)

    @staticmethod
    def _grab(view) -> np.ndarray:
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        view.render()
        view.render_window().Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(view.render_window())
        grab.ReadFrontBufferOff()
        grab.SetInputBufferTypeToRGB()
        grab.Update()
        image = grab.GetOutput()
        w, h, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
        if pixels.std() < 1:
            raise RuntimeError("a rendered view is blank (no OpenGL offscreen? install libosmesa6 libegl1 libgl1)")
        return np.ascontiguousarray(pixels)


# ------------------------------------------------------------------ drawing helpers (Pillow)
def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def slice_view_tile(pixels: np.ndarray, view: str, letter: str, volume_name: str, orientation: str):
    """A slice view as Slicer draws it: the coloured controller bar with the view's letter and
    orientation above the image, the volume name in the lower-left corner (B: background)."""
    from PIL import Image, ImageDraw

    bar = 20
    tile = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + bar), SLICE_COLORS[view])
    tile.paste(Image.fromarray(pixels), (0, bar))
    draw = ImageDraw.Draw(tile)
    draw.text((6, 3), f"{letter}   {orientation}", fill="black", font=_font(12))
    draw.text((6, tile.height - 18), f"B: {volume_name}", fill="#ffffff", font=_font(11))
    return tile


def threed_tile(pixels: np.ndarray):
    from PIL import Image, ImageDraw

    bar = 20
    tile = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + bar), "#94a4c4")
    tile.paste(Image.fromarray(pixels), (0, bar))
    ImageDraw.Draw(tile).text((6, 3), "1   3D: volume rendering, " + VR_PRESET, fill="black", font=_font(12))
    return tile


def save_png(image, path: Path, shrink: bool = False) -> Path:
    """Atomic PNG write, reduced to a 256-colour palette (and, with `shrink`, scaled down in 10 %
    steps) if needed to stay under MAX_BYTES."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, "PNG", optimize=True)
    scale = 1.0
    while tmp.stat().st_size > MAX_BYTES and scale > 0.5:
        if scale < 1.0:
            image = image.resize((round(image.width * 0.9), round(image.height * 0.9)), Image.LANCZOS)
        image.convert("RGB").quantize(colors=256, dither=0).save(tmp, "PNG", optimize=True)
        scale = scale * 0.9 if shrink else 0.0
    if tmp.stat().st_size > MAX_BYTES:
        tmp.unlink()
        raise RuntimeError(f"{path.name} is over {MAX_BYTES} bytes even with a palette; make the views smaller")
    os.replace(tmp, path)
    log(f"wrote {path} ({path.stat().st_size // 1024} KB, {image.width}x{image.height})")
    return path


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="folder written by `axon demo`")
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    args = parser.parse_args(argv)

    from PIL import Image, ImageDraw

    import make_screenshots_panel
    from AXONReconstructionLib import logic as module_logic

    assert tuple(module_logic.CT_WINDOW_LEVEL) == CT_WINDOW_LEVEL, "keep the screenshots' CT window = the module's"
    metrics = json.loads((args.demo / "metrics.json").read_text())
    from AXONReconstructionLib.sampledata import CT_NODE, DRR_NODES

    recon_name = module_logic.ReconstructionLogic.outputName(
        type("N", (), {"GetName": lambda self: DRR_NODES["frontal"]})(),
        type("N", (), {"GetName": lambda self: DRR_NODES["lateral"]})())
    truth_name = f"{CT_NODE} on AXON grid"

    log("loading the reconstruction and the ground truth into a Slicer scene")
    views = Views()
    recon = views.load(args.demo / "reconstruction.nrrd", recon_name)
    truth = views.load(args.demo / "ground_truth_model_grid.nrrd", truth_name)

    log("rendering slice views")
    tiles = {}
    for row, orientation in (("coronal", "Coronal"), ("axial", "Axial")):
        tiles[(row, "recon")] = slice_view_tile(views.slice_image(f"Red{orientation}", orientation, recon),
                                                "Red", "R", recon_name, orientation)
        tiles[(row, "truth")] = slice_view_tile(views.slice_image(f"Yellow{orientation}", orientation, truth),
                                                "Yellow", "Y", truth_name, orientation)
    log("rendering the 3D view (volume rendering)")
    vr_pixels = views.volume_rendering(recon, (VIEW * 3 // 2, 2 * VIEW + 22))  # as tall as the 2x2 slice views
    vr_tile = threed_tile(vr_pixels)

    gap = 2
    tw, th = tiles[("coronal", "recon")].size
    slices = Image.new("RGB", (2 * tw + gap, 2 * th + gap), "#202020")
    for r, row in enumerate(("coronal", "axial")):
        for c, col in enumerate(("recon", "truth")):
            slices.paste(tiles[(row, col)], (c * (tw + gap), r * (th + gap)))
    args.out.mkdir(parents=True, exist_ok=True)
    save_png(slices, args.out / "AXONReconstruction-slices.png")
    save_png(vr_tile, args.out / "AXONReconstruction-3d.png")

    log("rendering the panel (.ui in PySide6, offscreen)")
    state = json.loads(json.dumps(make_screenshots_panel.EXAMPLE_STATE))
    state["combos"]["outputSelector"] = recon_name
    seconds = float(metrics.get("seconds", {}).get("total", 0.0))
    state["status"] = (f"Done in {module_logic.duration(seconds)}: '{recon_name}'. Research use only.")
    state["compare"] = module_logic.ReconstructionLogic.metricsText(metrics) + (
        f"\nDifference volume: '{recon_name} minus ground truth (HU)'.")
    panel_path = args.out / "AXONReconstruction-panel.png"  # every section open
    make_screenshots_panel.renderPanel(panel_path, width=400, state=state)
    save_png(Image.open(panel_path).convert("RGB"), panel_path)
    # in the window: Settings as the .ui starts it (collapsed); Compare and Export opened after use
    window_panel = args.out / "AXONReconstruction-window-panel.tmp.png"
    make_screenshots_panel.renderPanel(window_panel, width=400, state=state,
                                       expand={"compareCollapsibleButton", "exportCollapsibleButton"})
    panel = Image.open(window_panel).convert("RGB")
    window_panel.unlink()

    # ---- the window: toolbar strip, panel left, views right (Slicer's light theme)
    views_img = Image.new("RGB", (slices.width + gap + vr_tile.width, max(slices.height, vr_tile.height)), "#202020")
    views_img.paste(slices, (0, 0))
    views_img.paste(vr_tile, (slices.width + gap, 0))
    toolbar = 34
    height = toolbar + max(panel.height, views_img.height) + 8
    window = Image.new("RGB", (panel.width + 8 + views_img.width + 8, height), "#f4f4f4")
    draw = ImageDraw.Draw(window)
    draw.rectangle([0, 0, window.width, toolbar - 1], fill="#e8e8e8")
    draw.line([0, toolbar - 1, window.width, toolbar - 1], fill="#c0c0c0")
    draw.text((10, 9), "3D Slicer   |   AXON Reconstruction: reconstruction (R) beside ground truth (Y), linked",
              fill="#303030", font=_font(13))
    window.paste(panel, (4, toolbar + 4))
    window.paste(views_img, (panel.width + 8, toolbar + 4))
    save_png(window, args.out / "AXONReconstruction-1.png", shrink=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
