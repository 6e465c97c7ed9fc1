"""The panel and the engine agree on every reconstruction option: the module's widget is set up (Slicer's
application stood in by `slicer_app`: real MRML, the real .ui in PySide6) and each option widget's
range, default and tooltip are read back and compared with `axonct.options.OPTIONS`; the parameter
node's ranges and defaults too; and none of it loads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core)")
pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6-Essentials")

from axonct.options import OPTIONS, ReconstructOptions  # noqa: E402

import slicer_app  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture
def module(monkeypatch):
    return slicer_app.install(monkeypatch)


@pytest.fixture
def panel(module, scene, tmp_path):
    widget = slicer_app.setUpPanel(module, tmp_path)
    yield widget
    widget.cleanup()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


def _widgets(panel) -> dict:
    """Option name -> its widget, found by the widget's SlicerParameterName."""
    found = {}
    for widget in vars(panel.ui).values():
        name = widget.property("SlicerParameterName")
        for option in OPTIONS:
            if name == _camel(option):
                found[option] = widget
    return found


def _read(widget, spec):
    """What a widget holds, in the engine's terms (None: the spin box's lowest value, its special text)."""
    cls = widget.metaObject().className()
    if cls in ("QSpinBox", "QDoubleSpinBox"):
        value = widget.value()
        if spec.optional and value == widget.minimum():
            assert widget.specialValueText(), f"{spec.flag}: an unset value needs the .ui's special text"
            return None
        return int(round(value)) if spec.kind == "int" else value
    if cls == "QCheckBox":
        on = widget.isChecked()
        return on if spec.kind == "switch" else next(c for c in spec.choices if (c != spec.off) == on)
    return widget.currentIndex()


def test_every_option_widget_has_the_engines_range_default_and_tooltip(panel):
    widgets = _widgets(panel)
    assert set(widgets) == set(OPTIONS)
    defaults = ReconstructOptions()
    for name, widget in widgets.items():
        spec = OPTIONS[name]
        assert widget.toolTip().startswith(spec.help[0].upper() + spec.help[1:]), name
        value = _read(widget, spec)
        if spec.kind in ("int", "float"):
            assert widget.maximum() == spec.high, (name, widget.maximum(), spec.high)
            lowest = widget.minimum() + (widget.singleStep() if spec.optional else 0)
            assert lowest == pytest.approx(spec.low), (name, widget.minimum(), spec.low)  # unset: one step below
            assert value == getattr(defaults, name), (name, value)
        elif widget.metaObject().className() == "QComboBox":
            labels = [widget.itemText(i) for i in range(widget.count())]
            assert len(labels) == len(spec.choices) and spec.choices[value] == getattr(defaults, name), (name, labels)
        else:
            assert value == getattr(defaults, name), name


def test_the_panels_values_at_setup_are_the_engines_defaults(panel):
    assert panel.reconstructOptions() == ReconstructOptions()


def test_the_largest_seed_and_the_limits_reach_the_engine(panel, module):
    """The panel's extremes are the engine's: seed 2^32 - 1, 64 samples, 1000 steps."""
    from AXONReconstructionLib.panel import optionsFromPanel

    p = panel._parameterNode
    p.seed, p.samples, p.steps = OPTIONS["seed"].high, OPTIONS["samples"].high, OPTIONS["steps"].high
    p.framing, p.thoraxWidthMm = False, OPTIONS["thorax_width_mm"].high
    options = panel.reconstructOptions()
    assert (options.seed, options.samples, options.steps) == (2**32 - 1, 64, 1000)
    assert options.framing == "none" and options.thorax_width_mm == 450.0
    with pytest.raises(ValueError, match="--samples"):
        optionsFromPanel({"samples": OPTIONS["samples"].high + 1})


def test_the_parameter_node_has_the_engines_ranges_and_defaults(module):
    """What Slicer's connectors give the widgets: each parameter's range annotation and enum values."""
    from AXONReconstructionLib.panel import optionsFromPanel

    wrapper = module.AXONReconstructionParameterNode
    instance = wrapper(None)
    values = {}
    for name, spec in OPTIONS.items():
        parameter = _camel(name)
        kind, values[parameter] = wrapper.allParameters[parameter], getattr(instance, parameter)
        if spec.kind in ("int", "float"):
            limits, = [e for e in getattr(kind, "__metadata__", ()) if isinstance(e, slicer_app.WithinRange)]
            assert limits.maximum == spec.high, name
            assert limits.minimum == spec.low or (spec.optional and limits.minimum < spec.low), name
        elif spec.off is None and spec.kind != "switch":
            assert [member.value for member in kind] == list(spec.choices), name
    assert optionsFromPanel(values) == ReconstructOptions()


def test_panel_setup_loads_no_torch(tmp_path):
    """The GUI process: the Lib, the module file and its widget's setup, a reconstruction started with a
    stand-in process; torch is blocked and must not be needed."""
    code = f"""
import sys
sys.modules['torch'] = None
sys.path[:0] = [{str(HERE)!r}]
import pytest, slicer
from pathlib import Path
import slicer_app

class Patch:
    def setitem(self, d, k, v): d[k] = v
    def setattr(self, o, n, v, raising=True): setattr(o, n, v)
    def syspath_prepend(self, p): sys.path.insert(0, p)
    def delitem(self, d, k, raising=True): d.pop(k, None)

slicer.mrmlScene = slicer.vtkMRMLScene()
module = slicer_app.install(Patch())
widget = slicer_app.setUpPanel(module, Path({str(tmp_path)!r}))
options = widget.reconstructOptions()
import AXONReconstructionLib.job as job
started = []
job.WorkerProcess = lambda args, env=None, cwd=None, log=None: started.append(args)
job.JobRunner._checkEngineInstalled = staticmethod(lambda: None)
import numpy as np
node = slicer.mrmlScene.AddNewNodeByClass('vtkMRMLScalarVolumeNode', 'frontal')
slicer.util.updateVolumeFromArray(node, np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64))
widget.logic.tempRoot = {str(tmp_path)!r}
widget.logic.startReconstruction(node, options=options)
print(repr(sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('torch', 'axonct'))))
print(started[0][started[0].index('--options') + 1])
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parents[1] / "AXONReconstruction"),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules_line, document = proc.stdout.strip().splitlines()[-2:]
    assert set(eval(modules_line)) <= {"axonct", "axonct.app", "axonct.app.protocol", "axonct.errors",
                                      "axonct.options", "axonct.io", "axonct.io.sample_data", "axonct.atomic"}
    assert ReconstructOptions.from_dict(json.loads(Path(document).read_text())) == ReconstructOptions()
