"""Check the built documentation site in a real browser.

    python scripts/docs_check.py [--site DIR] [--screenshots DIR]

Builds the site (``mkdocs build --strict``) unless ``--site`` names a built one, then:

1. every internal link and image of every page resolves to a file, and every ``#anchor`` to an element id
   of its page (parsed from the HTML);
2. the site is served on localhost and every page is opened in headless Chromium (Debian's ``chromium``;
   nothing is downloaded): any message the page writes to the console (a script error, a failed
   ``console.error``) fails the check;
3. screenshots of the main pages are written to ``--screenshots`` (default ``docs/screenshots``).

Prints the number of pages, links, anchors and console messages; exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
MAIN_PAGES = ("index.html", "tutorials/first-layer/index.html", "reference/core/index.html")
MAIN_PAGES += ("results/workloads/index.html",)
CONSOLE = re.compile(r'CONSOLE[^\]]*\] "(.*)", source: (\S+)')


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        for key in ("href", "src"):
            if values.get(key) and tag in ("a", "img", "link", "script"):
                self.links.append(values[key])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target(page: Path, link: str, site: Path) -> tuple[Path, str] | None:
    """The file and anchor an internal link points to; None for external links."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:")):
        return None
    if not parts.path:
        path = page
    elif parts.path.startswith("/"):  # root-relative (the 404 page's links)
        path = (site / unquote(parts.path).lstrip("/")).resolve()
    else:
        path = (page.parent / unquote(parts.path)).resolve()
    if path.is_dir() or not path.suffix:
        path = path / "index.html"
    return path, parts.fragment


def check_links(site: Path) -> tuple[int, int, int, list[str]]:
    """Pages, internal links and anchors checked, and the problems found."""
    pages = sorted(site.rglob("*.html"))
    parsed = {p.resolve(): _parse(p) for p in pages}
    problems, links, anchors = [], 0, 0
    for page, content in parsed.items():
        for link in content.links:
            target = _target(page, link, site)
            if target is None:
                continue
            path, anchor = target
            links += 1
            if not path.exists():
                problems.append(f"{page.relative_to(site.resolve())}: {link} -> no file")
            elif anchor and path.suffix == ".html":
                anchors += 1
                ids = parsed[path].ids if path in parsed else _parse(path).ids
                if anchor not in ids:
                    problems.append(f"{page.relative_to(site.resolve())}: {link} -> no element #{anchor}")
    return len(pages), links, anchors, problems


def _serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def open_in_browser(browser: str, url: str, screenshot: Path | None) -> list[str]:
    """Console messages of one page loaded in headless Chromium (and its screenshot)."""
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    command += ["--virtual-time-budget=1500", "--window-size=1280,1000"]
    command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([*command, url], capture_output=True, text=True, timeout=120)
    return [f"{m.group(2)}: {m.group(1)}" for m in CONSOLE.finditer(result.stderr)]


def build(site: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built site (default: build one into a temporary folder)")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    site = args.site or Path(tempfile.mkdtemp()) / "site"
    if args.site is None:
        build(site)
    pages, links, anchors, problems = check_links(site)
    server, port = _serve(site)
    args.screenshots.mkdir(parents=True, exist_ok=True)
    console: list[str] = []

    def visit(page: Path) -> list[str]:
        relative = page.relative_to(site).as_posix()
        name = (relative.removesuffix("index.html").strip("/") or "home").replace("/", "-")
        shot = args.screenshots / f"{name}.png" if relative in MAIN_PAGES else None
        return open_in_browser(browser, f"http://127.0.0.1:{port}/{relative}", shot)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # each page waits on its own browser
            for messages in pool.map(visit, sorted(site.rglob("*.html"))):
                console += messages
    finally:
        server.shutdown()
    for line in problems + console:
        print(line)
    print(
        f"{pages} pages, {links} internal links, {anchors} anchors, {len(problems)} broken, "
        f"{len(console)} console messages, {len(MAIN_PAGES)} screenshots in {args.screenshots}"
    )
    return 1 if problems or console else 0


if __name__ == "__main__":
    sys.exit(main())
