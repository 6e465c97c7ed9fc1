"""The reconstruction options are written once (`axonct.options`): every command's parser takes their
defaults, limits and help from there, every refusal is one line naming the option, and no front-end
file (command line, demo, Slicer Lib, module, .ui) restates a default."""

from __future__ import annotations

import argparse
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from axonct.errors import AxonInputError
from axonct.options import OPTIONS, ReconstructOptions

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "AXONReconstruction"
FRONT_END = [MODULE / "axonct" / "app" / "cli.py", MODULE / "axonct" / "app" / "arguments.py",
             MODULE / "axonct" / "tools" / "demo.py", MODULE / "AXONReconstruction.py",
             *sorted((MODULE / "AXONReconstructionLib").glob("*.py"))]
UI_FILE = MODULE / "Resources" / "UI" / "AXONReconstruction.ui"
RECONSTRUCTING = ("reconstruct", "demo", "evaluate", "benchmark")
"""The commands whose option flags are reconstruction options (train's --steps is another quantity)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


OPTION_NAMES = set(OPTIONS) | {_camel(n) for n in OPTIONS}
OPTION_FLAGS = {spec.flag for spec in OPTIONS.values()}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from axonct.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_reconstruct_without_option_flags_is_the_default_options():
    from axonct.app.cli import build_parser, reconstruct_options

    args = build_parser().parse_args(["reconstruct", "--frontal", "f.png", "--out", "o.nrrd"])
    assert reconstruct_options(args) == ReconstructOptions()


@pytest.mark.parametrize("command", ["demo", "evaluate", "benchmark", "train", "drr", "prepare", "reconstruct"])
def test_every_option_flag_has_the_engines_default_type_and_limits(command):
    """A flag named like a reconstruction option defaults to the option's default (or nothing, for
    `reconstruct`'s `--options`), unless the command says why it differs; its type is the option's
    (refusing what its limits refuse) and its help states those limits."""
    parser = _subparsers()[command]
    seen = 0
    for action in parser._actions:
        spec = OPTIONS.get(action.dest)
        if spec is None or (command not in RECONSTRUCTING and action.dest == "steps"):
            continue
        seen += 1
        if getattr(action, "own_default", False):
            assert action.default != spec.default, f"{command} {spec.flag}: an 'own' default equal to the engine's"
            continue
        assert action.default in (spec.default, argparse.SUPPRESS), (command, spec.flag, action.default)
        assert action.type == spec.parse, (command, spec.flag)
        if spec.kind in ("int", "float", "device"):
            assert f"({spec.limits()}; default: " in action.help, action.help  # the limits, from the option
    assert seen


def test_parsed_defaults_of_the_demo_and_evaluate_are_the_options_defaults():
    from axonct.app.cli import build_parser, reconstruct_options

    demo = reconstruct_options(build_parser().parse_args(["demo"]))
    assert demo == ReconstructOptions()
    evaluate = build_parser().parse_args(["evaluate"])
    for name in ("steps", "seed", "consistency_strength", "fine_strength", "framing", "lung_fields", "precision"):
        assert getattr(evaluate, name) == OPTIONS[name].default


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_limit_is_one_line_naming_the_option(name):
    spec = OPTIONS[name]
    bad = {"int": spec.high + 1 if spec.high is not None else None, "float": -1.0, "switch": "on",
           "choice": "nope", "device": ""}[spec.kind]
    with pytest.raises(AxonInputError) as info:
        ReconstructOptions(**{name: bad}).validate()
    assert str(info.value).startswith(spec.flag) and "\n" not in str(info.value)
    if spec.kind in ("int", "float"):
        with pytest.raises(argparse.ArgumentTypeError):
            spec.parse(str(spec.high * 2 + 1))
        assert spec.parse(str(spec.high)) == spec.high and spec.parse(str(spec.low)) == spec.low


def test_precision_is_normalised_in_one_place():
    from axonct.options import normalise_precision

    assert [normalise_precision(v) for v in ("AUTO", "off", "float32", "bfloat16", None)] == \
        ["auto", "fp32", "fp32", "bf16", "auto"]
    assert OPTIONS["precision"].parse("off") == "fp32"
    with pytest.raises(AxonInputError, match="--precision must be one of auto, bf16, fp32"):
        normalise_precision("fp16")


# --------------------------------------------------------------------------- no default restated
def restated_defaults(path: Path, source: str | None = None) -> list[str]:
    """Places in a front-end file that write a reconstruction option's value as a literal: a parameter
    default, a keyword or class field named like an option, or an `add_argument` of an option flag with
    a default (option flags go through `add_option`, the one place that reads `OPTIONS`). A module's
    self-test class (`...Test`) chooses values to test with, not defaults, and is not read."""
    tree = ast.parse(source if source is not None else path.read_text())
    tests = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name.endswith("Test")
             for n in ast.walk(c)}
    found = []

    def literal(node) -> bool:
        return isinstance(node, ast.Constant) and node.value is not None

    for node in (n for n in ast.walk(tree) if id(n) not in tests):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [f"{path.name}:{d.lineno} parameter {a.arg}={d.value!r}" for a, d in pairs
                      if a.arg in OPTION_NAMES and literal(d)]
        elif isinstance(node, ast.Call):
            found += [f"{path.name}:{k.value.lineno} keyword {k.arg}={k.value.value!r}" for k in node.keywords
                      if k.arg in OPTION_NAMES and literal(k.value)]
            if isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument" and node.args and \
                    isinstance(node.args[0], ast.Constant) and node.args[0].value in OPTION_FLAGS and \
                    any(k.arg == "default" for k in node.keywords):
                found.append(f"{path.name}:{node.lineno} add_argument({node.args[0].value!r}, default=...) "
                             "outside add_option")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in OPTION_NAMES and node.value is not None:
                found.append(f"{path.name}:{node.lineno} field {node.target.id} restated")
    return found


def test_no_front_end_file_restates_an_option_default():
    found = [place for path in FRONT_END for place in restated_defaults(path)]
    assert not found, "reconstruction options restated outside axonct/options.py:\n" + "\n".join(found)


@pytest.mark.parametrize("planted", [
    "def reconstructOptions(consistency: bool = True):\n    pass\n",
    "p.add_argument('--samples', type=int, default=1)\n",
    "class Panel:\n    consistencyStrength: float = 1.0\n",
    "run(options, seed=0)\n",
    "class Widget:\n    def setup(self):\n        start(steps=25)\n",
])
def test_the_scan_finds_a_planted_restatement(planted):
    assert restated_defaults(Path("planted.py"), planted)


def test_the_ui_holds_no_option_value_range_tooltip_or_item():
    """The option widgets get all of these from the engine at setup (`AXONReconstructionLib.panel`)."""
    root = ET.parse(UI_FILE).getroot()
    bound = {}
    for widget in root.iter("widget"):
        names = [p.find("string").text for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
        if names and names[0] in OPTION_NAMES:
            bound[names[0]] = widget
    assert set(bound) == {_camel(n) for n in OPTIONS}
    for name, widget in bound.items():
        props = {p.get("name") for p in widget.findall("property")}
        assert not props & {"value", "checked", "minimum", "maximum", "toolTip", "singleStep", "decimals"}, name
        assert not widget.findall("item"), name
    text = UI_FILE.read_text()
    for literal in ("2147483647", "4294967295", "Auto (measured per machine)", "Stage I output"):
        assert literal not in text, literal
