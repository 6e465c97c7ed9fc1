"""AXON in the browser, end to end: `axon app` serves the page, headless Chromium drives it as a user
would (Debian's chromium and chromedriver through Selenium).

One server and one browser for the whole file, the steps in order: bad inputs get the command line's
messages, an upload lands under the work folder, the sample case loads, a reconstruction with the tiny
test weights moves the progress bar while a second tab sees it busy, a cancelled run leaves nothing,
Compare gives the numbers `axon evaluate` gives on the exported file, Export downloads a readable NRRD
and a DICOM series, Create segmentation adds its segments.

Needs the app environment (trame-slicer, selenium) and a browser: `bash scripts/run.sh app-test` sets
both up and runs this file; elsewhere (the main CI environment) it skips. With AXON_APP_SCREENSHOTS=DIR
it saves the page at each step (README's pictures come from there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="needs the app environment (bash scripts/run.sh app-test)")
pytest.importorskip("selenium", reason="needs selenium (bash scripts/run.sh app-test)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (bash scripts/run.sh app-test installs them)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PATHS = [REPO / "AXONReconstruction", REPO / "AXONWeb"]
MAX_UPLOAD_MB = 2
JOB_TIMEOUT_S = 900  # a shared 2-core machine; the tiny weights take 20 s to 2 min
SHOTS = Path(os.environ["AXON_APP_SCREENSHOTS"]) if os.environ.get("AXON_APP_SCREENSHOTS") else None
BUNDLED = os.environ.get("AXON_APP_TEST_WEIGHTS") == "bundled"
"""`bash scripts/run.sh app-screenshots`: the same steps with the bundled weights (a real reconstruction
for README's pictures) instead of the tiny test weights."""
TIMINGS: dict[str, float] = {}


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(p) for p in PATHS] + [os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return env


def _axon(*args, check=True) -> subprocess.CompletedProcess:
    """The command line, for the messages and numbers the page must match."""
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cli_error(proc: subprocess.CompletedProcess, command: str) -> str:
    line = proc.stderr.strip().splitlines()[-1]
    prefix = f"axon {command}: error: "
    assert line.startswith(prefix), proc.stderr
    return line[len(prefix):]


def _radiograph_png(path: Path, colour: bool = False) -> Path:
    """A chest-like 16-bit PNG (an ellipse of tissue with two darker lungs), or a really coloured RGB
    one (channels moving against each other: a tinted grey film would be read)."""
    from PIL import Image

    yy, xx = np.mgrid[-1:1:256j, -1:1:256j]
    body = np.clip(1.1 - (xx / 0.85) ** 2 - (yy / 0.95) ** 2, 0, 1)
    lungs = np.exp(-(((np.abs(xx) - 0.35) / 0.2) ** 2 + (yy / 0.45) ** 2))
    img = (body * (1 - 0.6 * lungs) * 50000 + np.random.default_rng(0).normal(0, 300, body.shape)).clip(0, 65535)
    if colour:
        rgb = (img / 256).astype(np.uint8)
        Image.fromarray(np.stack([rgb, 255 - rgb, np.full_like(rgb, 128)], axis=-1)).save(path)
    else:
        Image.fromarray(img.astype(np.uint16)).save(path)
    return path


# ----------------------------------------------------------------------------- the server and the browser
@pytest.fixture(scope="module")
def app(request, tmp_path_factory):
    weights = [] if BUNDLED else ["--weights", request.getfixturevalue("tiny_weights")]
    root = tmp_path_factory.mktemp("web")
    data, work = root / "data", root / "work"
    data.mkdir()
    _radiograph_png(data / "colour.png", colour=True)
    _radiograph_png(root / "outside.png")
    (data / "notes.txt").write_text("not an image")
    os.symlink(root / "outside.png", data / "link-out.png")
    t0 = time.time()
    log = open(root / "server.log", "w")  # noqa: SIM115 - the server's stderr for the whole module
    proc = subprocess.Popen([sys.executable, "-m", "axonct.app.cli", "app",  # what `axon app` runs
                             "--port", "0", "--work-dir", work, "--data-dir", data, *weights,
                             "--max-upload-mb", str(MAX_UPLOAD_MB)],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=_env(), start_new_session=True)
    url, said = None, []
    deadline = time.time() + 180
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        said.append(line)
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        url = m.group(1) if m else None
    assert url, f"no address printed: {said} {(root / 'server.log').read_text()[-3000:]}"
    TIMINGS["server start"] = time.time() - t0
    try:
        yield {"url": url, "work": work, "data": data, "root": root, "proc": proc, "weights": weights,
               "stdout": said, "log": root / "server.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the app's own process group: the server and any worker
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(app):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    downloads = app["root"] / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    driver.get(app["url"])
    try:
        _wait(driver, lambda d: d.find_element(By.ID, "status").text, 60, "the page to load")
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float, what: str):
    def safe(d):
        try:
            return condition(d)
        except Exception:  # noqa: BLE001 - an element not there yet
            return False
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(safe)
    except Exception:
        _shot(driver, "failed-" + re.sub(r"\W+", "-", what)[:40])
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; status: {_text(driver, 'status')!r}, "
                             f"error: {_text(driver, 'error')!r}") from None


