"""The panel's Designer file: it loads, has every widget the module code uses, binds every parameter.

Loaded with PySide6 offscreen. Slicer's own widget classes (qMRMLNodeComboBox, ctkCollapsibleButton,
ctkPathLineEdit, qMRMLWidget) are not available outside Slicer; small Qt stand-ins with the same class
names are registered so the loader builds them with their object names and properties. The screenshot
therefore shows the panel's layout and texts drawn by plain Qt, not Slicer's styling.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO / "AXONReconstruction" / "AXONReconstruction.py"
UI_FILE = REPO / "AXONReconstruction" / "Resources" / "UI" / "AXONReconstruction.ui"
SCREENSHOT = REPO / "Resources" / "Screenshots" / "panel.png"


def _parameter_fields() -> set[str]:
    """Field names of the @parameterNodeWrapper class in the module file."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in AXONReconstruction.py")


def _ui_tree_bindings() -> dict[str, str]:
    """objectName -> SlicerParameterName, read from the XML itself."""
    root = ET.parse(UI_FILE).getroot()
    out = {}
    for w in root.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[w.get("name")] = p.find("string").text
    return out


def test_ui_xml_is_a_designer_file_with_a_qmrmlwidget_root():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "AXONReconstruction"
    sections = {w.get("name"): w.find("property[@name='text']/string").text
                for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"}
    assert set(sections.values()) >= {"Inputs", "Settings", "Output", "Compare with ground truth", "Export"}
    # every node selector gets the scene from the root widget, as in Slicer's template
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors and selectors == connected


def test_every_parameter_is_bound_to_exactly_one_widget():
    bindings = _ui_tree_bindings()
    fields = _parameter_fields()
    bound = list(bindings.values())
    assert sorted(bound) == sorted(set(bound)), "a parameter is bound to two widgets"
    assert set(bound) == fields, (set(bound) ^ fields)


@pytest.fixture(scope="module")
def panel():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6-Essentials")
    from PySide6.QtCore import Property, QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class ctkCollapsibleButton(QtWidgets.QGroupBox):
        def _text(self):
            return self.title()

        def _set_text(self, value):
            self.setTitle(("\u25b8 " if getattr(self, "_collapsed", False) else "\u25be ") + value)

        def _get_collapsed(self):
            return getattr(self, "_collapsed", False)

        def _set_collapsed(self, value):
            self._collapsed = bool(value)

        text = Property(str, _text, _set_text)
        collapsed = Property(bool, _get_collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        def _get_none(self):
            return self.itemText(0)

        def _set_none(self, value):
            self.clear()
            self.addItem(value)

        noneDisplay = Property(str, _get_none, _set_none)

    class ctkPathLineEdit(QtWidgets.QLineEdit):
        pass

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QUiLoader()
    for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit):
        loader.registerCustomWidget(cls)
    f = QFile(str(UI_FILE))
    assert f.open(QIODevice.ReadOnly)
    widget = loader.load(f)
    f.close()
    assert widget is not None, loader.errorString()
    yield widget, app
    widget.deleteLater()


def test_ui_loads_and_has_every_widget_the_module_uses(panel):
    from PySide6.QtCore import QObject

    widget, _ = panel
    names = {w.objectName() for w in widget.findChildren(QObject)} | {widget.objectName()}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the module code uses no self.ui widgets?"
    assert not used - names, f"used in AXONReconstruction.py but missing from the .ui: {sorted(used - names)}"
    # the dynamic property survives loading (connectGui reads it from the live widgets)
    live = {w.objectName(): w.property("SlicerParameterName") for w in widget.findChildren(QObject)
            if w.property("SlicerParameterName")}
    assert live == _ui_tree_bindings()


def test_screenshot_of_the_panel(panel):
    from PySide6 import QtWidgets

    widget, app = panel
    # what a user sees after choosing inputs: fill the stand-in selectors with example names
    examples = {"frontalSelector": "Chest CR PA", "lateralSelector": "Chest lateral",
                "groundTruthSelector": "LIDC-IDRI-0001", "outputSelector": "AXON CT from Chest CR PA"}
    for name, text in examples.items():
        combo = widget.findChild(QtWidgets.QComboBox, name)
        combo.clear()
        combo.addItem(text)
    widget.findChild(QtWidgets.QLineEdit, "weightsPathLineEdit").setText(".../AXONReconstruction/Resources/Weights/cpu")
    widget.findChild(QtWidgets.QLineEdit, "exportDirectoryLineEdit").setText("~/Documents/AXON")
    widget.findChild(QtWidgets.QProgressBar, "progressBar").setValue(430)
    widget.findChild(QtWidgets.QLabel, "statusLabel").setText(
        "Stage II (fine): step 7/20, about 25 s left in this stage")
    widget.findChild(QtWidgets.QPushButton, "cancelButton").setEnabled(True)
    widget.resize(400, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(SCREENSHOT), "PNG")
    assert SCREENSHOT.stat().st_size > 5000
