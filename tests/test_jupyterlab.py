"""Chapter 02's viewers as a person meets them: in a real JupyterLab driven by headless Chromium,
on a machine kept offline (the server's, the kernel's and the browser's proxy refuse every
connection), chapter 02 with interactive=True runs to its last cell and its slice viewer renders;
asked for the itkwidgets viewer too, it says why it creates none and the later cells still run.
First, without a browser, the check that decides whether the itkwidgets viewer can load."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import nbformat
import pytest
import SimpleITK as sitk
from conftest import SMOKE_SEED
from tools.bookcheck import CHROMIUM_ARGS, chromium_path

from stsnb.run import viewers

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "02_registration_qa"
#: Seconds for the server to answer and for the notebook to open with its kernel idle.
START_TIMEOUT_S = 120
#: Seconds for Run All Cells on the smoke run (registration reused from its work dir).
RUN_TIMEOUT_S = 300
#: The parts of the smoke work dir chapter 02 reads or rewrites (the copy keeps the shared
#: work dir of the other tests untouched).
WORK_FOLDERS = ("curation", "registration")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# ------------------------------------------------------------------ the front-end check alone


@pytest.fixture(scope="module")
def refused_proxy():
    """http://127.0.0.1:PORT where PORT is bound and never listened on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)


def test_front_end_addresses_are_those_of_the_installed_itkwidgets() -> None:
    """The addresses checked are the ones itkwidgets loads (its viewer_config.py, read rather
    than imported: importing itkwidgets takes over the kernel's cell execution)."""
    source = Path(distribution("itkwidgets").locate_file("itkwidgets/viewer_config.py"))
    values = {target.id: ast.literal_eval(node.value)
              for node in ast.parse(source.read_text(encoding="utf-8")).body
              if isinstance(node, ast.Assign) for target in node.targets}
    assert viewers.ITK_FRONTEND_URLS == (values["ITK_VIEWER_SRC"], values["PYDATA_SPHINX_HREF"])
    assert viewers._lab_extension_installed(viewers.ITK_LAB_EXTENSION)
    assert not viewers._lab_extension_installed("stsnb-no-such-extension")


def test_offline_the_front_end_check_says_why_at_once(refused_proxy, monkeypatch) -> None:
    _use_proxy(monkeypatch, refused_proxy)
    start = time.monotonic()
    loads, why = viewers.itk_frontend(timeout_s=5.0)
    assert not loads
    assert time.monotonic() - start < 2.0  # refused: no need to wait for the timeout
    host = urlsplit(viewers.ITK_FRONTEND_URLS[0]).hostname
    assert f"{host} did not answer" in why and "internet" in why


