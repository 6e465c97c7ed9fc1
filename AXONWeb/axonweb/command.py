"""`axon app`: its arguments and its start. Standard library and `axonct.options` only, so building the
`axon` parser (every `axon ... --help`) loads neither trame nor torch; `run_app` imports them.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import sys

from axonct import options
from axonct.errors import AxonInputError

from .files import DEFAULT_MAX_UPLOAD_MB

SUMMARY = "the Slicer panel's workflow as a local web page (needs the app extra)"
DESCRIPTION = (
    "Start a local web app with the AXON panel's workflow in Slicer's own slice and 3D views (trame-slicer): "
    "choose radiographs (upload, a file under --data-dir, or the sample case), set the reconstruction options, "
    "Reconstruct in a background process with progress and Cancel, then window/level and CT presets, Compare "
    "with a ground-truth CT, Export (NRRD, NIfTI, DICOM) and Create segmentation. Every open tab shows the same "
    "state. Binds to 127.0.0.1 (this computer only) unless --host says otherwise. Needs "
    "pip install \"axon-xray2ct[app]\" and, for the views, OpenGL without a display (Debian: libosmesa6 libegl1 "
    "libgl1). Research use only.")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_WORK_DIR = "axon-app"


def app_arguments(p) -> None:
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 serves every network: "
                        "anyone who reaches the port can use the app and open files under --data-dir, there is no login)")
    p.add_argument("--port", type=options.bounded_int(0, 65535, "the port"), default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one, printed at start)")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, metavar="FOLDER",
                   help="the app's folder: uploads, exports and the jobs' temporary folders are written only here "
                        f"(created when missing; default ./{DEFAULT_WORK_DIR})")
    p.add_argument("--data-dir", default=".", metavar="FOLDER",
                   help="the folder whose files (and sub-folders) the page may open on the server (default: the "
                        "current folder)")
    p.add_argument("--weights", help="weights folder for every reconstruction (default: the bundled CPU demo weights)")
    p.add_argument("--max-upload-mb", type=options.positive_float("--max-upload-mb", 1e6),
                   default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest upload, all files of one upload together (default {DEFAULT_MAX_UPLOAD_MB} MB)")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def binding_note(host: str, port: int, data_dir) -> str:
    """What the start-up line says about who can reach the app."""
    if is_loopback(host):
        return f"listening on {host} only: this computer alone can open it (--host ADDRESS serves other machines)"
    return (f"WARNING: listening on {host}: anyone who can reach this machine's port {port or '(free port)'} can use "
            f"the app and open the files under {data_dir}; there is no login. Use --host 127.0.0.1 (the default) "
            "and an SSH tunnel for a remote server")


def missing_app_packages() -> list[str]:
    """The app extra's packages that are not importable (found without importing them)."""
    return [name for module, name in (("trame", "trame"), ("trame_slicer", "trame-slicer"), ("slicer", "slicer-core"),
                                      ("AXONReconstructionLib", "AXONReconstructionLib (the Slicer module's logic)"))
            if importlib.util.find_spec(module) is None]


def run_app(args) -> int:
    """Check everything that can be checked before the server starts (one line each), then serve."""
    missing = missing_app_packages()
    if missing:
        raise AxonInputError(None, f"the web app needs {', '.join(missing)}: pip install \"axon-xray2ct[app]\"")
    from .files import ServerFiles, WorkFolder

    work = WorkFolder(args.work_dir, args.max_upload_mb)
    files = ServerFiles(args.data_dir)
    if args.weights is not None and not __import__("pathlib").Path(args.weights).expanduser().is_dir():
        raise AxonInputError(args.weights, "is not a weights folder (it must hold the coarse, controlnet and sr "
                                           ".safetensors and .json files)")
    print(f"axon app: {binding_note(args.host, args.port, files.root)}", file=sys.stderr, flush=True)
    print(f"axon app: work folder {work.root} (uploads, exports); server files from {files.root}",
          file=sys.stderr, flush=True)

    from .server import serve

    serve(work, files, args.weights, args.host, args.port,
          announce=lambda url: print(f"axon app: open {url} in a browser (Ctrl-C stops the app)", flush=True))
    return 0
