"""Check the side-by-side layout of the built "Read the model" pages in headless Chromium.

    python tools/check_docs_layout.py SITE_DIR [--screenshot OUT.png] [--screenshot-page read/llama.html]

Opens every SITE_DIR/read/*.html at a 1400x900 window with the marker `#layout-check`, which wakes up
docs/javascripts/layout-check.js (shipped with the site, inert otherwise). That script measures the
page as the browser laid it out and writes a JSON report into the DOM; `chromium --dump-dom` prints it:

* no code block is clipped (scrollWidth > clientWidth), and the page does not scroll sideways;
* in every section of every definition the code cell starts right of its prose cell, tops level;
* the code cells of a definition form one block: no gap, one left edge and width, one background,
  no rounded corners between them;
* no code line of at most 120 characters wraps (longer lines may; they are listed);
* every piece of math was typeset by MathJax.

Exits 1, naming the page, the definition and the line, when any of that fails, or when a page gives
no report at all. Needs only the standard library and a Chromium (`chromium`, `chromium-browser`,
`google-chrome`, or --chromium PATH).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WINDOW = "1400,900"
REPORT = re.compile(r'<script type="application/json" id="layout-check-report">(.*?)</script>', re.S)


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if shutil.which(explicit) or Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _chromium(chromium: str, args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="layout-check-") as profile:
        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"})


def check_page(chromium: str, page: Path, window: str = WINDOW) -> dict:
    """The report layout-check.js wrote for one page, or a report with one problem saying why there is none."""
    url = page.resolve().as_uri() + "#layout-check"
    try:
        proc = _chromium(chromium, [f"--window-size={window}", "--virtual-time-budget=10000", "--dump-dom", url])
    except subprocess.TimeoutExpired:
        return {"page": str(page), "problems": [{"what": "Chromium timed out"}]}
    m = REPORT.search(proc.stdout)
    if not m:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"page": str(page), "problems": [{"what": "no layout report in the page (is "
                                                 "javascripts/layout-check.js in mkdocs.yml's extra_javascript?) "
                                                 + " | ".join(tail)}]}
    return json.loads(html.unescape(m.group(1)))


def screenshot(chromium: str, page: Path, out: Path, window: str = WINDOW) -> None:
    """A PNG of `page` (a path, optionally with #anchor) at the given window, made smaller with a palette."""
    path, _, anchor = str(page).partition("#")
    url = Path(path).resolve().as_uri() + (f"?layout-shot={anchor}" if anchor else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = _chromium(chromium, [f"--window-size={window}", "--virtual-time-budget=10000",
                                f"--screenshot={out.resolve()}", url])
    if not out.is_file():
        raise SystemExit(f"screenshot failed: {proc.stderr.strip()[-500:]}")
    try:
        from PIL import Image

        Image.open(out).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    except ImportError:
        pass


def describe(problem: dict) -> str:
    where = []
    if problem.get("def"):
        where.append(problem["def"])
    if problem.get("line"):
        where.append(f"line {problem['line']}")
    text = f" ({problem['text']!r})" if problem.get("text") else ""
    return (", ".join(where) + ": " if where else "") + problem["what"] + text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="a built site (mkdocs build --site-dir SITE)")
    ap.add_argument("--chromium", help="the browser to run (default: chromium on the PATH)")
    ap.add_argument("--window", default=WINDOW, help="window size, W,H (default %(default)s)")
    ap.add_argument("--screenshot", type=Path, help="also save a PNG of one chapter here")
    ap.add_argument("--screenshot-page", default="read/llama.html#tinyllama_ref-llama-rms_norm",
                    help="the chapter to photograph, relative to SITE, optionally with #anchor (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=4, help="browsers at once (default %(default)s)")
    args = ap.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("check_docs_layout: no Chromium found (apt-get install chromium, or pass --chromium)", file=sys.stderr)
        return 2
    pages = sorted((args.site / "read").glob("*.html"))
    if not pages:
        print(f"check_docs_layout: no read/*.html under {args.site}: build the site first", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = list(pool.map(lambda p: check_page(chromium, p, args.window), pages))

    failed = 0
    for page, report in zip(pages, reports):
        name = page.relative_to(args.site).as_posix()
        problems = report.get("problems", [])
        long_lines = report.get("wrapped_long_lines", [])
        status = "FAIL" if problems else "ok"
        print(f"{status:4} {name}: {report.get('definitions', 0)} definitions, {report.get('sections', 0)} sections, "
              f"{report.get('lines', 0)} code lines, {report.get('code_blocks', 0)} code blocks, "
              f"{report.get('math', 0)} math, {len(long_lines)} long lines wrapped")
        for line in long_lines:
            print(f"       wraps (allowed, > 120 characters): {line['def']}, line {line['line']}: "
                  f"{line['chars']} characters on {line['rows']} rows")
        for problem in problems:
            print(f"       {name}: {describe(problem)}")
        failed += bool(problems)
    if args.screenshot:
        screenshot(chromium, args.site / args.screenshot_page, args.screenshot, args.window)
        print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size // 1024} KiB)")
    if failed:
        print(f"check_docs_layout: {failed} of {len(pages)} pages break the layout at a {args.window} window")
        return 1
    print(f"check_docs_layout: {len(pages)} pages laid out side by side, nothing clipped, at a {args.window} window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
