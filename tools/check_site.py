"""Check the built website in a real browser (run by `make check-site`).

For the start page and every chapter listed in ``_toc.yml`` it opens the page
served from ``_build/html`` on 127.0.0.1 in headless Chromium and checks that

- the page loads with no console errors and no uncaught script errors;
- every math element was typeset by MathJax 3;
- every image loads (and a chapter shows at least one computed figure);
- no content image is scaled down by more than ``MAX_SHRINK`` in a 1280 px
  wide window (the page would shrink its text below a readable size);
- no cell output shows a progress bar or a folder of the machine that built
  the book (``OUTPUT_LEAKS``);
- the Colab launch link points to the chapter's ``.ipynb`` on the configured
  repository and branch, and that file exists in this checkout.

The page's MathJax comes from a CDN on the published site. This machine may
have no network, so the check answers those requests with MathJax 3 from the
npm registry (installed once into the cache); every other request that leaves
127.0.0.1 is blocked and reported. Chromium comes from Debian's packages and is
installed when missing. Screenshots of every page (its top, and its first
computed figure) go to ``_build/site-check``.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MATHJAX_CDN = "cdn.jsdelivr.net/npm/mathjax@3/"
MAX_SHRINK = 1.5
"""Most an image may be scaled down (natural width / shown width) at 1280 px."""
OUTPUT_LEAKS = {
    "a tqdm progress bar": re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it|s)/(s|it)\b|\|\s*\d+/\d+ \["),
    "a path of the build machine": re.compile(r"(?<![\w.])/(tmp|home|work|root|Users|content)/"),
    "the cache folder": re.compile(r"\.asdflow-cache|\.cache/asdflow"),
}
"""What a cell output on the website must not show, by name."""


def find_chromium() -> str:
    """Path of a Chromium binary, installing Debian's package if there is none."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() != 0:
        sys.exit(
            "check-site: Chromium is missing; install it with `sudo apt-get install chromium`."
        )
    print("check-site: installing Debian's chromium ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True)
    return shutil.which("chromium") or sys.exit("check-site: chromium did not install")


def local_mathjax() -> Path:
    """Folder of MathJax 3 (its ``es5`` build), installed from the npm registry once."""
    cache = Path(os.environ.get("ASDFLOW_CACHE") or Path.home() / ".cache" / "asdflow")
    prefix = cache / "site-check" / "mathjax"
    es5 = prefix / "node_modules" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").exists():
        print("check-site: installing MathJax 3 from npm ...", flush=True)
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                "mathjax@3",
            ],
            check=True,
        )
    return es5


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``folder`` on 127.0.0.1 in a background thread; return the server and its URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static file handler that does not log every request."""

    def log_message(self, format, *args):  # noqa: A002 - the base class names it so
        pass


def pages() -> list[str]:
    """Pages to check: the start page and every chapter of ``_toc.yml`` (without suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return ["index"] + [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]


def expected_colab(page: str) -> str:
    """The Colab URL that the launch button of ``page`` must have."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = urlparse(config["repository"]["url"]).path.strip("/")
    branch = config["repository"].get("branch", "main")
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{repo}/blob/{branch}/{page}.ipynb"


def check_page(browser, base: str, page: str, mathjax: Path, shots: Path) -> list[str]:
    """Open one page and return the problems found (empty when it is fine)."""
    problems: list[str] = []
    blocked: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def route(request_route):
        url = request_route.request.url
        host = urlparse(url).hostname
        if host == "127.0.0.1":
            return request_route.continue_()
        if MATHJAX_CDN in url:
            relative = url.split(MATHJAX_CDN, 1)[1].split("?")[0]
            return request_route.fulfill(path=str(mathjax.parent / relative))
        blocked.append(url)
        return request_route.abort()

    context.route("**/*", route)
    page_obj = context.new_page()
    console_errors: list[str] = []
    page_obj.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page_obj.on("pageerror", lambda e: console_errors.append(str(e)))
    page_obj.goto(f"{base}/{page}.html", wait_until="load")
    page_obj.wait_for_load_state("networkidle")
    final_page = urlparse(page_obj.url).path.lstrip("/").removesuffix(".html")

    n_math = page_obj.evaluate("document.querySelectorAll('.math').length")
    if n_math:
        typeset = page_obj.evaluate(
            "() => (window.MathJax && MathJax.startup) ? MathJax.startup.promise.then("
            "() => document.querySelectorAll('mjx-container').length) : -1"
        )
        if typeset < n_math:
            problems.append(f"{n_math} math elements but {typeset} typeset by MathJax")

    images = page_obj.evaluate(
        "Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth > 0])"
    )
    for src, ok in images:
        if not ok:
            problems.append(f"image does not load: {src}")
    shrunk = page_obj.evaluate(
        "Array.from(document.querySelectorAll('article img')).filter(i => i.naturalWidth > 0)"
        ".map(i => [i.getAttribute('src'), i.naturalWidth, i.getBoundingClientRect().width])"
    )
    for src, natural, shown in shrunk:
        if shown > 0 and natural / shown > MAX_SHRINK:
            problems.append(
                f"image {src} is {natural} px wide but shown {shown:.0f} px wide "
                f"({natural / shown:.1f}x smaller; at most {MAX_SHRINK}x): make the figure narrower"
            )
    outputs = page_obj.evaluate(
        "Array.from(document.querySelectorAll('div.cell_output')).map(o => o.innerText)"
    )
    for number, text in enumerate(outputs, start=1):
        for what, pattern in OUTPUT_LEAKS.items():
            match = pattern.search(text)
            if match:  # report the line of the first match, once per output
                start = text.rfind("\n", 0, match.start()) + 1
                line = text[start:].split("\n", 1)[0]
                problems.append(f"cell output {number} shows {what}: {line.strip()[:120]!r}")
                break
    if final_page.startswith("book/"):
        figures = page_obj.evaluate("document.querySelectorAll('.cell_output img').length")
        if figures == 0:
            problems.append("no computed figure on the page")
        hrefs = page_obj.evaluate(
            "Array.from(document.querySelectorAll('a[href*=\"colab.research.google.com\"]')).map(a => a.href)"
        )
        want = expected_colab(final_page)
        if want not in hrefs:
            problems.append(f"Colab link {hrefs} is not {want}")
        if not (ROOT / f"{final_page}.ipynb").exists():
            problems.append(
                f"the Colab link's notebook {final_page}.ipynb is not in the repository"
            )

    for message in console_errors:
        problems.append(f"console error: {message}")
    for url in blocked:
        problems.append(f"request leaves the site: {url}")
    shots.mkdir(parents=True, exist_ok=True)
    name = page.replace("/", "_")
    page_obj.screenshot(path=str(shots / f"{name}.png"), full_page=False)
    figure = page_obj.locator(".cell_output img").first
    if figure.count():  # the first computed figure as a reader sees it
        figure.scroll_into_view_if_needed()
        page_obj.screenshot(path=str(shots / f"{name}_figure.png"), full_page=False)
    context.close()
    return problems


def main(argv: list[str]) -> int:
    html = Path(argv[0] if argv else ROOT / "_build" / "html").resolve()
    if not (html / "index.html").exists():
        print(f"check-site: {html}/index.html not found: build the book first with `make book`.")
        return 2
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    mathjax = local_mathjax()
    server, base = serve(html)
    failures = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for page in pages():
                problems = check_page(browser, base, page, mathjax, html.parent / "site-check")
                status = "ok" if not problems else "FAILED"
                print(f"check-site: {page}: {status}")
                for problem in problems:
                    print(f"    {problem}")
                failures += bool(problems)
            browser.close()
    finally:
        server.shutdown()
    print(f"check-site: {len(pages()) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
