"""The project installs what it needs, and its files agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import yaml
from tools.nbcheck import notebook_problems

ROOT = Path(__file__).resolve().parent.parent


def _requirement_names(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", req.strip())
        assert match, req
        out[match.group(1).lower().replace("_", "-")] = match.group(3).strip()
    return out


def test_environment_yml_names_the_same_pinned_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = _requirement_names([p for p in pip_section if not p.startswith("-e")])
    assert conda_pins == _requirement_names(declared)
    assert all(spec.startswith("==") for spec in conda_pins.values()), "pin every package"
    assert "-e ." in pip_section


def test_torch_pair_is_the_one_the_makefile_installs():
    makefile = (ROOT / "Makefile").read_text()
    pins = _requirement_names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"])
    assert f"torch{pins['torch']}" in makefile and f"torchvision{pins['torchvision']}" in makefile
    import torch
    import torchvision

    assert torch.__version__.startswith(pins["torch"].lstrip("="))
    assert torchvision.__version__.startswith(pins["torchvision"].lstrip("="))


def test_itkwidgets_works_with_the_pinned_ngff_zarr():
    """The viewer's data path (image -> OME-Zarr multiscale) round-trips with our ngff-zarr pin."""
    from itkwidgets.integrations import _get_viewer_image
    from ngff_zarr import from_ngff_zarr

    rng = np.random.default_rng(0)
    volume = rng.random((20, 70, 70)).astype(np.float32)
    multiscales = from_ngff_zarr(_get_viewer_image(volume))
    np.testing.assert_array_equal(np.asarray(multiscales.images[0].data), volume)
    labels = (volume > 0.5).astype(np.uint8)
    restored = from_ngff_zarr(_get_viewer_image(labels, label=True)).images[0].data
    np.testing.assert_array_equal(np.asarray(restored), labels)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    for section in ("Cohort layout", "Profiles", "Data disclaimer", "papermill", "JupyterLab"):
        assert section in readme


def test_committed_notebooks_are_clean_and_parameterised():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        assert notebook_problems(path) == []


def test_notebook_check_catches_outputs_and_missing_parameters(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells = [nbformat.v4.new_code_cell("cohort_dir = 'a'\nseed = 0",
                                          metadata={"tags": ["parameters"]}), cell]
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    problems = "\n".join(notebook_problems(path))
    assert "has outputs" in problems
    assert "execution count" in problems
    assert "lacks 'work_dir'" in problems and "lacks 'profile'" in problems


def test_book_toc_lists_existing_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert (ROOT / f"{toc['root']}.md").exists()
    from stsnb.run.pages import CHAPTERS

    listed = []
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            stem = chapter["file"]
            if stem.startswith("book/generated/"):
                assert (ROOT / "notebooks" / f"{Path(stem).name}.ipynb").exists()
                listed.append(Path(stem).name)
            else:
                assert (ROOT / f"{stem}.md").exists()
            for section in chapter.get("sections", []):
                assert section["glob"] == "book/generated/04_training_*"
                listed.append("04_training")
    assert listed == list(CHAPTERS)
