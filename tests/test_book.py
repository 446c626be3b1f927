"""One smoke run of the suite: the chapters executed by papermill, the book built, then checked."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from cohort_fixtures import IDENTIFYING_COLUMNS, identifying_values

from stsnb.core.config import SMOKE
from stsnb.curation.stage import read_cohort_table, run_curation
from stsnb.run.pages import CHAPTERS, REPO_ROOT

pytestmark = pytest.mark.smoke


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def test_every_chapter_ran_without_errors(smoke_book):
    executed = sorted(smoke_book["executed"].glob("0*.ipynb"))
    names = {p.stem for p in executed}
    for name in CHAPTERS:
        if name == "04_training":  # one page per combination (10) and control (slice, random)
            pages = {n for n in names if n.startswith("04_training_combo")}
            assert len(pages) == 12 and {"04_training_combo01_slice",
                                         "04_training_combo01_random"} <= pages
        else:
            assert name in names
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert errors == []
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        injected = [t for t in tags if "injected-parameters" in t]
        assert injected and all("remove-cell" in t for t in injected)


def test_curation_chapter_shows_the_cohort(smoke_book):
    smoke_cohort = smoke_book["cohort_dir"]
    cohort = read_cohort_table(smoke_book["work_dir"])
    clinical = pd.read_csv(smoke_cohort / "clinical.csv", dtype={"patient_id": str})
    assert list(cohort["patient_id"]) == list(clinical["patient_id"])
    assert cohort["included"].sum() == len(cohort) - 1  # 8 screened, one incomplete
    assert (cohort.loc[~cohort["included"], "exclusion_reason"] != "").all()
    page = (smoke_book["html"] / "book" / "generated" / "01_data_curation.html").read_text()
    for text in ("Inclusion criteria", "Which images each patient has", "Example patients"):
        assert text in page
    parser = _Images()
    parser.feed(page)
    assert len(parser.sources) >= 5  # flow, availability, geometry, balance, example patients
    for src in parser.sources:
        assert (smoke_book["html"] / "book" / "generated" / src).resolve().exists(), src


def test_first_page_shows_manifest_timings_and_disclaimer(smoke_book):
    index = smoke_book["index"].read_text()
    intro = (smoke_book["html"] / "book" / "intro.html").read_text() if (
        smoke_book["html"] / "book" / "intro.html").exists() else index
    for text in ("The default cohort is synthetic", "Run manifest", "Time of each stage",
                 "smoke", "chapter 01_data_curation", "curation"):
        assert text in intro, text
    manifest = json.loads((smoke_book["work_dir"] / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["seed"] == 3
    assert len(manifest["cohort_sha256"]) == 64 and "curation" in manifest["stages"]
    assert manifest["packages"]["torch"].startswith("2.14.1")


def _machine_paths(smoke_book) -> set[str]:
    forbidden = {str(smoke_book["work_dir"]), str(smoke_book["cohort_dir"]), str(REPO_ROOT),
                 str(Path.home()), str(smoke_book["work_dir"].parent)}
    forbidden.discard("/")
    return forbidden


def test_built_html_holds_no_absolute_path(smoke_book):
    forbidden = _machine_paths(smoke_book)
    for page in smoke_book["html"].rglob("*.html"):
        text = page.read_text(errors="replace")
        for path in forbidden:
            assert path not in text, f"{path} in {page.name}"


def test_executed_chapters_hold_no_absolute_path(smoke_book):
    """Cells, outputs and papermill's metadata of every executed notebook: display paths only."""
    forbidden = _machine_paths(smoke_book)
    executed = sorted(smoke_book["executed"].glob("*.ipynb"))
    assert len(executed) >= 17
    for path in executed:
        text = path.read_text(encoding="utf-8")
        for root in forbidden:
            assert root not in text, f"{root} in {path.name}"
        nb = nbformat.read(path, as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert 'work_dir = "smoke-work"' in injected.source, injected.source


def _without_images(node: object) -> object:
    """A notebook's JSON without the base64 of its figures (random text)."""
    if isinstance(node, dict):
        return {k: _without_images(v) for k, v in node.items() if not k.startswith("image/")}
    if isinstance(node, list):
        return [_without_images(v) for v in node]
    return node


def _text_of(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix == ".ipynb":
        return json.dumps(_without_images(json.loads(text)))
    return text


def test_identifying_clinical_columns_reach_neither_the_book_nor_work_dir(smoke_book):
    """clinical.csv has a name, a birth date and an MRN per patient: no file of work_dir (stage
    outputs, executed notebooks, the HTML book) holds one of them, nor their column names."""
    clinical = pd.read_csv(smoke_book["cohort_dir"] / "clinical.csv", dtype=str)
    assert set(IDENTIFYING_COLUMNS) <= set(clinical.columns)
    values = [identifying_values(pid) for pid in clinical["patient_id"]]
    secrets = [v for row in values for v in row.values()]
    assert all(v in set(clinical[c]) for row in values for c, v in row.items())
    work_dir = smoke_book["work_dir"]
    files = [p for p in work_dir.rglob("*") if p.is_file()]
    assert len(files) > 50 and work_dir / "cohort.csv" in files
    for path in files:
        if path.suffix in (".npy", ".pt", ".nii", ".gz", ".h5", ".png", ".woff", ".woff2"):
            continue  # arrays and images: no text
        rel = path.relative_to(work_dir)
        static = rel.parts[0] == "jupyter_book" and "generated" not in rel.parts
        text = _text_of(path)
        for secret in secrets if static else (*secrets, *IDENTIFYING_COLUMNS):
            assert secret not in text, f"{secret!r} in {rel}"  # static pages may name columns
    cohort = pd.read_csv(smoke_book["work_dir"] / "cohort.csv")
    assert {"age", "sex", "histology", "grade", "site"} <= set(cohort.columns)


def test_curation_is_reused_and_redone_only_when_inputs_change(smoke_book):
    work_dir, smoke_cohort = smoke_book["work_dir"], smoke_book["cohort_dir"]
    again = run_curation(smoke_cohort, work_dir, SMOKE, seed=3, progress=False)
    assert again.reused
    changed = run_curation(smoke_cohort, work_dir, SMOKE, seed=3, min_followup_months=1e6,
                           progress=False)
    assert not changed.reused
    negatives = changed.cohort[changed.cohort["label"] == 0]
    assert not negatives["included"].any()
    restored = run_curation(smoke_cohort, work_dir, SMOKE, seed=3, progress=False)
    assert not restored.reused and restored.cohort["included"].sum() == len(restored.cohort) - 1


def test_book_opens_in_chromium_with_every_image(smoke_book):
    from tools.bookcheck import check_book

    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    shot = artifacts / "curation-page.png"
    reports = check_book(smoke_book["html"],
                         ("book/generated/01_data_curation.html", shot))
    pages = {r.page for r in reports}
    assert {"index.html", "book/intro.html", "book/generated/01_data_curation.html"} <= pages
    assert all(r.ok for r in reports), [r for r in reports if not r.ok]
    curation = next(r for r in reports if r.page.endswith("01_data_curation.html"))
    assert curation.images >= 5 and "Data curation" in curation.title
    assert shot.exists() and shot.stat().st_size > 10_000


def test_real_cohort_appendix_page(smoke_book):
    """The appendix imports the TCIA sample: its tables, licence and figures are on the page."""
    page = (smoke_book["html"] / "book" / "generated" / "07_real_cohort.html").read_text()
    for text in ("Imported masks against an independent conversion", "CC BY 3.0",
                 "bone", "Near-identity check", "import-dicom", "9 of 9 masks agree"):
        assert text in page, text
    parser = _Images()
    parser.feed(page)
    assert len(parser.sources) >= 10  # availability, geometry, 3 patients, overlays, slices
    for src in parser.sources:
        assert (smoke_book["html"] / "book" / "generated" / src).resolve().exists(), src
    assert (smoke_book["work_dir"] / "real_cohort" / "work" / "registration" / "qa.csv").exists()


def test_radiomics_chapter_shows_its_aucs_and_declared_comparisons(smoke_book):
    """Chapter 05b ran clean on the smoke cohort: the AUC table of every set and model beside
    the networks, the DeLong rows, the decision curve; its rows in radiomics/significance.csv
    (chapter 05's significance.csv keeps combination numbers only)."""
    path = smoke_book["executed"] / "05b_radiomics.ipynb"
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert [o for o in outputs if o.output_type == "error"] == []
    texts = "\n".join(o.get("data", {}).get("text/plain", "") + o.get("data", {}).get(
        "text/markdown", "") for o in outputs)
    for text in ("radiomics-all-lr", "radiomics-ct-rf", "patient_auc", "ci_low", "FC head, "
                 "combination", "linear head, combination", "GTV volume alone", "mirp",
                 "fixed bin width", "Best radiomics model", "DeLong"):
        assert text in texts, text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the decision curve
    work = smoke_book["work_dir"]
    rows = pd.read_csv(work / "radiomics" / "significance.csv")
    assert (rows["head"] == "radiomics-lr").all() and "all" in set(rows["combo"])
    assert (rows["n_permutations"] == SMOKE.radiomics.lr_permutations).all()
    assert not pd.read_csv(work / "significance.csv")["head"].str.startswith("radiomics").any()
    timings = pd.read_csv(work / "timings.csv")
    assert "chapter 05b_radiomics" in set(timings["stage"])
    page = (smoke_book["html"] / "book" / "generated" / "05b_radiomics.html").read_text()
    assert "Radiomics baseline" in page and "Declared comparisons" in page


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.checklist: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("class") == "checklist-link":
            self.checklist.append(attrs["href"])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_reporting_page_answers_from_the_run_and_every_link_resolves(smoke_book):
    """The reporting page lists TRIPOD+AI and CLAIM 2024 items answered from the work dir, and
    every item's link opens an existing page of the built book at an existing section."""
    page = smoke_book["html"] / "book" / "generated" / "09_reporting.html"
    links = _parse(page).checklist
    from stsnb.reporting.page import ITEMS

    assert len(links) == len(ITEMS)
    for href in set(links):
        target, _, anchor = href.partition("#")
        path = (page.parent / target).resolve()
        assert path.exists(), href
        assert anchor in _parse(path).ids, href
    text = page.read_text(encoding="utf-8")
    cohort = read_cohort_table(smoke_book["work_dir"])
    included = int(cohort["included"].sum())
    assert f"{included} of {len(cohort)} screened patients included" in text
    for words in ("TRIPOD+AI", "CLAIM 2024", "BMJ 2024;385:e078378", "e240300",
                  "Level of disjointness", "Failure analysis", "Not applicable"):
        assert words in text, words


def test_gradcam_chapter_shows_its_failure_analysis(smoke_book):
    """Chapter 06 writes its shares and failure tables and shows the failures' images."""
    work = smoke_book["work_dir"]
    shares = pd.read_csv(work / "gradcam" / "shares.csv")
    assert {"share_gtv", "chance_gtv", "patient_id"} <= set(shares.columns)
    worst = pd.read_csv(work / "gradcam" / "failures.csv")
    assert (worst["outcome"].isin(["FP", "FN"])).all()
    assert worst["error"].is_monotonic_decreasing
    assert (worst["error"] > 0.5).all()
    page = (smoke_book["html"] / "book" / "generated" / "06_gradcam.html").read_text()
    assert 'id="failure-analysis"' in page
