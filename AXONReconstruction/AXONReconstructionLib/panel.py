"""The panel's side of the reconstruction options, all read from the engine's `axonct.options.OPTIONS`:
which parameter (and widget) shows which option, its range, default and tooltip, and the one
conversion from the panel's values to `ReconstructOptions`.

An optional option (default None: the weights' own value, or a measurement) is a spin box whose lowest
value, one step below the option's own minimum, reads as the .ui's special text ("Default",
"Automatic") and means None. A choice with an "off" value (framing) is a check box. Seeds reach
2^32 - 1, beyond a QSpinBox, so whole numbers above 2^31 - 1 use a double spin box without decimals.

Qt-free: `applyOptionSpecs` calls only methods PythonQt (Slicer) and PySide6 (the tests) share.
"""

from __future__ import annotations

from dataclasses import dataclass

from axonct.options import OPTIONS, ReconstructOptions

INT32_MAX = 2**31 - 1

CHOICE_LABELS = {
    "device": {"auto": "Auto (GPU if available)", "cuda": "GPU (CUDA)", "cpu": "CPU"},
    "precision": {"auto": "Auto (measured per machine)", "bf16": "bf16", "fp32": "fp32"},
    "start": {"stage1": "Stage I output", "template": "Template fit to the views"},
}
"""What the combo boxes show for each value (the values and their order are the engine's)."""


def parameterName(option: str) -> str:
    """The parameter node's (and the .ui's SlicerParameterName) name of an option: its camelCase."""
    head, *rest = option.split("_")
    return head + "".join(word.capitalize() for word in rest)


@dataclass(frozen=True)
class PanelOption:
    """One option as the panel shows it."""

    name: str
    parameter: str
    kind: str  # "spin", "check" or "combo"
    valueType: type  # the parameter's type: int, float, bool or str
    minimum: float | None
    maximum: float | None
    default: object  # the parameter's default (for a combo: the option's value)
    step: float
    decimals: int
    choices: tuple  # combo: the values, in order
    labels: tuple  # combo: what each value reads as
    tooltip: str


def _panelOption(name: str) -> PanelOption:
    spec = OPTIONS[name]
    if spec.kind in ("int", "float"):
        low = spec.low - spec.step if spec.optional else spec.low  # the lowest value means "unset"
        wide = spec.kind == "float" or spec.high > INT32_MAX
        default = low if spec.optional else spec.default
        kind, valueType = "spin", float if wide else int
        limits = f" From {spec.limits()}" + (f"; the lowest setting: {spec.unset}." if spec.optional else ".")
    else:
        low = default = None
        two = spec.kind == "switch" or spec.off is not None
        kind, valueType = ("check", bool) if two else ("combo", str)
        default = (spec.default if spec.kind == "switch" else spec.default != spec.off) if two else spec.default
        limits = ""
    choices = tuple(spec.choices) if kind == "combo" else ()
    return PanelOption(name=name, parameter=parameterName(name), kind=kind, valueType=valueType, minimum=low,
                       maximum=spec.high, default=default, step=spec.step, decimals=spec.decimals, choices=choices,
                       labels=tuple(CHOICE_LABELS[name][c] for c in choices),
                       tooltip=spec.help[0].upper() + spec.help[1:] + "." + limits)


PANEL: dict[str, PanelOption] = {name: _panelOption(name) for name in OPTIONS}
"""Option name -> how the panel shows it."""
BY_PARAMETER = {o.parameter: o for o in PANEL.values()}


def optionsFromPanel(values: dict) -> ReconstructOptions:
    """The panel's parameter values (by parameter name; enums or their values; missing ones at their
    defaults) as the engine's options, validated: an `AxonInputError` (a ValueError) names the option."""
    unknown = set(values) - set(BY_PARAMETER)
    if unknown:
        raise ValueError(f"not reconstruction options: {', '.join(sorted(unknown))}")
    chosen = {}
    for name, o in PANEL.items():
        value = values.get(o.parameter, o.default)
        value = getattr(value, "value", value)  # an enum member
        spec = OPTIONS[name]
        if o.kind == "spin":
            if spec.optional and float(value) < spec.low:
                value = None
            else:
                value = int(round(float(value))) if spec.kind == "int" else float(value)
        elif o.kind == "check" and spec.off is not None:
            value = next(c for c in spec.choices if c != spec.off) if value else spec.off
        chosen[name] = value
    return ReconstructOptions(**chosen).validate()


def applyOptionSpecs(widgets) -> None:
    """Give each option widget (found by its SlicerParameterName) its range, increment, decimals,
    default and tooltip from the engine's options; a combo box gets its values' labels. The .ui holds
    none of these, so they cannot disagree with the engine."""
    for widget in widgets:
        o = BY_PARAMETER.get(str(widget.property("SlicerParameterName") or ""))
        if o is None:
            continue
        widget.setToolTip(o.tooltip)
        if o.kind == "spin":
            if widget.metaObject().className() == "QDoubleSpinBox":
                widget.setDecimals(o.decimals)
            widget.setSingleStep(o.step)
            widget.setMinimum(o.minimum)
            widget.setMaximum(o.maximum)
            widget.setValue(o.default)
        elif o.kind == "check":
            widget.setChecked(o.default)
        else:
            widget.clear()
            for label in o.labels:
                widget.addItem(label)
            widget.setCurrentIndex(o.choices.index(o.default))
