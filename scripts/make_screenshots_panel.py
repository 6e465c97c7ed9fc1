"""Render the AXON panel from its real Designer file with PySide6, offscreen.

Slicer's own widget classes (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit)
do not exist outside Slicer. Small Qt stand-ins with the same class names are registered with the
loader, so the .ui builds with every object name and property kept, and the stand-ins draw like
Slicer's widgets: a collapsible section is a full-width button with an arrow over its contents, a node
selector is a combo box showing a node name, a path selector a line edit with a browse button.

Used by scripts/make_screenshots.py (the README/extension screenshots) and by Testing/slicer
(the .ui loads, has every widget the module uses, renders). Needs PySide6-Essentials.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UI_FILE = REPO / "AXONReconstruction" / "Resources" / "UI" / "AXONReconstruction.ui"

# What a user sees after loading the sample case and reconstructing it (the real node names).
EXAMPLE_STATE = {
    "combos": {"frontalSelector": "LIDC-IDRI-0001 frontal DRR", "lateralSelector": "LIDC-IDRI-0001 lateral DRR",
               "groundTruthSelector": "LIDC-IDRI-0001 CT",
               "outputSelector": "AXON CT from LIDC-IDRI-0001 frontal DRR + LIDC-IDRI-0001 lateral DRR"},
    "paths": {"weightsPathLineEdit": "AXONReconstruction/axonct/weights/cpu",
              "exportDirectoryLineEdit": "~/Documents/AXON"},
    "progress": 1000,
    "status": "Done in 1.2 min: 'AXON CT from LIDC-IDRI-0001 frontal DRR + LIDC-IDRI-0001 lateral DRR'. "
              "Research use only.",
    "compare": None,  # metrics text (filled in by the caller from a real comparison)
}


def _qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # the .ui connects the root's mrmlSceneChanged(vtkMRMLScene*) to each selector: Slicer-only signals
    os.environ.setdefault("QT_LOGGING_RULES", "qt.core.qobject.connect=false")
    from PySide6 import QtCore, QtGui, QtWidgets

    return QtCore, QtGui, QtWidgets


_STAND_INS: list = []


def standInClasses():
    """The stand-in widget classes, created once (PySide6 must be importable). They are kept alive
    here: the loader holds no Python reference to a registered class."""
    if not _STAND_INS:
        _STAND_INS.extend(_makeStandIns())
    return list(_STAND_INS)


def _makeStandIns():
    """The stand-ins, one factory each (the classes keep Slicer's names: the loader matches by name)."""
    QtCore, QtGui, QtWidgets = _qt()

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    return [qMRMLWidget, _collapsibleButtonClass(), _nodeComboBoxClass(), _pathLineEditClass()]


def _collapsibleButtonClass():
    """ctkCollapsibleButton: a header button with an arrow over contents that hide when collapsed."""
    QtCore, QtGui, QtWidgets = _qt()
    Property = QtCore.Property

    class ctkCollapsibleButton(QtWidgets.QWidget):
        """A full-width push-button header with an arrow; the contents hide when collapsed."""

        HEADER = 26

        def __init__(self, parent=None):
            super().__init__(parent)
            self._text = ""
            self._collapsed = False
            self.setContentsMargins(0, self.HEADER + 2, 0, 0)
            self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Maximum)

        def _get_text(self):
            return self._text

        def _set_text(self, value):
            self._text = value
            self.update()

        def _get_collapsed(self):
            return self._collapsed

        def _set_collapsed(self, value):
            self._collapsed = bool(value)
            self.applyCollapsed()

        def applyCollapsed(self):
            """Show or hide the contents (the loader sets `collapsed` before it adds the children, so
            `loadPanel` calls this again once the panel is built)."""
            for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                child.setVisible(not self._collapsed)
            self.updateGeometry()
            self.update()

        text = Property(str, _get_text, _set_text)
        collapsed = Property(bool, _get_collapsed, _set_collapsed)

        def sizeHint(self):
            if self._collapsed:
                return QtCore.QSize(super().sizeHint().width(), self.HEADER + 4)
            return super().sizeHint()

        def minimumSizeHint(self):
            return self.sizeHint() if self._collapsed else super().minimumSizeHint()

        def paintEvent(self, event):
            painter = QtWidgets.QStylePainter(self)
            option = QtWidgets.QStyleOptionButton()
            option.initFrom(self)
            option.rect = QtCore.QRect(0, 0, self.width(), self.HEADER)
            painter.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, option)
            arrow = QtWidgets.QStyleOption()
            arrow.initFrom(self)
            arrow.rect = QtCore.QRect(8, (self.HEADER - 10) // 2, 10, 10)
            painter.drawPrimitive(QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed
                                  else QtWidgets.QStyle.PE_IndicatorArrowDown, arrow)
            painter.drawText(QtCore.QRect(26, 0, self.width() - 30, self.HEADER),
                             QtCore.Qt.AlignVCenter | QtCore.Qt.AlignLeft, self._text)
            if not self._collapsed:  # ctk's contents frame
                painter.setPen(self.palette().color(QtGui.QPalette.Mid))
                painter.drawRect(QtCore.QRect(0, self.HEADER, self.width() - 1, self.height() - self.HEADER - 1))

    return ctkCollapsibleButton


def _nodeComboBoxClass():
    """qMRMLNodeComboBox: a combo box showing one node name, elided like Slicer's selector."""
    QtCore, QtGui, QtWidgets = _qt()
    Property = QtCore.Property

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        """A node selector showing one node name (or its 'none' text)."""

        def _get_none(self):
            return self.itemText(0)

        def _set_none(self, value):
            self.clear()
            self.addItem(value)

        noneDisplay = Property(str, _get_none, _set_none)

        def setNodeName(self, name):
            self.clear()
            self.addItem(name)
            # like Slicer's selector: long names are elided instead of widening the panel
            self.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.setMinimumContentsLength(12)

    return qMRMLNodeComboBox


def _pathLineEditClass():
    """ctkPathLineEdit: a line edit with a browse button, its text as the currentPath property."""
    QtCore, QtGui, QtWidgets = _qt()
    Property = QtCore.Property

    class ctkPathLineEdit(QtWidgets.QWidget):
        """A path line edit with the browse button ctkPathLineEdit has."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.setSpacing(2)
            self.lineEdit = QtWidgets.QLineEdit(self)
            self.browseButton = QtWidgets.QToolButton(self)
            self.browseButton.setText("...")
            layout.addWidget(self.lineEdit, 1)
            layout.addWidget(self.browseButton)

        def _get_current_path(self):
            return self.lineEdit.text()

        def _set_current_path(self, value):
            self.lineEdit.setText(value)

        currentPath = Property(str, _get_current_path, _set_current_path)

    return ctkPathLineEdit


def application():
    QtCore, QtGui, QtWidgets = _qt()
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")  # Slicer's light theme is a Fusion style
    palette = app.style().standardPalette()
    palette.setColor(QtGui.QPalette.Window, QtGui.QColor("#f4f4f4"))
    palette.setColor(QtGui.QPalette.Button, QtGui.QColor("#f0f0f0"))
    palette.setColor(QtGui.QPalette.Highlight, QtGui.QColor("#3584e4"))
    app.setPalette(palette)
    font = app.font()
    font.setPointSize(9)
    app.setFont(font)
    return app


def loadPanel(ui_file: Path = UI_FILE, optionSpecs: bool = False):
    """(QApplication, the panel widget built from the .ui with the stand-ins). ``optionSpecs``: give
    the option widgets the engine's ranges and defaults as the module's setup does (the screenshots
    need them; the module's own tests leave that to the module)."""
    QtCore, QtGui, QtWidgets = _qt()
    from PySide6.QtUiTools import QUiLoader

    app = application()
    loader = QUiLoader()
    for cls in standInClasses():
        loader.registerCustomWidget(cls)
    f = QtCore.QFile(str(ui_file))
    if not f.open(QtCore.QIODevice.ReadOnly):
        raise FileNotFoundError(f"cannot open the panel's Designer file {ui_file}")
    try:
        widget = loader.load(f)
    finally:
        f.close()
    if widget is None:
        raise RuntimeError(f"{ui_file} did not load: {loader.errorString()}")
    for section in widget.findChildren(QtWidgets.QWidget):
        if hasattr(section, "applyCollapsed"):
            section.applyCollapsed()
    if optionSpecs:
        from AXONReconstructionLib.panel import applyOptionSpecs

        applyOptionSpecs(widget.findChildren(QtWidgets.QWidget))
    return app, widget


def fillExampleState(widget, state: dict = EXAMPLE_STATE, expand=None) -> None:
    """Put the panel in the state a user sees after a run: node names, paths, progress, status.
    `expand`: object names of the sections to open (the others keep the .ui's state); None opens all."""
    QtCore, QtGui, QtWidgets = _qt()
    for name, text in state["combos"].items():
        combo = widget.findChild(QtWidgets.QComboBox, name)
        if combo is None:
            raise KeyError(f"no node selector '{name}' in the panel")
        combo.setNodeName(text)
    for name, path in state["paths"].items():
        edit = widget.findChild(QtWidgets.QWidget, name)
        if edit is None:
            raise KeyError(f"no path selector '{name}' in the panel")
        edit.setProperty("currentPath", path)
    widget.findChild(QtWidgets.QProgressBar, "progressBar").setRange(0, 1000)
    widget.findChild(QtWidgets.QProgressBar, "progressBar").setValue(int(state["progress"]))
    status = widget.findChild(QtWidgets.QLabel, "statusLabel")
    status.setText(state["status"])
    status.setWordWrap(True)
    if state.get("compare"):
        widget.findChild(QtWidgets.QLabel, "compareResultsLabel").setText(state["compare"])
    for button in ("reconstructButton", "compareButton", "exportButton", "segmentationButton"):
        widget.findChild(QtWidgets.QPushButton, button).setEnabled(True)
    widget.findChild(QtWidgets.QPushButton, "cancelButton").setEnabled(False)
    for section in widget.findChildren(QtWidgets.QWidget):
        if type(section).__name__ == "ctkCollapsibleButton" and (expand is None or section.objectName() in expand):
            section.setProperty("collapsed", False)


def renderPanel(path: Path, width: int = 420, state: dict = EXAMPLE_STATE, title: str | None = "AXON Reconstruction",
                expand=None):
    """Render the panel (with a module-selector-like title bar) to a PNG; returns the QImage."""
    QtCore, QtGui, QtWidgets = _qt()
    app, panel = loadPanel(optionSpecs=True)
    fillExampleState(panel, state, expand)
    frame = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(frame)
    layout.setContentsMargins(6, 6, 6, 6)
    if title:
        header = QtWidgets.QComboBox()
        header.addItem("Modules:  " + title)
        layout.addWidget(header)
    layout.addWidget(panel)
    layout.addStretch(1)
    frame.resize(width, frame.sizeHint().height())
    frame.show()
    app.processEvents()
    frame.resize(width, frame.sizeHint().height())
    app.processEvents()
    image = frame.grab().toImage()
    image = image.copy(0, 0, image.width(), min(image.height(), panel.geometry().bottom() + 8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    if not image.save(str(tmp), "PNG"):
        raise OSError(f"could not write {tmp}")
    os.replace(tmp, path)
    frame.close()
    frame.deleteLater()
    app.processEvents()
    return image
