"""Open the built book in headless Chromium: every page loads and every image is present.

`python tests/tools/bookcheck.py _build/html [--screenshot PAGE OUT.png]`. Chromium is Debian's
(`/usr/bin/chromium`; `make browser` installs it), driven by Playwright without any download.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stsnb.core.errors import StsnbError

#: Flags for a root, offline, headless Chromium (no background connections to refuse).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass
class PageReport:
    """What the browser saw on one page."""

    page: str
    status_ok: bool
    title: str
    images: int
    broken_images: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status_ok and not self.broken_images


def _images_when_settled(page, attempts: int = 5) -> list[list]:
    """(src, loaded) of every image, after any redirect (e.g. index.html) has finished."""
    from playwright.sync_api import Error

    script = ("Array.from(document.images).map(i => [i.getAttribute('src'),"
              " i.complete && i.naturalWidth > 0])")
    for _ in range(attempts):
        try:
            page.wait_for_load_state("load")
            return page.evaluate(script)
        except Error:  # the page navigated (meta refresh) while being read
            page.wait_for_timeout(200)
    return page.evaluate(script)


def chromium_path() -> str:
    """Path of the Chromium executable, with a clear error when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise StsnbError("Chromium not found. Fix: run `make browser` (apt-get install chromium).")


def book_pages(html_dir: str | Path) -> list[Path]:
    """Every HTML page of a built book (Sphinx's static and source folders left out)."""
    root = Path(html_dir)
    return sorted(
        p for p in root.rglob("*.html") if not {"_static", "_sources"} & set(p.parts)
    )


def check_book(
    html_dir: str | Path, screenshot: tuple[str, Path] | None = None
) -> list[PageReport]:
    """Visit every page of the book; optionally screenshot one page (relative path) to a PNG."""
    from playwright.sync_api import sync_playwright

    root = Path(html_dir).resolve()
    if not (root / "index.html").exists():
        raise StsnbError(f"No built book in {root}: index.html is missing. Fix: run make book.")
    reports = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(),
                                             args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        for html in book_pages(root):
            errors.clear()
            response = page.goto(html.as_uri(), wait_until="load")
            images = _images_when_settled(page)
            reports.append(PageReport(
                page=html.relative_to(root).as_posix(),
                status_ok=response is None or response.ok,
                title=page.title(),
                images=len(images),
                broken_images=[src for src, ok in images if not ok],
                console_errors=list(errors),
            ))
            if screenshot and html.relative_to(root).as_posix() == screenshot[0]:
                Path(screenshot[1]).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot[1]), full_page=True)
        browser.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    """Check a built book; exit 1 when a page failed or an image is missing."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("html_dir")
    parser.add_argument("--screenshot", nargs=2, metavar=("PAGE", "PNG"))
    args = parser.parse_args(argv)
    shot = (args.screenshot[0], Path(args.screenshot[1])) if args.screenshot else None
    reports = check_book(args.html_dir, shot)
    for report in reports:
        state = "ok" if report.ok else "FAILED"
        print(f"{state:6} {report.page} ({report.images} images)"
              + (f" broken: {report.broken_images}" if report.broken_images else ""))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
