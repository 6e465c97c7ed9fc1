"""The page: the AXON panel in a drawer (inputs, options, Reconstruct with progress and Cancel, result and
warnings, compare, export, segmentation) beside Slicer's views, served by trame on one local port.

The trame state is the server's, so every open tab shows the same inputs, progress and results; the
job slot belongs to the server, so a second tab sees the running job (and a 'busy' line) instead of
starting another. A timer task polls the Lib's job (`Workflow.poll`) four times a second; the job
itself runs in its own process, so the page stays responsive while the engine works.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from pathlib import Path

from axonct.errors import AxonInputError
from axonct.options import OPTIONS

from .files import ServerFiles, WorkFolder, megabytes
from .views import COMPARE_LAYOUT, DEFAULT_PRESET, RESULT_LAYOUT, WINDOW_PRESETS, SlicerViews, layouts
from .workflow import EXPORT_FORMATS, SLOT_LABELS, Busy, Workflow

log = logging.getLogger("axonweb")
POLL_S = 0.25
MIME = {".nrrd": "application/octet-stream", ".gz": "application/gzip", ".zip": "application/zip"}


def one_line(exc: BaseException) -> str:
    """An action's failure as the page's one line (the engine's errors already are one line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (AxonInputError, Busy, ValueError, RuntimeError, OSError)):
        return text
    return f"internal error: {type(exc).__name__}: {text}"


class AxonWebApp:
    """One server: a Slicer scene (trame-slicer), its views, the workflow over the Lib, the page."""

    def __init__(self, server, work: WorkFolder, server_files: ServerFiles | None, weights=None):
        import slicer
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server
        self.state, self.ctrl = server.state, server.controller
        self.work = work
        self.slicer_app = SlicerApp()
        slicer.mrmlScene = self.slicer_app.scene  # the Lib works on slicer.mrmlScene: the views' scene
        register_rca_factories(self.slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict(layouts())
        self.layout_manager.set_layout(RESULT_LAYOUT)
        self.views = SlicerViews(self.slicer_app, self.layout_manager)
        self.workflow = Workflow(work, server_files, weights, views=self.views)
        self._poller = None
        self._init_state(server_files)
        self._bind()
        self._build_ui()

    # ------------------------------------------------------------------ state
    def _init_state(self, server_files) -> None:
        s = self.state
        s.ax = self.workflow.snapshot()
        for name, value in self.workflow.options.items():
            s[f"opt_{name}"] = value
        for slot in SLOT_LABELS:
            s[f"server_path_{slot}"] = ""
        s.server_listing = server_files.listing() if server_files else []
        s.data_dir = str(server_files.root) if server_files else ""
        s.max_upload_bytes = self.work.max_upload_bytes
        s.upload_limit_text = self.work.limit_text()
        s.export_format = "nrrd"
        s.wl_preset = "Lung"
        s.window, s.level = (str(v) for v in (int(x) for x in WINDOW_PRESETS["Lung"]))
        s.vr_presets = self.views.preset_names()
        s.vr_preset = DEFAULT_PRESET if DEFAULT_PRESET in s.vr_presets else (s.vr_presets or [""])[0]
        s.right_view = "truth"
        s.layout_name = RESULT_LAYOUT

    def push(self) -> None:
        """The workflow's snapshot to every tab."""
        with self.state:
            self.state.ax = self.workflow.snapshot()
            self.state.layout_name = self.layout_manager.layout_id

    def _options_from_state(self) -> dict:
        return {name: self.state[f"opt_{name}"] for name in OPTIONS}

    def _run(self, action, *args):
        """Run one workflow action; any refusal or failure becomes the page's one error line."""
        layout = self.layout_manager.layout_id
        try:
            return action(*args)
        except Exception as exc:  # noqa: BLE001 - every failure is shown, none takes the server down
            if not isinstance(exc, (AxonInputError, Busy, ValueError, RuntimeError, OSError)):
                log.error("%s", traceback.format_exc())
            self.workflow.error = one_line(exc)
            self.workflow.revision += 1
            return None
        finally:
            self.push()
            self._ensure_poller()
            if self.layout_manager.layout_id != layout:
                self._refit_later()

    def _refit_later(self) -> None:
        """Fit the views again once the page has sized the views a new layout created (they start at a
        default size, so a fit at once frames the volume for the wrong shape)."""
        loop = asyncio.get_event_loop()
        for delay in (0.7, 2.0):
            loop.call_later(delay, self.views.reset_views)

    async def _run_slow(self, what: str, action, *args):
        """Show what is happening before a blocking action (compare reads and resamples a CT)."""
        self.workflow.status, self.workflow.error = what, ""
        self.push()
        await asyncio.sleep(0.05)  # let the status reach the tabs first
        return self._run(action, *args)

    # ------------------------------------------------------------------ polling the job
    def _ensure_poller(self) -> None:
        if self.workflow.logic.isRunning() and (self._poller is None or self._poller.done()):
            self._poller = asyncio.ensure_future(self._poll_loop())

    async def _poll_loop(self) -> None:
        while True:
            try:
                events = self.workflow.poll()
            except Exception as exc:  # noqa: BLE001 - a result that cannot be loaded ends the job, not the server
                log.error("%s", traceback.format_exc())
                self.workflow.job, self.workflow.error = None, one_line(exc)
                events = [{"type": "error"}]
            if events:
                self.push()
                if any(e.get("type") == "done" for e in events):
                    self._refit_later()  # a result or the sample case: new volumes in the views
            if not self.workflow.logic.isRunning():
                self.workflow.job = None
                self.push()
                return
            await asyncio.sleep(POLL_S)

    # ------------------------------------------------------------------ actions (triggers)
    def _bind(self) -> None:
        """The page's triggers and state changes, by what they touch."""
        self._bind_inputs()
        self._bind_jobs()
        self._bind_views()
        self.ctrl.on_server_exited.add(lambda **_: self.workflow.close())

    def _bind_inputs(self) -> None:
        """Choosing and clearing the radiographs and the ground-truth CT."""
        server, wf = self.server, self.workflow

        @server.trigger("axon_upload")
        async def upload(slot, files):
            if slot == "truth":
                await self._run_slow(f"Reading the ground-truth CT {len(files or [])} file(s)...",
                                     wf.choose_upload, slot, files)
            else:
                self._run(wf.choose_upload, slot, files)

        @server.trigger("axon_upload_refused")
        def upload_refused(message):
            wf.error = str(message)
            wf.revision += 1
            self.push()

        @server.trigger("axon_server_file")
        async def server_file(slot):
            await self._run_slow(f"Reading {self.state[f'server_path_{slot}']}...", wf.choose_server_file, slot,
                                 self.state[f"server_path_{slot}"])

        @server.trigger("axon_refresh_listing")
        def refresh_listing():
            if wf.server_files is not None:
                self.state.server_listing = wf.server_files.listing()

        @server.trigger("axon_clear")
        def clear(slot):
            self._run(wf.clear_input, slot)

    def _bind_jobs(self) -> None:
        """The sample case, Reconstruct/Cancel, Compare, Export and segmentation."""
        server, wf = self.server, self.workflow

        @server.trigger("axon_sample_case")
        def sample_case():
            self._run(wf.start_sample_case)

        @server.trigger("axon_reconstruct")
        def reconstruct():
            self._run(wf.start_reconstruction, self._options_from_state())

        @server.trigger("axon_page_opened")
        def page_opened():
            """A new tab: the views send images only when they render, so render them for it now."""
            loop = asyncio.get_event_loop()
            for delay in (0.5, 2.0):  # once the tab's views have told the server their size
                loop.call_later(delay, lambda: [view.schedule_render() for view in
                                                self.slicer_app.view_manager.get_views()])

        @server.trigger("axon_cancel")
        def cancel():
            self._run(wf.cancel)

        @server.trigger("axon_compare")
        async def compare():
            self.state.right_view = "truth"
            self.views.right = "truth"
            await self._run_slow("Comparing with the ground truth (aligning and resampling it)...", wf.compare)

        @server.trigger("axon_export")
        async def export(file_format):
            await self._run_slow(f"Exporting as {EXPORT_FORMATS.get(file_format, file_format)}...", wf.export,
                                 file_format)

        @server.trigger("axon_download")
        def download(index):
            records = wf.exports
            if not 0 <= int(index) < len(records):
                return None
            return server.protocol.addAttachment(Path(records[int(index)]["download"]).read_bytes())

        @server.trigger("axon_segment")
        async def segment():
            await self._run_slow("Creating body, lungs and bone segments...", wf.create_segmentation)

    def _bind_views(self) -> None:
        """Window/level, volume-rendering preset, the right-hand view and the options."""
        wf = self.workflow

        @self.state.change("wl_preset")
        def wl_preset(wl_preset, **_):
            if wl_preset in WINDOW_PRESETS:
                window, level = WINDOW_PRESETS[wl_preset]
                self.state.window, self.state.level = str(int(window)), str(int(level))
                self._run(self.views.set_window_level, window, level)

        @self.state.change("window", "level")
        def window_level(window, level, **_):
            try:
                w, lv = float(window), float(level)
            except (TypeError, ValueError):
                return
            if (w, lv) != tuple(self.views.window_level):
                self._run(self.views.set_window_level, w, lv)

        @self.state.change("vr_preset")
        def vr_preset(vr_preset, **_):
            if vr_preset:
                self._run(self.views.set_preset, vr_preset)

        @self.state.change("right_view")
        def right_view(right_view, **_):
            self._run(self.views.set_right, right_view)

        @self.state.change(*[f"opt_{name}" for name in OPTIONS])
        def options_changed(**_):
            wf.options.update(self._options_from_state())

    # ------------------------------------------------------------------ the page
    def _build_ui(self) -> None:
        from trame.widgets import client, html, vuetify3 as v
        from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

        with SinglePageWithDrawerLayout(self.server, full_height=True) as ui:
            ui.title.set_text("AXON: a 3D CT from chest radiographs")
            ui.root.theme = "dark"
            with ui.toolbar:
                v.VSpacer()
                v.VChip("{{ ax.busy_text }}", v_if="ax.busy", id="busy", color="amber", variant="tonal",
                        classes="mr-2", size="small")
                v.VChip("Research use only: not for diagnosis", color="grey", variant="outlined", size="small",
                        classes="mr-4")
            ui.drawer.width = 430
            with ui.drawer:
                with html.Div(classes="pa-2"):
                    with html.Div(classes="pb-1", style="position: sticky; top: 0; z-index: 2; "
                                                        "background: rgb(var(--v-theme-surface));"):
                        self._status_ui(v, html)  # always in view: the buttons, the bar, the status and error
                    with v.VExpansionPanels(multiple=True, v_model=("panels_open", [0, 1, 2, 3]), variant="accordion"):
                        self._inputs_ui(v, html)
                        self._options_ui(v, html)
                        self._result_ui(v, html)
                        self._compare_export_ui(v, html)
            client.ClientTriggers(mounted="trigger('axon_page_opened')")
            with ui.content:
                client.Style(".layout-grid-container div { min-width: 0; min-height: 0; }")  # equal view sizes
                self.layout_manager.initialize_layout_grid(ui)
        self.ui = ui

    def _status_ui(self, v, html) -> None:
        with html.Div(classes="d-flex ga-2 mb-2"):
            v.VBtn("Reconstruct", id="reconstruct", color="primary", click="trigger('axon_reconstruct')",
                   disabled=("ax.busy || !ax.inputs.frontal",), prepend_icon="mdi-cube-scan")
            v.VBtn("Cancel", id="cancel", color="error", variant="tonal", click="trigger('axon_cancel')",
                   disabled=("!ax.busy",), prepend_icon="mdi-stop")
        v.VProgressLinear(id="progress", model_value=("ax.progress",), height=14, color="primary",
                          striped=("ax.busy",), rounded=True, classes="mb-1")
        html.Div("{{ ax.status }}", id="status", classes="text-body-2 mb-2", style="min-height: 2.5em;")
        v.VAlert(v_if="ax.error", text=("ax.error",), id="error", type="error", density="compact",
                 variant="tonal", classes="mb-2 text-body-2")

    def _inputs_ui(self, v, html) -> None:
        with v.VExpansionPanel(title="Inputs"):
            with v.VExpansionPanelText():
                v.VBtn("Load the sample case", id="sample-case", block=True, variant="tonal", classes="mb-3",
                       click="trigger('axon_sample_case')", disabled=("ax.busy",), prepend_icon="mdi-database")
                html.Div("The chest CT LIDC-IDRI-0001, its frontal and lateral DRRs simulated as radiographs "
                         "(Slicer's Sample Data case).", classes="text-caption mb-3")
                for slot, label in SLOT_LABELS.items():
                    self._slot_ui(v, html, slot, label)

    def _slot_ui(self, v, html, slot: str, label: str) -> None:
        limit = "max_upload_bytes"
        refuse = ("(function (fs) { var big = fs.find(function (f) { return f.size > " + limit + " }); "
                  "var total = fs.reduce(function (s, f) { return s + f.size }, 0); "
                  "var mb = function (n) { return n < 1e9 ? (n / 1e6).toFixed(1) + ' MB' : (n / 1e9).toFixed(2) + ' GB' }; "
                  "return big ? big.name.split(/[\\\\/]/).pop() + ': is ' + mb(big.size) + '; ' + upload_limit_text "
                  ": (total > " + limit + " ? 'the ' + fs.length + ' files together are ' + mb(total) + '; ' + "
                  "upload_limit_text : '') })(Array.from($event.target.files || []))")
        with html.Div(classes="mb-4", id=f"slot-{slot}"):
            with html.Div(classes="d-flex align-center"):
                html.Div(label[0].upper() + label[1:] + (" (optional)" if slot != "frontal" else ""),
                         classes="text-subtitle-2 flex-grow-1")
                v.VBtn(icon="mdi-close", size="x-small", variant="text", v_if=f"ax.inputs.{slot}",
                       click=f"trigger('axon_clear', ['{slot}'])", disabled=("ax.busy",), id=f"clear-{slot}")
            html.Div("{{ ax.inputs." + slot + " ? ax.inputs." + slot + ".name + ' (' + ax.inputs." + slot +
                     ".source + ')' : 'none chosen' }}", id=f"name-{slot}", classes="text-body-2 mb-1")
            v.VImg(v_if=f"ax.inputs.{slot} && ax.inputs.{slot}.thumbnail", src=(f"ax.inputs.{slot}.thumbnail",),
                   max_width=120, max_height=120, classes="mb-1", id=f"thumb-{slot}")
            v.VFileInput(
                id=f"upload-{slot}", label="Upload" + (" (a file, or every file of a DICOM series)" if slot == "truth"
                                                       else ""),
                multiple=slot == "truth", density="compact", hide_details=True, prepend_icon="mdi-upload",
                disabled=("ax.busy",), classes="mb-1",
                change=(f"(function (why) {{ if (why) {{ trigger('axon_upload_refused', [why]) }} else {{ "
                        f"trigger('axon_upload', ['{slot}', $event.target.files]) }} }})({refuse})"))
            with html.Div(classes="d-flex align-center ga-1", v_if="data_dir"):
                v.VCombobox(id=f"server-path-{slot}", v_model=(f"server_path_{slot}", ""), items=("server_listing",),
                            label="or a file on the server (under the data folder)", density="compact",
                            hide_details=True, disabled=("ax.busy",), clearable=True)
                v.VBtn("Open", id=f"open-{slot}", size="small", variant="tonal",
                       click=f"trigger('axon_server_file', ['{slot}'])",
                       disabled=(f"ax.busy || !server_path_{slot}",))

    def _options_ui(self, v, html) -> None:
        with v.VExpansionPanel(title="Options"):
            with v.VExpansionPanelText():
                html.Div("Weights: {{ ax.weights }}", classes="text-caption mb-2", id="weights")
                for name, spec in OPTIONS.items():
                    key = f"opt_{name}"
                    label = name.replace("_", " ")
                    hint = spec.help[0].upper() + spec.help[1:]
                    common = dict(id=f"opt-{name.replace('_', '-')}", density="compact", disabled=("ax.busy",),
                                  classes="mb-1")
                    if spec.kind in ("int", "float"):
                        unset = f"; empty: {spec.unset}" if spec.optional else ""
                        v.VTextField(v_model=(key,), label=f"{label} ({spec.limits()}{unset})", hint=hint,
                                     persistent_hint=False, placeholder=spec.unset if spec.optional else None,
                                     **common)
                    elif spec.kind == "switch":
                        v.VSwitch(v_model=(key,), label=label, color="primary", hide_details=True, **common)
                    else:
                        v.VSelect(v_model=(key,), items=(list(spec.choices),), label=label, hint=hint,
                                  **common)

    def _result_ui(self, v, html) -> None:
        with v.VExpansionPanel(title="Result and display"):
            with v.VExpansionPanelText():
                html.Div("{{ ax.result ? ax.result.name : 'No reconstruction yet.' }}", id="result-name",
                         classes="text-subtitle-2 mb-1")
                with html.Div(id="warnings"):
                    v.VAlert(v_for="(w, i) in ax.warnings", key="i", text=("w",), type="warning",
                             density="compact", variant="tonal", classes="mb-1 text-body-2 axon-warning")
                with v.VTable(density="compact", v_if="ax.report.length", id="report", classes="mb-2"):
                    with html.Tbody():
                        with html.Tr(v_for="(r, i) in ax.report", key="i"):
                            html.Td("{{ r.key }}")
                            html.Td("{{ r.value }}", title=("r.detail",))
                html.Div("Slice views: window / level (HU)", classes="text-caption")
                with v.VBtnToggle(v_model=("wl_preset", "Lung"), density="compact", divided=True,
                                  variant="outlined", classes="mb-2"):
                    for name in WINDOW_PRESETS:
                        v.VBtn(name, value=name, size="small", id=f"wl-{name.replace(' ', '-')}")
                with html.Div(classes="d-flex ga-2"):
                    v.VTextField(v_model=("window",), label="window", density="compact", hide_details=True,
                                 id="window")
                    v.VTextField(v_model=("level",), label="level", density="compact", hide_details=True,
                                 id="level")
                v.VSelect(v_model=("vr_preset",), items=("vr_presets",), label="3D volume rendering preset",
                          density="compact", hide_details=True, classes="mt-2", id="vr-preset")

    def _compare_export_ui(self, v, html) -> None:
        with v.VExpansionPanel(title="Compare, export, segment"):
            with v.VExpansionPanelText():
                v.VBtn("Compare with the ground truth", id="compare", block=True, variant="tonal", classes="mb-2",
                       click="trigger('axon_compare')", disabled=("ax.busy || !ax.result || !ax.inputs.truth",),
                       prepend_icon="mdi-compare")
                with html.Div(v_if="ax.comparison"):
                    with v.VBtnToggle(v_model=("right_view", "truth"), mandatory=True, density="compact",
                                      variant="outlined", divided=True, classes="mb-2"):
                        v.VBtn("Right: ground truth", value="truth", size="small", id="right-truth")
                        v.VBtn("Right: difference", value="difference", size="small", id="right-difference")
                    with v.VTable(density="compact", id="metrics", classes="mb-2"):
                        with html.Thead():
                            with html.Tr():
                                for title in ("Metric", "Value", "Unit", "Convention"):
                                    html.Th(title)
                        with html.Tbody():
                            with html.Tr(v_for="(r, i) in ax.comparison.rows", key="i", classes="metric-row"):
                                html.Td("{{ r.metric }}")
                                html.Td("{{ r.value }}", classes="metric-value")
                                html.Td("{{ r.unit }}")
                                html.Td("{{ r.convention }}", classes="text-caption")
                    html.Pre("{{ ax.comparison.text }}", classes="text-caption mb-2", style="white-space: pre-wrap;")
                v.VDivider(classes="my-2")
                with v.VBtnToggle(v_model=("export_format", "nrrd"), mandatory=True, density="compact", divided=True,
                                  variant="outlined", classes="mb-2"):
                    for key, label in (("nrrd", "NRRD"), ("nifti", "NIfTI"), ("dicom", "DICOM")):
                        v.VBtn(label, value=key, size="small", id=f"format-{key}")
                with html.Div(classes="d-flex ga-2 mb-2"):
                    v.VBtn("Export", id="export", variant="tonal", click="trigger('axon_export', [export_format])",
                           disabled=("ax.busy || !ax.result",), prepend_icon="mdi-content-save")
                    v.VBtn("Create segmentation", id="segment", variant="tonal", click="trigger('axon_segment')",
                           disabled=("ax.busy || !ax.result",), prepend_icon="mdi-shape")
                with html.Div(v_for="(e, i) in ax.exports", key="i", classes="d-flex align-center mb-1"):
                    v.VBtn("{{ e.name }}", size="small", variant="text", prepend_icon="mdi-download",
                           id=("'download-' + i",),
                           click="utils.download(e.name, trigger('axon_download', [i]), 'application/octet-stream')")
                    html.Span("{{ (e.bytes / 1e6).toFixed(1) }} MB on the server", classes="text-caption")
                html.Div("{{ ax.segmentation ? ax.segmentation.segments.map(function (s) { return s.name + ' ' + "
                         "s.ml.toFixed(0) + ' mL' }).join(', ') : '' }}", id="segments", classes="text-body-2")


def serve(work: WorkFolder, server_files: ServerFiles | None, weights, host: str, port: int,
          announce=print) -> None:
    """Build the app and serve it until interrupted; ``announce(url)`` once the port is open."""
    from trame.app import get_server

    server = get_server("axon", client_type="vue3")
    app = AxonWebApp(server, work, server_files, weights)

    def ready(**_):
        announce(f"http://{host if ':' not in host else '[' + host + ']'}:{server.port}/")

    server.controller.on_server_ready.add(ready)
    argv = sys.argv
    sys.argv = argv[:1]  # trame reads its own options from the command line: `axon app`'s are not for it
    try:
        server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0,
                     disable_logging=True)
    finally:
        sys.argv = argv
        app.workflow.close()