def test_a_front_end_that_never_answers_is_given_up_after_the_timeout(monkeypatch) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        _use_proxy(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        loads, why = viewers.itk_frontend(timeout_s=1.0)
        elapsed = time.monotonic() - start
    assert not loads and "did not answer" in why
    assert 0.9 < elapsed < 2.5, (elapsed, why)


def _live_session(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A kernel with a live front end and a stand-in itkwidgets recording its calls."""
    import IPython

    calls: list[dict] = []
    monkeypatch.delenv(viewers.PAPERMILL_ENV, raising=False)
    kernel = SimpleNamespace(get_parent=lambda channel=None: {"content": {"allow_stdin": True}})
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=kernel))
    monkeypatch.setitem(sys.modules, "itkwidgets",
                        SimpleNamespace(view=lambda **kwargs: calls.append(kwargs) or "viewer"))
    return calls


def test_the_viewer_is_created_only_when_its_front_end_loads(refused_proxy, monkeypatch,
                                                             capsys) -> None:
    calls = _live_session(monkeypatch)
    _use_proxy(monkeypatch, refused_proxy)
    image = sitk.Image([4, 4, 4], sitk.sitkFloat32)
    assert viewers.itk_viewer(image, image, image, frontend_timeout_s=2.0) is None
    printed = capsys.readouterr().out
    assert printed.startswith("itkwidgets viewer not created: its front end loads from the "
                              "internet") and printed.count("\n") == 1
    assert calls == []
    monkeypatch.setattr(viewers, "itk_frontend", lambda timeout_s: (True, ""))
    assert viewers.itk_viewer(image, image, image, frontend_timeout_s=2.0) == "viewer"
    assert len(calls) == 1 and set(calls[0]) >= {"image", "fixed_image", "label_image"}


# ------------------------------------------------------------------ chapter 02 in JupyterLab


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    cohort_dir: Path
    work_dir: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""


def _lab_environment(base: Path, proxy: str) -> dict[str, str]:
    """The test's environment without batch markers or proxies of its own, every proxy set to
    `proxy` (loopback excepted), and Jupyter's user folders in `base` (no personal settings,
    kernels or workspaces; notebooks attached to the DOM in full, no news fetched)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (viewers.PAPERMILL_ENV, "MPLBACKEND")
           and k.lower() not in PROXY_VARIABLES}
    for name in ("http_proxy", "https_proxy"):
        env[name] = env[name.upper()] = proxy
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    folders = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
               "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython",
               "JUPYTERLAB_SETTINGS_DIR": "settings", "JUPYTERLAB_WORKSPACES_DIR": "workspaces"}
    for variable, name in folders.items():
        (base / name).mkdir(parents=True, exist_ok=True)
        env[variable] = str(base / name)
    settings = {"notebook-extension/tracker": {"windowingMode": "none"},
                "apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False}}
    for plugin, values in settings.items():
        path = base / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    return env


def _wait_for_server(process: subprocess.Popen, url: str, log: Path) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"jupyter lab exited ({process.returncode}):\n{_tail(log)}")
        try:
            with direct.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"jupyter lab did not answer within {START_TIMEOUT_S} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen, url: str, token: str) -> None:
    """Shut the server down through its API (its kernels with it), else SIGTERM, else kill
    its process group."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {token}"})
    for stop in (lambda: direct.open(request, timeout=10).close(), process.terminate,
                 lambda: os.killpg(process.pid, signal.SIGKILL)):
        if process.poll() is not None:
            return
        try:
            stop()
            process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass


@pytest.fixture(scope="module")
def lab(smoke_book, refused_proxy, tmp_path_factory) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 (free port, token) over an empty folder, offline; chapter 02's
    copies are written there by the tests, pointing at the smoke cohort and at a copy of the
    smoke work dir's curation and registration."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root, work_dir = base / "notebooks", base / "work"
    root.mkdir()
    source = smoke_book["work_dir"]
    shutil.copytree(source, work_dir, ignore=lambda folder, names: [
        n for n in names if Path(folder) == source and (source / n).is_dir()
        and n not in WORK_FOLDERS])
    port, token = _free_port(), secrets.token_hex(16)
    log = base / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--allow-root",  # the server refuses root otherwise; tests may run as root
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=root, env=_lab_environment(base, refused_proxy),
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(process, f"{url}/api/status?token={token}", log)
        yield Lab(url, token, root, smoke_book["cohort_dir"], work_dir, log)
    finally:
        _stop(process, url, token)


@pytest.fixture(scope="module")
def chromium(refused_proxy):
    """Headless Chromium whose every connection but loopback goes to the refusing proxy."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:  # Chromium's own flags: Playwright's proxy option
        browser = playwright.chromium.launch(  # would send loopback through the proxy too
            executable_path=chromium_path(),
            args=[*CHROMIUM_ARGS, f"--proxy-server={refused_proxy}",
                  "--proxy-bypass-list=127.0.0.1;localhost"])
        try:
            yield browser
        finally:
            browser.close()


