"""Stand-ins for the parts of the Slicer application that the module file needs, so that
AXONReconstruction.py imports here and its widget's `setup()` runs on real MRML (`slicer-core`) and
the real .ui (PySide6, with the Slicer widget stand-ins of scripts/make_screenshots_panel.py).

What Slicer itself provides is imitated only as far as the module uses it: `ScriptedLoadableModule*`
base classes; `parameterNodeWrapper` with `WithinRange` (defaults from the class, `connectGui` writes
each parameter to its widget, and, as Slicer's connectors do, gives a spin box the parameter's
range and a combo box an enum's labels); `qt.QTimer`; PythonQt's `widget.connect("signal()", slot)`;
`slicer.util.loadUI`/`childWidgetVariables`; `slicer.app.defaultScenePath` while the panel is set up.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import types
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AXONReconstruction"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "AXONReconstruction.ui"
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def parameterNodeWrapper(cls):
    """Typed parameters with their class defaults over an MRML node, and `connectGui`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name, _typeDefault(kind)) for name, kind in hints.items()}

    def __init__(self, node):
        self.parameterNode, self._values = node, dict(defaults)

    def connectGui(self, ui):
        for widget in vars(ui).values():
            name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
            if name:
                _writeWidget(widget, hints[name], self._values[name])
        return 1

    cls.__init__ = __init__
    cls.allParameters = hints
    cls.connectGui = connectGui
    cls.disconnectGui = lambda self, tag: None
    cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback,
                                                                                                priority)
    cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    for name in hints:
        setattr(cls, name, property(lambda self, n=name: self._values[n],
                                    lambda self, value, n=name: self._values.__setitem__(n, value)))
    return cls


def _typeDefault(kind):
    base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
    return base() if base is Path or isinstance(base, type) and issubclass(base, Path) else None


def _writeWidget(widget, kind, value) -> None:
    """As Slicer's GUI connectors: a range annotation to a spin box, an enum's labels to a combo box."""
    extras = typing.get_args(kind)[1:] if typing.get_origin(kind) is typing.Annotated else ()
    for extra in extras:
        if isinstance(extra, WithinRange):
            widget.setMinimum(extra.minimum)
            widget.setMaximum(extra.maximum)
    if isinstance(value, enum.Enum):
        members = list(type(value))
        widget.clear()
        for member in members:
            widget.addItem(member.label())
        widget.setCurrentIndex(members.index(value))
    elif isinstance(value, bool):
        widget.setChecked(value)
    elif isinstance(value, (int, float)):
        widget.setValue(value)


def _moduleClasses():
    from PySide6 import QtWidgets

    import slicer

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = None

        def setup(self):
            import make_screenshots_panel

            make_screenshots_panel.application()  # the QApplication, before any widget
            self.widget = QtWidgets.QWidget()
            self.layout = QtWidgets.QVBoxLayout(self.widget)

        def resourcePath(self, relative: str) -> str:
            return str(MODULE_DIR / "Resources" / relative)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            node = getattr(self, "_node", None)
            if node is None:
                node = self._node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            return node

    class ScriptedLoadableModuleTest:
        pass

    return dict(ScriptedLoadableModule=ScriptedLoadableModule, ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)


class QTimer:
    """PythonQt's QTimer as the panel uses it (the tests drive `poll` themselves)."""

    def __init__(self):
        self.interval, self.slots, self.active = 0, [], False

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        self.slots.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _loadUI(path):
    import make_screenshots_panel

    _, widget = make_screenshots_panel.loadPanel(Path(path))
    widget.setMRMLScene = lambda scene: None  # the node selectors' scene: not needed here
    return widget


def _childWidgetVariables(widget):
    """Named children as attributes, each with PythonQt's `connect("signal(args)", slot)`."""
    from PySide6.QtCore import QObject

    ui = types.SimpleNamespace()
    for child in widget.findChildren(QObject):
        if child.objectName():
            child.connect = lambda signature, slot, c=child: getattr(c, signature.split("(")[0]).connect(slot)
            setattr(ui, child.objectName(), child)
    return ui


def install(monkeypatch) -> types.ModuleType:
    """Register the stand-ins (undone with ``monkeypatch``) and import the module file fresh."""
    import slicer
    import slicer.util

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pieces = {
        "slicer.ScriptedLoadableModule": _moduleClasses(),
        "slicer.i18n": dict(tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": dict(parameterNodeWrapper=parameterNodeWrapper, WithinRange=WithinRange),
        "qt": dict(QTimer=QTimer),
    }
    for name, members in pieces.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        module.__all__ = list(members)
        monkeypatch.setitem(sys.modules, name, module)
        if name.startswith("slicer."):
            monkeypatch.setattr(slicer, name.split(".", 1)[1], module, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", _loadUI)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", _childWidgetVariables)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "AXONReconstruction", raising=False)
    import AXONReconstruction

    return AXONReconstruction


@contextlib.contextmanager
def application(folder):
    """`slicer.app` for as long as the panel is being set up (its default scene path), then gone again:
    the Lib takes its presence for "inside Slicer"."""
    import slicer

    slicer.app = types.SimpleNamespace(defaultScenePath=str(folder))
    try:
        yield
    finally:
        del slicer.app


def setUpPanel(module, folder):
    """The module's widget after `setup()`, as Slicer builds it."""
    widget = module.AXONReconstructionWidget()
    with application(folder):
        widget.setup()
    return widget