def _text(driver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def _click(driver, element_id: str) -> None:
    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _type(driver, element_id: str, text: str) -> None:
    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)
    element.send_keys(Keys.TAB)


def _progress(driver) -> float:
    return float(driver.find_element(By.ID, "progress").get_attribute("aria-valuenow") or 0)


def _shot(driver, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _open_server_file(driver, slot: str, path: str) -> None:
    _type(driver, f"server-path-{slot}", path)
    _click(driver, f"open-{slot}")


def _error_is(driver, expected: str, what: str) -> None:
    _wait(driver, lambda d: _text(d, "error") == expected, 60, f"the error {expected!r} ({what})")


def _worker_pids(work: Path) -> list[int]:
    """Processes whose command line names the app's job folder (the engine workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(work / "jobs") in cmd:
                pids.append(int(entry.name))
    return pids


# ----------------------------------------------------------------------------- the steps, in order
def test_the_app_says_where_it_listens_and_serves_the_page(app, browser):
    said = "".join(app["stdout"])
    assert re.search(r"axon app: open http://127\.0\.0\.1:\d+/", said)
    assert "axon app: listening on 127.0.0.1 only: this computer alone can open it" in app["log"].read_text()
    assert "Choose a frontal radiograph" in _text(browser, "status")
    assert browser.find_element(By.ID, "reconstruct").get_attribute("disabled") is not None  # no frontal yet
    assert "none chosen" in _text(browser, "name-frontal")
    _shot(browser, "01-start")


def test_bad_inputs_get_the_command_lines_one_line_messages(app, browser, tmp_path):
    # a colour radiograph: the engine's reader refuses it with the message `axon reconstruct` prints
    cli = _cli_error(_axon("reconstruct", "--frontal", app["data"] / "colour.png", "--out", tmp_path / "r.nrrd",
                           *app["weights"], check=False), "reconstruct")
    assert str(app["data"] / "colour.png") in cli
    _open_server_file(browser, "frontal", "colour.png")
    _error_is(browser, cli.replace(str(app["data"] / "colour.png"), "colour.png"), "a colour PNG")
    # a file that is not an image, through the same reader
    cli = _cli_error(_axon("reconstruct", "--frontal", app["data"] / "notes.txt", "--out", tmp_path / "r.nrrd",
                           *app["weights"], check=False), "reconstruct")
    _open_server_file(browser, "frontal", "notes.txt")
    _error_is(browser, cli.replace(str(app["data"] / "notes.txt"), "notes.txt"), "a text file")
    # nothing outside the data folder, not even through a link
    _open_server_file(browser, "frontal", "link-out.png")
    _wait(browser, lambda d: _text(d, "error").startswith("link-out.png: is outside the folder this app serves"),
          60, "the refusal of a link out of the data folder")
    _open_server_file(browser, "lateral", "../outside.png")
    _wait(browser, lambda d: _text(d, "error").startswith("../outside.png: is outside the folder"), 60,
          "the refusal of a path out of the data folder")
    # an upload over the limit is refused before anything is sent, in the server's own words
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(int(2.5e6)))
    before = sorted((app["work"] / "uploads").iterdir())
    browser.find_element(By.ID, "upload-frontal").send_keys(str(big))
    _error_is(browser, f"big.png: is 2.5 MB; uploads are limited to {MAX_UPLOAD_MB}.0 MB (axon app --max-upload-mb)",
              "an upload over the limit")
    assert sorted((app["work"] / "uploads").iterdir()) == before
    assert "none chosen" in _text(browser, "name-frontal")
    _shot(browser, "02-bad-input")


def test_an_upload_is_written_under_the_work_folder_and_read_by_the_engine(app, browser, tmp_path):
    upload = _radiograph_png(tmp_path / "my chest.png")
    browser.find_element(By.ID, "upload-frontal").send_keys(str(upload))
    _wait(browser, lambda d: _text(d, "name-frontal") == "my_chest.png (upload)", 60, "the uploaded frontal")
    assert _text(browser, "error") == ""
    stored = list((app["work"] / "uploads").glob("*-frontal/my_chest.png"))
    assert len(stored) == 1 and stored[0].read_bytes() == upload.read_bytes()
    assert browser.find_element(By.ID, "thumb-frontal").is_displayed()


def test_the_sample_case_loads_in_the_background(app, browser):
    t0 = time.time()
    _click(browser, "sample-case")
    _wait(browser, lambda d: "Sample case loaded" in _text(d, "status"), JOB_TIMEOUT_S, "the sample case")
    TIMINGS["sample case"] = time.time() - t0
    assert _text(browser, "name-frontal") == "LIDC-IDRI-0001 frontal DRR (sample case)"
    assert _text(browser, "name-lateral") == "LIDC-IDRI-0001 lateral DRR (sample case)"
    assert _text(browser, "name-truth") == "LIDC-IDRI-0001 CT (sample case)"
    assert _text(browser, "error") == ""


def test_a_bad_option_gets_the_command_lines_message(app, browser, tmp_path):
    cli = _cli_error(_axon("reconstruct", "--frontal", tmp_path / "x.png", "--out", tmp_path / "r.nrrd",
                           "--steps", "0", check=False), "reconstruct")
    _type(browser, "opt-steps", "0")
    _click(browser, "reconstruct")
    _error_is(browser, cli, "--steps 0")
    assert "argument --steps" in cli
    _type(browser, "opt-steps", "")  # back to the weights' own number of steps


def test_reconstruct_moves_the_progress_bar_and_a_second_tab_sees_the_job(app, browser):
    t0 = time.time()
    _click(browser, "reconstruct")
    _wait(browser, lambda d: d.find_elements(By.ID, "busy"), 60, "the busy line")
    seen = set()
    first_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(app["url"])
    _wait(browser, lambda d: "AXON is busy" in _text(d, "busy"), 60, "the second tab's busy line")
    assert browser.find_element(By.ID, "reconstruct").get_attribute("disabled") is not None
    assert _text(browser, "name-frontal") == "LIDC-IDRI-0001 frontal DRR (sample case)"  # the same state
    _wait(browser, lambda d: len([i for i in d.find_elements(By.CSS_SELECTOR, ".layout-grid-item img")
                                  if (i.get_attribute("src") or "").startswith(("blob:", "data:"))]) >= 3, 60,
          "the second tab's slice views to show the scene")
    _shot(browser, "03-second-tab-busy")
    browser.close()
    browser.switch_to.window(first_tab)
    deadline = time.time() + JOB_TIMEOUT_S
    while time.time() < deadline and "Done in" not in _text(browser, "status"):
        if _text(browser, "error"):
            break
        seen.add(_progress(browser))
        if len(seen) == 3:
            _shot(browser, "04-progress")
        time.sleep(0.2)
    TIMINGS["reconstruction (tiny weights)"] = time.time() - t0
    assert "Done in" in _text(browser, "status"), (_text(browser, "status"), _text(browser, "error"))
    moving = sorted(v for v in seen if 0 < v < 100)
    assert len(moving) >= 3, f"the progress bar did not move through the run: {sorted(seen)}"
    name = "AXON CT from LIDC-IDRI-0001 frontal DRR + LIDC-IDRI-0001 lateral DRR"
    assert _text(browser, "result-name") == name
    warnings = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#warnings .axon-warning")]
    for warning in warnings:  # each warning of the report is shown, and named in the status line too
        assert warning and warning in _text(browser, "status")
    assert not browser.find_elements(By.ID, "busy")
    browser.execute_script("document.getElementById('result-name').scrollIntoView({block: 'start'})")
    time.sleep(3)
    _shot(browser, "05-result")


def test_cancel_stops_the_worker_and_leaves_nothing(app, browser):
    jobs_before = sorted(p.name for p in (app["work"] / "jobs").iterdir())
    _type(browser, "opt-steps", "200")
    _click(browser, "reconstruct")
    _wait(browser, lambda d: _progress(d) > 0, JOB_TIMEOUT_S, "the long run to start sampling")
    assert _worker_pids(app["work"]), "no worker process found for the running job"
    _click(browser, "cancel")
    _wait(browser, lambda d: _text(d, "status").startswith("Cancelled"), 60, "the cancellation")
    _wait(browser, lambda d: not _worker_pids(app["work"]), 30, "the worker processes to end")
    assert sorted(p.name for p in (app["work"] / "jobs").iterdir()) == jobs_before
    assert _text(browser, "result-name") == "AXON CT from LIDC-IDRI-0001 frontal DRR + LIDC-IDRI-0001 lateral DRR"
    assert _text(browser, "error") == ""
    _type(browser, "opt-steps", "")


def test_compare_shows_the_numbers_axon_evaluate_gives(app, browser, tmp_path):
    t0 = time.time()
    _click(browser, "compare")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#metrics .metric-row")) == 6, 300, "the metrics")
    TIMINGS["compare"] = time.time() - t0
    rows = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
            for r in browser.find_elements(By.CSS_SELECTOR, "#metrics .metric-row")}
    browser.execute_script("document.getElementById('metrics').scrollIntoView({block: 'end'})")
    time.sleep(3)  # the views' second fit after the layout change
    _shot(browser, "06-compare")
    _click(browser, "right-difference")
    time.sleep(2)
    _shot(browser, "07-difference")
    # the exported reconstruction against the same CT, scored by the command line
    _click(browser, "format-nrrd")
    _click(browser, "export")
    _wait(browser, lambda d: d.find_elements(By.ID, "download-0"), 300, "the export")
    exported = Path(json.loads(browser.execute_script("return JSON.stringify(trame.state.get('ax').exports[0])"))
                    ["download"])
    from axonct.io.sample_data import sample_ct_path

    evaluated = json.loads(_axon("evaluate", "--pred", exported, "--gt", sample_ct_path()).stdout)
    assert float(rows["PSNR (honest)"]) == pytest.approx(evaluated["honest"]["psnr"], abs=0.02)
    assert float(rows["SSIM (honest)"]) == pytest.approx(evaluated["honest"]["ssim"], abs=0.002)
    assert float(rows["PSNR (X2CT convention)"]) == pytest.approx(evaluated["x2ct"]["psnr"], abs=0.02)
    assert float(rows["MAE"]) == pytest.approx(evaluated["mae_hu"], abs=0.5)


def test_export_downloads_a_readable_volume_and_a_dicom_series(app, browser):
    import SimpleITK as sitk

    record = json.loads(browser.execute_script("return JSON.stringify(trame.state.get('ax').exports[0])"))
    server_file = Path(record["download"])
    assert server_file.is_relative_to(app["work"] / "exports") and server_file.suffix == ".nrrd"
    _click(browser, "download-0")
    downloaded = browser.downloads / server_file.name
    _wait(browser, lambda d: downloaded.is_file() and downloaded.stat().st_size == server_file.stat().st_size, 120,
          "the NRRD download")
    assert downloaded.read_bytes() == server_file.read_bytes()
    image = sitk.ReadImage(str(downloaded))
    hu = sitk.GetArrayFromImage(image)
    assert image.GetDimension() == 3 and min(image.GetSize()) >= 32 and hu.dtype == np.float32
    assert -1100 <= hu.min() < hu.max() <= 3100, (hu.min(), hu.max())
    # DICOM: a series folder on the server, one zip in the browser
    _click(browser, "format-dicom")
    _click(browser, "export")
    _wait(browser, lambda d: json.loads(d.execute_script("return JSON.stringify(trame.state.get('ax').exports)"))
          [0]["format"] == "dicom", 300, "the DICOM export")
    _click(browser, "download-0")
    record = json.loads(browser.execute_script("return JSON.stringify(trame.state.get('ax').exports[0])"))
    archive = browser.downloads / record["name"]
    _wait(browser, lambda d: archive.is_file() and archive.stat().st_size == record["bytes"], 120, "the DICOM zip")
    slices = [n for n in zipfile.ZipFile(archive).namelist() if not n.endswith("/")]
    assert len(slices) == image.GetSize()[2], (len(slices), image.GetSize())


def test_create_segmentation_adds_body_lungs_and_bone(app, browser):
    _click(browser, "segment")
    _wait(browser, lambda d: "body" in _text(d, "segments"), 300, "the segments")
    text = _text(browser, "segments")
    for name in ("body", "lungs", "bone"):
        assert re.search(rf"{name} \d+ mL", text), text
    assert _text(browser, "error") == ""
    _shot(browser, "08-segmentation")


def test_the_server_stops_cleanly_and_keeps_files_under_its_work_folder(app, browser):
    written = [p for p in app["root"].rglob("*") if p.is_file()]
    outside = [p for p in written if not p.is_relative_to(app["work"]) and not p.is_relative_to(browser.downloads)
               and p.parent != app["root"] and not p.is_relative_to(app["data"])]
    assert not outside, outside
    if SHOTS is not None:
        (SHOTS / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=1))