def _write_chapter(path: Path, **values) -> nbformat.NotebookNode:
    """Chapter 02 with the given parameters' values in its parameters cell, written to `path`."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / f"{CHAPTER}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    lines = cell.source.splitlines()
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
        assert len(found) == 1, f"the parameters cell has no {name}"
        lines[found[0]] = f"{name} = {value!r}"
    cell.source = "\n".join(lines)
    nbformat.write(nb, path)
    return nb


_PROMPTS = ("() => Array.from(document.querySelectorAll("
            "'.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')).map(p => p.textContent.trim())")
#: Run All has ended: a cell ran and none is waiting or running ([*]).
_RUN_ENDED = (f"() => {{ const prompts = ({_PROMPTS})(); return "
              r"prompts.some(p => /^\[\d+\]:$/.test(p)) && !prompts.includes('[*]:'); }")


#: The slice viewer shows one image again, loaded, and not the one it showed before.
_REDRAWN = ("before => { const images = document.querySelectorAll("
            "'.jp-NotebookPanel .widget-output img'); return images.length === 1 && "
            "images[0].getAttribute('src') !== before && images[0].complete && "
            "images[0].naturalWidth > 100; }")


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{item}$")).click()


def _saved(path: Path, executed: int, timeout_s: float = 60) -> nbformat.NotebookNode:
    """The notebook as saved, once the file holds `executed` code cells with a count."""
    deadline = time.monotonic() + timeout_s
    counts = None
    while time.monotonic() < deadline:
        try:
            nb = nbformat.read(path, as_version=4)
        except (OSError, ValueError):  # being written
            time.sleep(0.25)
            continue
        counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
        if sum(count is not None for count in counts) >= executed:
            return nb
        time.sleep(0.25)
    raise AssertionError(f"{path.name} not saved with {executed} cells run: {counts}")


def _text(cell) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for o in cell.get("outputs", []))


@pytest.mark.smoke
@pytest.mark.parametrize("itk_viewer", [False, True], ids=["slice-viewer", "itk-viewer-offline"])
def test_chapter_02_runs_to_the_end_in_jupyterlab_with_its_slice_viewer(lab, chromium,
                                                                        itk_viewer) -> None:
    from playwright.sync_api import expect

    stem = f"{CHAPTER}{'_itk' if itk_viewer else ''}"
    path = lab.root / f"{stem}.ipynb"
    nb = _write_chapter(path, cohort_dir=str(lab.cohort_dir), work_dir=str(lab.work_dir),
                        profile="smoke", seed=SMOKE_SEED, interactive=True,
                        itk_viewer=itk_viewer)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # a workspace of its own: nothing reopened from the other test
        page.goto(f"{lab.url}/lab/workspaces/{stem}/tree/{path.name}?token={lab.token}")
        panel = page.locator(".jp-NotebookPanel")
        expect(panel).to_have_count(1, timeout=START_TIMEOUT_S * 1000)
        expect(panel.locator(".jp-CodeCell")).to_have_count(len(code_cells),
                                                            timeout=START_TIMEOUT_S * 1000)
        expect(panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")) \
            .to_be_visible(timeout=START_TIMEOUT_S * 1000)
        panel.locator(".jp-CodeCell .jp-InputPrompt").first.click()
        _menu(page, "Run", "Run All Cells")
        page.wait_for_function(_RUN_ENDED, timeout=RUN_TIMEOUT_S * 1000)
        prompts = page.evaluate(f"({_PROMPTS})()")
        _menu(page, "File", "Save Notebook")
        saved = _saved(path, executed=sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in prompts))
        errors = [o for c in saved.cells for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert errors == [], "\n".join(f"{e.ename}: {e.evalue}" for e in errors)
        assert len(prompts) == len(code_cells), prompts
        assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), prompts  # none left at [*]
        counts = [c.execution_count for c in saved.cells if c.cell_type == "code"]
        assert counts == sorted(counts) and len(set(counts)) == len(counts), counts

        # the offline slice viewer: its three controls and its image, redrawn on a change
        def control(kind: str, label: str):
            return panel.locator(f".{kind}").filter(
                has=page.locator(".widget-label", has_text=re.compile(rf"^{label}$")))

        slider, view, weight = (control("widget-slider", "slice"),
                                control("widget-dropdown", "view"),
                                control("widget-slider", "MR weight"))
        for widget in (slider, view, weight):
            expect(widget).to_have_count(1)
            expect(widget).to_be_visible()
        image = panel.locator(".widget-output img")
        expect(image).to_have_count(1, timeout=60_000)
        expect(image).to_be_visible()
        assert image.evaluate("img => img.complete && img.naturalWidth > 100")
        before = image.get_attribute("src")
        view.locator("select").select_option("checkerboard")
        page.wait_for_function(_REDRAWN, arg=before, timeout=60_000)

        # the itkwidgets cell says why it made no viewer, and the cells after it ran after it
        code = [c for c in saved.cells if c.cell_type == "code"]
        (itk_cell,) = [c for c in code if "viewers.itk_viewer(" in c.source]
        said = _text(itk_cell)
        if itk_viewer:
            assert said.startswith("itkwidgets viewer not created: its front end loads from "
                                   "the internet and "), said
            assert "did not answer" in said and said.count("\n") == 1, said
            expect(panel.get_by_text("itkwidgets viewer not created", exact=False)) \
                .to_be_visible()
        else:
            assert said.startswith("itk_viewer=False: no itkwidgets viewer"), said
        later = code[code.index(itk_cell) + 1:]
        assert later and all(c.execution_count > itk_cell.execution_count for c in later)
    except Exception:
        artifacts = REPO_ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        with contextlib.suppress(Exception):  # what the page showed, for the report
            page.screenshot(path=str(artifacts / f"jupyterlab-{stem}.png"), full_page=True)
            print("input prompts:", page.evaluate(f"({_PROMPTS})()"))
        print(_tail(lab.log))
        raise
    finally:
        page.close()
