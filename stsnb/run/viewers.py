"""Interactive viewers for live JupyterLab sessions, and the guards keeping the kernel running.

itkwidgets 1.0 loads its viewer from the internet and holds every later cell of the kernel until
that viewer has loaded in the browser: created under papermill (no front end) or on a machine
without internet (the front end never loads), it leaves every later cell waiting for good.
:func:`live_frontend` says whether a person is at the notebook and :func:`itk_frontend` whether
the viewer's front end can load; :func:`itk_viewer` creates a viewer only when both hold.
The ipywidgets + matplotlib :func:`slice_viewer` needs no internet and is safe anywhere.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import SimpleITK as sitk

#: Set (to anything but 0/false/no) by batch runners; the kernel inherits it from papermill's
#: process. stsnb.run.book sets it for the chapters it executes.
PAPERMILL_ENV = "PAPERMILL_EXECUTION"

#: What the browser loads for an itkwidgets viewer, as in itkwidgets 1.0a55's viewer_config.py
#: (the version pinned in pyproject.toml): the viewer application (ITK_VIEWER_SRC) and the
#: interface it opens with (PYDATA_SPHINX_HREF). Neither comes with the package.
ITK_FRONTEND_URLS = (
    "https://bafybeieiqiiwvdq66e2bndws5nwojbe4wwerbxyua6u37axxivi2rwf7wy.ipfs.dweb.link/",
    "https://cdn.jsdelivr.net/npm/itk-viewer-bootstrap-ui@0.30.0/dist/"
    "bootstrapUIMachineOptions.js.es.js",
)
#: The JupyterLab extension (ImJoy) through which itkwidgets opens its viewer in the browser.
ITK_LAB_EXTENSION = "imjoy-jupyterlab-extension"
#: Seconds :func:`itk_frontend` waits for the front end's addresses to answer.
FRONTEND_TIMEOUT_S = 3.0


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def live_frontend() -> tuple[bool, str]:
    """(True, '') when a person runs this kernel from a notebook front end, else (False, why).

    Batch execution is recognised by the PAPERMILL_EXECUTION environment variable, by the
    absence of an IPython kernel (plain Python, pytest), and by an execute request that does
    not allow stdin: papermill and nbclient send allow_stdin = False, while JupyterLab, the
    classic notebook and VS Code send True.
    """
    if _truthy(os.environ.get(PAPERMILL_ENV)):
        return False, f"batch execution ({PAPERMILL_ENV} is set)"
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the environment
        return False, "IPython is not installed"
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False, "no Jupyter kernel (plain Python or a terminal IPython)"
    parent = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else {}
    content = (parent or {}).get("content", {})
    if not content.get("allow_stdin", False):
        return False, "no live front end (the cell was sent by a batch runner such as papermill)"
    return True, ""


def _lab_extension_installed(name: str) -> bool:
    """Whether JupyterLab extension `name` is installed where this environment's Jupyter
    looks for them (the environment's share/jupyter, the user's and the system's)."""
    from jupyter_core.paths import jupyter_path

    return any((Path(folder) / name / "package.json").is_file()
               for folder in jupyter_path("labextensions"))


def _unreachable(url: str, timeout_s: float) -> str | None:
    """None when `url` answers (HTTP status below 400) within `timeout_s`, else why not; through
    the proxy the environment names now (urlopen's shared opener keeps the first one seen)."""
    import http.client
    import urllib.error
    import urllib.request

    try:
        with urllib.request.build_opener().open(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (OSError, ValueError, http.client.HTTPException) as error:
        # refused, timed out, an unknown host, a malformed answer
        return str(getattr(error, "reason", None) or error) or type(error).__name__


def itk_frontend(timeout_s: float = FRONTEND_TIMEOUT_S) -> tuple[bool, str]:
    """(True, '') when an itkwidgets viewer can load in the browser, else (False, why).

    It can when the JupyterLab extension it opens through is installed and every address of
    :data:`ITK_FRONTEND_URLS` answers within `timeout_s` seconds (name lookup included; the
    addresses are asked from the kernel's machine, which serves the browser in the usual
    set-up). Proxy settings are taken from the environment (https_proxy, no_proxy).
    """
    if not _lab_extension_installed(ITK_LAB_EXTENSION):
        return False, (f"the JupyterLab extension it opens through ({ITK_LAB_EXTENSION}) is "
                       "not installed")
    answers: dict[str, str | None] = {}

    def ask(url: str) -> None:
        answers[url] = _unreachable(url, timeout_s)

    # a thread per address: the name lookup ignores socket timeouts, the join below does not
    threads = [threading.Thread(target=ask, args=(url,), daemon=True)
               for url in ITK_FRONTEND_URLS]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for url in ITK_FRONTEND_URLS:
        why = answers.get(url, f"no answer within {timeout_s:g} s")
        if why is not None:
            return False, (f"its front end loads from the internet and {urlsplit(url).hostname} "
                           f"did not answer ({why})")
    return True, ""


def to_viewer_image(image: sitk.Image) -> Any:
    """A SimpleITK image as an NGFF image for itkwidgets (z, y, x axes; spacing and origin, mm)."""
    from ngff_zarr import to_ngff_image

    spacing, origin = image.GetSpacing(), image.GetOrigin()
    return to_ngff_image(
        sitk.GetArrayFromImage(image), dims=("z", "y", "x"),
        scale={"x": spacing[0], "y": spacing[1], "z": spacing[2]},
        translation={"x": origin[0], "y": origin[1], "z": origin[2]},
    )


def itk_viewer(fixed: sitk.Image, moving: sitk.Image, contour: sitk.Image,
               interactive: bool = True,
               frontend_timeout_s: float | None = FRONTEND_TIMEOUT_S) -> Any | None:
    """An itkwidgets viewer comparing `fixed` (CT) and `moving` (registered MR, same grid) with
    `contour` as a label map; None (with a printed reason) when off or not in a live session.

    `frontend_timeout_s`: first check for up to that many seconds that the viewer's front end
    can load (:func:`itk_frontend`) and create none when it cannot, since itkwidgets would hold
    every later cell until it has loaded; None skips the check (a caller that knows it loads).
    """
    if not interactive:
        print("itkwidgets viewer off; the slice viewer and the static figures show the same "
              "images.")
        return None
    live, why = live_frontend()
    if not live:
        print(f"itkwidgets viewer not created: {why}. Open the notebook in JupyterLab with "
              "itk_viewer=True to use it.")
        return None
    if frontend_timeout_s is not None:
        loads, why = itk_frontend(frontend_timeout_s)
        if not loads:
            print(f"itkwidgets viewer not created: {why}, and a viewer whose front end cannot "
                  "load would hold every later cell; the slice viewer (interactive=True) works "
                  "offline.")
            return None
    import itkwidgets

    return itkwidgets.view(
        image=to_viewer_image(moving),
        fixed_image=to_viewer_image(fixed),
        label_image=to_viewer_image(sitk.Cast(contour > 0, sitk.sitkUInt8)),
        compare={"method": "green-magenta"},
        ui_collapsed=True,
    )


def _display_window(values: np.ndarray, is_ct: bool) -> tuple[float, float]:
    if is_ct:
        return (-160.0, 240.0)
    positive = values[values > 0]
    return (0.0, float(np.percentile(positive, 99.5))) if positive.size else (0.0, 1.0)


def slice_view(fixed: np.ndarray, moving: np.ndarray, contour: np.ndarray | None, z: int,
               mode: str, alpha: float, spacing_mm: tuple[float, float, float]):
    """One axial slice of the comparison as a matplotlib figure (mode: blend, checkerboard,
    magenta-green, fixed, moving); arrays are (z, y, x) on one grid."""
    import matplotlib.pyplot as plt

    from stsnb.plots.registration import checkerboard, magenta_green, normalise

    a = normalise(fixed[z], _display_window(fixed, True))
    b = normalise(moving[z], _display_window(moving, False))
    images = {
        "blend": (1 - alpha) * a + alpha * b,
        "checkerboard": checkerboard(a, b, spacing_mm[:2]),
        "magenta-green": magenta_green(a, b),
        "fixed": a,
        "moving": b,
    }
    ny, nx = a.shape
    extent = (0.0, nx * spacing_mm[0], ny * spacing_mm[1], 0.0)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(images[mode], cmap="gray", vmin=0, vmax=1, extent=extent)
    if contour is not None and contour[z].any():
        ax.contour(np.linspace(0, extent[1], nx), np.linspace(0, extent[2], ny), contour[z],
                   levels=[0.5], colors="yellow", linewidths=1.2)
    ax.set_title(f"{mode}, slice {z} (z = {z * spacing_mm[2]:.0f} mm from the first)")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    return fig


def slice_viewer(fixed: sitk.Image, moving: sitk.Image, contour: sitk.Image | None = None):
    """An offline ipywidgets + matplotlib viewer: slice slider, comparison mode, blend weight.

    `fixed`, `moving` (and `contour`) must share one grid (e.g. the CT grid after registration).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    a = sitk.GetArrayFromImage(fixed).astype(np.float32)
    b = sitk.GetArrayFromImage(moving).astype(np.float32)
    c = None if contour is None else sitk.GetArrayFromImage(contour) > 0
    spacing = tuple(float(s) for s in fixed.GetSpacing())
    middle = int(np.nonzero(c)[0].mean()) if c is not None and c.any() else a.shape[0] // 2
    z = widgets.IntSlider(value=middle, min=0, max=a.shape[0] - 1, description="slice")
    mode = widgets.Dropdown(options=["blend", "checkerboard", "magenta-green", "fixed", "moving"],
                            value="blend", description="view")
    alpha = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="MR weight")
    out = widgets.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            slice_view(a, b, c, z.value, mode.value, alpha.value, spacing)
            plt.show()

    for control in (z, mode, alpha):
        control.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([z, mode, alpha]), out])
