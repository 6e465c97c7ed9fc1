"""The panel's Designer file: it loads, has every widget the module code uses, binds every parameter.

Loaded with PySide6 offscreen through scripts/make_screenshots_panel.py (the code that renders the
panel for the extension's screenshots): Slicer's own widget classes (qMRMLNodeComboBox,
ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget) are not available outside Slicer, so Qt stand-ins
with the same class names are registered and the loader builds them with their object names and
properties.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # CI has no display

REPO = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO / "AXONReconstruction" / "AXONReconstruction.py"
UI_FILE = REPO / "AXONReconstruction" / "Resources" / "UI" / "AXONReconstruction.ui"
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))


def _parameter_fields() -> set[str]:
    """Parameters of the @parameterNodeWrapper class in the module file: its own fields, and one per
    reconstruction option when it is decorated with `withOptionParameters` (the panel's names of them)."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
            if any(getattr(d, "id", None) == "withOptionParameters" for d in node.decorator_list):
                from AXONReconstructionLib.panel import PANEL

                fields |= {option.parameter for option in PANEL.values()}
            return fields
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
    pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6-Essentials")
    import make_screenshots_panel

    app, widget = make_screenshots_panel.loadPanel(UI_FILE)
    yield widget, app
    widget.deleteLater()
    app.processEvents()


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


def test_stand_ins_follow_the_ui_and_collapse(panel):
    from PySide6 import QtWidgets

    widget, app = panel
    sections = {w.objectName(): w for w in widget.findChildren(QtWidgets.QWidget)
                if type(w).__name__ == "ctkCollapsibleButton"}
    texts = {w.property("text") for w in sections.values()}
    assert texts >= {"Inputs", "Settings", "Output", "Compare with ground truth", "Export"}
    # collapsed as in the .ui (Settings, Compare, Export start collapsed; Inputs open)
    assert not sections["inputsCollapsibleButton"].property("collapsed")
    assert sections["settingsCollapsibleButton"].property("collapsed")
    assert not sections["settingsCollapsibleButton"].findChild(QtWidgets.QWidget, "stepsSpinBox").isVisibleTo(widget)
    assert widget.findChild(QtWidgets.QComboBox, "outputSelector").itemText(0) == "Create new volume"  # noneDisplay


def test_screenshot_of_the_panel(tmp_path):
    pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6-Essentials")
    import make_screenshots_panel

    path = tmp_path / "panel.png"
    image = make_screenshots_panel.renderPanel(path)
    assert path.stat().st_size > 5000
    assert 350 <= image.width() <= 700 and image.height() > 500
    # the panel really shows the example state: a full progress bar (Slicer's highlight blue) drawn
    blue = 0
    for x in range(0, image.width(), 5):
        for y in range(0, image.height(), 5):
            c = image.pixelColor(x, y)
            blue += c.blue() > c.red() + 80
    assert blue > 100
