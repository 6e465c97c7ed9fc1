"""Slicer's slice and 3D views in the page (trame-slicer): the reconstruction in three linked slice
views and a 3D volume rendering with CT presets, window/level, and the comparison side by side.

The views are Slicer's own (vtkMRMLSliceLogic, displayable managers, volume rendering logic) on the
scene the Lib works on; trame-slicer streams each view as images and sends the mouse back.
"""

from __future__ import annotations

DEFAULT_PRESET = "CT-Chest-Contrast-Enhanced"
"""The Slicer panel's 3D preset (AXONReconstructionLogic.VOLUME_RENDERING_PRESET)."""
WINDOW_PRESETS = {  # name -> (window, level) in HU; "Lung" is the panel's own CT window
    "Lung": (1500.0, -400.0),
    "Mediastinum": (350.0, 50.0),
    "Soft tissue": (400.0, 40.0),
    "Bone": (1800.0, 400.0),
}
ORIENTATIONS = (("Axial", "Red", "#F34A33"), ("Coronal", "Green", "#6DAD4A"), ("Sagittal", "Yellow", "#EFD64D"))
RESULT_LAYOUT, COMPARE_LAYOUT = "AXON result", "AXON compare"
TRUTH_SUFFIX = "Truth"  # the compare layout's right-hand views: Red + TRUTH_SUFFIX, ...


