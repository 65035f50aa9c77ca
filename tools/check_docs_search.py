"""Check that the built site loads nothing from other servers and that its search works, in headless Chromium.

    python tools/check_docs_search.py SITE_DIR [--query dequantize]

1. No page of SITE_DIR has a <script>, <link> or <img> that points at another server.
2. Served over HTTP from this machine (as `mkdocs serve` or `python -m http.server -d SITE_DIR` would),
   a search for QUERY returns results. Material runs search in a web worker, which headless Chromium's
   --dump-dom does not wait for, so a small harness page, served beside the site, opens
   `index.html?q=QUERY` in a same-origin iframe, keeps one request pending (which stops Chromium's
   virtual clock) until the search has answered or 30 s have passed, and copies the answer into its own DOM.

Exits 1 when either fails. Needs only the standard library and a Chromium (as tools/check_docs_layout.py).
"""
from __future__ import annotations

import argparse
import functools
import html
import re
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_docs_layout import _chromium, find_chromium  # noqa: E402

REMOTE = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]+)"', re.I)
RESULT = re.compile(r'<pre id="search-check">(.*?)</pre>', re.S)

HARNESS = """<!doctype html><html><body><pre id="search-check">no answer</pre>
<iframe id="site" src="index.html?q={query}" style="width:1200px;height:800px"></iframe>
<script>
const out = document.getElementById("search-check");
function answer() {{
  const doc = document.getElementById("site").contentDocument;
  const meta = doc && doc.querySelector(".md-search-result__meta");
  const items = doc ? doc.querySelectorAll(".md-search-result__item").length : 0;
  return {{meta: meta ? meta.textContent.trim() : "", items}};
}}
// /__hold answers after a moment; while it is pending Chromium's virtual time stands still
async function poll() {{
  for (let i = 0; i < 60; i++) {{
    await fetch("__hold?" + i, {{cache: "no-store"}});
    const a = answer();
    if (a.items > 0 || /no matching/i.test(a.meta)) {{ out.textContent = JSON.stringify(a); return; }}
    out.textContent = JSON.stringify(a);
  }}
}}
poll();
</script></body></html>"""


def remote_references(site: Path) -> list[str]:
    """'page: url' for every script, stylesheet, image or frame that a page loads from another server."""
    found = []
    for page in sorted(site.rglob("*.html")):
        for url in REMOTE.findall(page.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{page.relative_to(site).as_posix()}: {url}")
    return found


def _handler(site: Path, query: str):
    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.startswith("/__hold"):
                time.sleep(0.5)
                return self._send(b"ok", "text/plain")
            if self.path.startswith("/__check.html"):
                return self._send(HARNESS.format(query=html.escape(query)).encode(), "text/html")
            return super().do_GET()

        def _send(self, body: bytes, kind: str):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return functools.partial(Handler, directory=str(site))


def search_answer(chromium: str, site: Path, query: str) -> dict:
    """{"meta": Material's result line, "items": how many results} for a search of the served site."""
    import json

    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site, query))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/__check.html"
        proc = _chromium(chromium, ["--window-size=1400,900", "--virtual-time-budget=60000", "--dump-dom", url],
                         timeout=120)
    finally:
        server.shutdown()
    m = RESULT.search(proc.stdout)
    try:
        return json.loads(html.unescape(m.group(1))) if m else {"meta": "no harness output", "items": 0}
    except ValueError:
        return {"meta": html.unescape(m.group(1)), "items": 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="a built site (mkdocs build --site-dir SITE)")
    ap.add_argument("--query", default="dequantize", help="what to search for (default %(default)s)")
    ap.add_argument("--chromium", help="the browser to run (default: chromium on the PATH)")
    args = ap.parse_args(argv)

    failed = 0
    remote = remote_references(args.site)
    for line in remote:
        print(f"FAIL loads from another server: {line}")
    failed += bool(remote)
    if not remote:
        print(f"ok   no page loads anything from another server ({len(list(args.site.rglob('*.html')))} pages)")

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("check_docs_search: no Chromium found (apt-get install chromium, or pass --chromium)", file=sys.stderr)
        return 2
    answer = search_answer(chromium, args.site, args.query)
    ok = answer.get("items", 0) > 0
    print(f"{'ok  ' if ok else 'FAIL'} search over HTTP for {args.query!r}: {answer.get('meta')!r}, "
          f"{answer.get('items', 0)} results shown")
    failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
