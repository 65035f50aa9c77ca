// Layout self-check for the "Read the model" pages, used by tools/check_docs_layout.py.
// It does nothing unless the URL carries the marker `#layout-check` or `?layout-check`. Then, once
// fonts and MathJax are done, it measures the page as laid out and writes a JSON report into the DOM
// (<script type="application/json" id="layout-check-report">), which `chromium --dump-dom` prints:
//   * every code block (<pre>, <pre><code>): scrollWidth > clientWidth means a line is clipped;
//   * every section of every definition (.lp > .lp-sec): the code cell must start right of the prose
//     cell's right edge, and both must start at the same height;
//   * the code cells of one definition must form one block: no gap between them, one left edge and
//     one width, one background, no rounded corners between them;
//   * a code line of at most 120 characters must not wrap (longer ones may: they are counted);
//   * the page must not scroll sideways, and every piece of math must have been typeset.
(function () {
  "use strict";
  // `?layout-shot=ANCHOR`: for a screenshot (headless Chromium photographs a scrolled page blank), shift
  // the page up so that the heading ANCHOR sits under the header, without scrolling.
  const shot = new URLSearchParams(location.search).get("layout-shot");
  if (shot) {
    window.addEventListener("load", () => {
      const target = document.getElementById(shot), container = document.querySelector(".md-container");
      const header = document.querySelector(".md-header");
      if (!target || !container) return;
      const y = target.getBoundingClientRect().top - (header ? header.getBoundingClientRect().bottom : 0) - 16;
      container.style.transform = `translateY(${-Math.max(0, y)}px)`;
    });
    return;
  }
  if (!/(^|[?#&])layout-check\b/.test(location.search.slice(1) + "&" + location.hash.slice(1))) return;

  const TOLERANCE = 1;  // px
  const MAX_UNWRAPPED = 120;  // characters: the package's line length

  function box(el) {
    const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top + window.scrollY, bottom: r.bottom + window.scrollY,
            width: r.width, height: r.height};
  }
  const px = (x) => Math.round(x * 10) / 10;

  function measure() {
    const problems = [];
    const report = {page: location.pathname, viewport: [window.innerWidth, window.innerHeight],
                    definitions: 0, sections: 0, lines: 0, wrapped_long_lines: [], code_blocks: 0,
                    math: 0, problems};
    const fail = (what, where) => problems.push(Object.assign({what}, where));

    document.querySelectorAll(".md-content .lp").forEach((lp) => {
      report.definitions++;
      const def = lp.dataset.def || "?";
      const secs = Array.from(lp.children).filter((c) => c.classList.contains("lp-sec"));
      if (!secs.length) fail("definition has no sections", {def});
      let prev = null, firstBg = null;
      secs.forEach((sec, i) => {
        report.sections++;
        const prose = sec.querySelector(":scope > .lp-prose");
        const code = sec.querySelector(":scope > .lp-code");
        const lines = code ? Array.from(code.querySelectorAll(".lp-l")) : [];
        const line = lines.length ? lines[0].dataset.ln : null;
        if (!prose || !code) { fail("section without a prose cell and a code cell", {def, line}); return; }
        const p = box(prose), c = box(code), cs = getComputedStyle(code);
        if (c.left < p.right - TOLERANCE)
          fail(`code cell (left ${px(c.left)} px) is not right of its prose (right ${px(p.right)} px)`, {def, line});
        if (Math.abs(c.top - p.top) > TOLERANCE)
          fail(`prose and code tops differ by ${px(c.top - p.top)} px`, {def, line});
        if (c.right > document.documentElement.clientWidth + TOLERANCE)
          fail(`code cell ends at ${px(c.right)} px, past the window (${document.documentElement.clientWidth} px)`,
               {def, line});
        if (firstBg === null) firstBg = cs.backgroundColor;
        else if (cs.backgroundColor !== firstBg)
          fail(`code background ${cs.backgroundColor} differs from the first section's ${firstBg}`, {def, line});
        if (prev) {
          if (Math.abs(c.top - prev.box.bottom) > TOLERANCE)
            fail(`${px(c.top - prev.box.bottom)} px between this code cell and the one above`, {def, line});
          if (Math.abs(c.left - prev.box.left) > TOLERANCE || Math.abs(c.width - prev.box.width) > TOLERANCE)
            fail("code cells of one definition are not one column (left edge or width differ)", {def, line});
          const inner = [prev.style.borderBottomLeftRadius, prev.style.borderBottomRightRadius,
                         cs.borderTopLeftRadius, cs.borderTopRightRadius];
          if (inner.some((r) => parseFloat(r) > 0))
            fail("rounded corners between two code cells of one definition", {def, line});
        }
        prev = {box: c, style: cs};
        lines.forEach((l) => {
          report.lines++;
          const text = l.textContent.replace(/\n$/, "");
          const lh = parseFloat(getComputedStyle(l).lineHeight);
          const rows = Math.round(l.getBoundingClientRect().height / lh);
          if (rows > 1) {
            if (Array.from(text).length <= MAX_UNWRAPPED)
              fail(`a ${Array.from(text).length}-character line wraps onto ${rows} rows`, {def, line: l.dataset.ln});
            else report.wrapped_long_lines.push({def, line: l.dataset.ln, chars: Array.from(text).length, rows});
          }
        });
      });
    });

    document.querySelectorAll(".md-content pre, .md-content pre > code").forEach((el) => {
      if (el.tagName === "PRE") report.code_blocks++;
      if (el.scrollWidth > el.clientWidth + TOLERANCE) {
        const lp = el.closest(".lp"), l = el.querySelector(".lp-l");
        fail(`code block clipped: scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}`,
             {def: lp ? lp.dataset.def : null, line: l ? l.dataset.ln : null,
              text: el.textContent.trim().split("\n")[0].slice(0, 80)});
      }
    });

    const root = document.documentElement;
    if (root.scrollWidth > root.clientWidth + TOLERANCE)
      fail(`the page scrolls sideways: scrollWidth ${root.scrollWidth} > clientWidth ${root.clientWidth}`, {});

    document.querySelectorAll(".md-content .arithmatex").forEach((m) => {
      report.math++;
      if (!m.querySelector("mjx-container")) {
        const lp = m.closest(".lp");
        fail("math not typeset by MathJax", {def: lp ? lp.dataset.def : null, text: m.textContent.slice(0, 80)});
      }
    });

    const out = document.createElement("script");
    out.type = "application/json";
    out.id = "layout-check-report";
    out.textContent = JSON.stringify(report);
    document.body.appendChild(out);
  }

  function whenReady() {
    const waits = [document.fonts ? document.fonts.ready : Promise.resolve()];
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) waits.push(MathJax.startup.promise);
    Promise.all(waits).then(() => new Promise((r) => setTimeout(r, 50))).then(measure, (e) => {
      const out = document.createElement("script");
      out.type = "application/json";
      out.id = "layout-check-report";
      out.textContent = JSON.stringify({page: location.pathname, problems: [{what: "check failed: " + e}]});
      document.body.appendChild(out);
    });
  }
  if (document.readyState === "complete") whenReady();
  else window.addEventListener("load", whenReady);
})();