def layouts() -> dict:
    """The page's two layouts: the result (three slice views and 3D) and the comparison (the
    reconstruction's three slice views beside the ground truth's, or the difference's)."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    left = [ViewLayoutDefinition.slice_view(o, label=tag, color=color) for o, tag, color in ORIENTATIONS]
    right = [ViewLayoutDefinition.slice_view(o, label=tag + TRUTH_SUFFIX, color=color)
             for o, tag, color in ORIENTATIONS]
    three_d = ViewLayoutDefinition.threed_view()
    return {
        RESULT_LAYOUT: Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [left[0], left[1]]),
            Layout(LayoutDirection.Vertical, [three_d, left[2]])]),
        COMPARE_LAYOUT: Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, left), Layout(LayoutDirection.Vertical, right)]),
    }


class SlicerViews:
    """What the workflow shows, on trame-slicer's views (``app``: a `trame_slicer.core.SlicerApp`)."""

    def __init__(self, app, layout_manager):
        self.app = app
        self.layout_manager = layout_manager
        self.volume_id: str | None = None  # the reconstruction (or the CT shown before one exists)
        self.truth_id: str | None = None
        self.difference_id: str | None = None
        self.right = "truth"  # what the compare layout's right column shows: "truth" or "difference"
        self.window_level = WINDOW_PRESETS["Lung"]
        self.preset = DEFAULT_PRESET

    # ---------------------------------------------------------------- helpers
    def _node(self, node_id):
        return self.app.scene.GetNodeByID(node_id) if node_id else None

    def _slice_views(self, suffix: str = ""):
        views = []
        for _, tag, _ in ORIENTATIONS:
            view = self.app.view_manager.get_view(tag + suffix)
            if view is not None:
                views.append(view)
        return views

    def preset_names(self) -> list[str]:
        """Slicer's CT volume-rendering presets (the panel's default first)."""
        names = [n for n in self.app.volume_rendering.preset_names() if n.startswith("CT-")]
        return sorted(names, key=lambda n: (n != DEFAULT_PRESET, n))

    @staticmethod
    def _grey(node) -> None:
        """A display node with Slicer's grey colour table: nodes read by a volumes logic that is not the
        application's (the Lib's sample case outside Slicer) come without one and render as noise."""
        if node is None:
            return
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None and not display.GetColorNodeID():
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")

    def _apply_window_level(self) -> None:
        from AXONReconstructionLib import mrmlio

        for node_id in (self.volume_id, self.truth_id):
            node = self._node(node_id)
            if node is not None:
                self._grey(node)
                mrmlio.setWindowLevel(node, *self.window_level)

    @staticmethod
    def _link(views) -> None:
        """Slicer's linked slice control: moving through one view moves the views of its orientation."""
        for view in views:
            composite = view._logic.GetSliceCompositeNode()  # trame-slicer 2.0 keeps the slice logic here
            if composite is not None:
                composite.SetLinkedControl(True)

    # ---------------------------------------------------------------- what the workflow calls
    def show_volume(self, node, volume_rendering: bool = True) -> None:
        """A volume in the three slice views (CT window) and, for a reconstruction, in 3D."""
        self.layout_manager.set_layout(RESULT_LAYOUT)
        self.volume_id = node.GetID()
        self._apply_window_level()
        for view in self._slice_views():
            view.set_background_volume_id(node.GetID())
            view.set_foreground_volume_id(None)
        if volume_rendering:
            vr = self.app.volume_rendering
            display = vr.get_vr_display_node(node) or vr.create_display_node(node, self.preset)
            vr.apply_preset(display, self.preset)
            display.SetVisibility(True)
            for other in self._other_vr_displays(node):
                other.SetVisibility(False)
        self.reset_views()

    def _other_vr_displays(self, node):
        scene = self.app.scene
        found = []
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeRenderingDisplayNode")):
            display = scene.GetNthNodeByClass(i, "vtkMRMLVolumeRenderingDisplayNode")
            if display.GetVolumeNodeID() != node.GetID():
                found.append(display)
        return found

    def show_comparison(self, reconstruction, truth_on_grid, difference) -> None:
        """The reconstruction (left) beside the ground truth on its grid or the difference (right)."""
        self.layout_manager.set_layout(COMPARE_LAYOUT)
        self.volume_id, self.truth_id, self.difference_id = (reconstruction.GetID(), truth_on_grid.GetID(),
                                                             difference.GetID())
        self._apply_window_level()
        self._grey(difference)
        for view in self._slice_views():
            view.set_background_volume_id(reconstruction.GetID())
            view.set_foreground_volume_id(None)
        self._show_right()
        self._link(self._slice_views() + self._slice_views(TRUTH_SUFFIX))
        self.reset_views()

    def _show_right(self) -> None:
        node_id = self.difference_id if self.right == "difference" else self.truth_id
        for view in self._slice_views(TRUTH_SUFFIX):
            view.set_background_volume_id(node_id)
            view.set_foreground_volume_id(None)

    def show_segmentation(self, segmentation_node) -> None:
        """The segments over the reconstruction in the slice views, and as surfaces in 3D."""
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.CreateClosedSurfaceRepresentation()
        display = segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
            display.SetOpacity3D(0.6)
        if self.layout_manager.layout_id != RESULT_LAYOUT and self._node(self.volume_id) is not None:
            self.show_volume(self._node(self.volume_id), volume_rendering=True)

    def clear(self) -> None:
        for view in self._slice_views() + self._slice_views(TRUTH_SUFFIX):
            view.set_background_volume_id(None)
            view.set_foreground_volume_id(None)
        self.volume_id = self.truth_id = self.difference_id = None

    # ---------------------------------------------------------------- what the page's controls call
    def set_window_level(self, window: float, level: float) -> None:
        if not window > 0:
            raise ValueError(f"the window must be above 0 HU (got {window:g})")
        self.window_level = (float(window), float(level))
        self._apply_window_level()

    def set_preset(self, name: str) -> None:
        if name not in self.app.volume_rendering.preset_names():
            raise ValueError(f"unknown volume-rendering preset {name!r}")
        self.preset = name
        node = self._node(self.volume_id)
        display = self.app.volume_rendering.get_vr_display_node(node) if node is not None else None
        if display is not None:
            self.app.volume_rendering.apply_preset(display, name)

    def set_right(self, what: str) -> None:
        if what not in ("truth", "difference"):
            raise ValueError(f"the right column shows 'truth' or 'difference', not {what!r}")
        self.right = what
        if self.truth_id is not None:
            self._show_right()

    def reset_views(self) -> None:
        for view in self.app.view_manager.get_views():
            view.reset_view()
