"""Where the radiomics environment is (``.venv-radiomics``) and which library versions it holds.

``make env`` creates ``.venv-radiomics/`` beside ``.venv/`` from ``radiomics-requirements.txt``.
``STSNB_RADIOMICS_PYTHON`` names another interpreter that has MIRP (e.g. for a package installed
outside the repository).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

from stsnb.core.errors import StsnbError

ROOT = Path(__file__).resolve().parents[2]
RADIOMICS_VENV = ROOT / ".venv-radiomics"
PYTHON_ENV = "STSNB_RADIOMICS_PYTHON"
WORKER = Path(__file__).resolve().with_name("worker.py")
#: The distributions whose versions key the saved features (the library and what it computes
#: with); a change of any recomputes every patient.
LIBRARIES = ("mirp", "numpy", "scipy", "pandas", "scikit-image", "itk-core", "itk-io")


def radiomics_python() -> Path:
    """The interpreter the worker runs with: ``$STSNB_RADIOMICS_PYTHON`` or
    ``<repo>/.venv-radiomics/bin/python``."""
    override = os.environ.get(PYTHON_ENV, "").strip()
    return Path(override) if override else RADIOMICS_VENV / "bin" / "python"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _versions_from_site_packages(python: Path) -> dict[str, str] | None:
    """The versions read from the environment's site-packages (no subprocess); None if absent."""
    venv = python.parent.parent
    sites = sorted(venv.glob("lib/python3*/site-packages"))
    if not sites:
        return None
    found = {_normalise(d.metadata["Name"]): d.version
             for d in importlib.metadata.distributions(path=[str(s) for s in sites])}
    return {name: found[name] for name in LIBRARIES if name in found}


def _versions_from_interpreter(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    result = subprocess.run([str(python), "-I", "-c", code, *LIBRARIES], capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise StsnbError(f"the radiomics interpreter {python} does not run: "
                         f"{result.stderr.strip()[-500:]} Fix: run `make env`, or point "
                         f"{PYTHON_ENV} at a Python with MIRP.")
    return json.loads(result.stdout)


def library_versions(python: Path | None = None) -> dict[str, str]:
    """Versions of MIRP and the packages it computes with, in the radiomics environment.

    StsnbError naming the environment and the fix (``make env``) when it is missing or has no
    MIRP.
    """
    python = python or radiomics_python()
    if not python.exists():
        where = (f"{PYTHON_ENV}={python}" if os.environ.get(PYTHON_ENV, "").strip()
                 else f"the radiomics environment {RADIOMICS_VENV}")
        raise StsnbError(
            f"{where} does not exist ({python} is missing): the radiomics features are "
            "computed there, with MIRP, apart from the main environment. Fix: run `make env`, "
            "which creates .venv-radiomics from radiomics-requirements.txt.")
    versions = _versions_from_site_packages(python)
    if versions is None or "mirp" not in versions:
        versions = _versions_from_interpreter(python)
    if "mirp" not in versions:
        raise StsnbError(
            f"the radiomics environment of {python} has no MIRP installed (an interrupted "
            "install?). Fix: run `make env` (delete .venv-radiomics first if it persists).")
    return versions
