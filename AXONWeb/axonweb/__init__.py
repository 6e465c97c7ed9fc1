"""AXON in the browser: the Slicer panel's workflow as a trame-slicer web app (`axon app`).

One code path serves Slicer and the browser: the jobs (reconstruction and sample case in a background
worker speaking `axonct.app.protocol`), compare, export and segmentation are the Slicer module's Qt-free
`AXONReconstructionLib.logic.ReconstructionLogic`, on a real MRML scene that trame-slicer renders in
Slicer's own slice and 3D views.

- `command`: the `axon app` arguments and start-up (light: `axon --help` imports no trame or torch);
- `files`: the app's work folder, size-limited uploads, and files chosen on the server;
- `workflow`: the panel's state and actions over the Lib, without trame (tested with slicer-core alone);
- `server`: the page (trame + Vuetify) and the Slicer views (trame-slicer).

Kept outside `axonct` on purpose: the engine never imports Slicer, and the Slicer extension does not
ship a web server. Needs the `app` extra: pip install "axon-xray2ct[app]".
"""
