// MathJax 3 for pymdownx.arithmatex (generic mode): typeset only what arithmatex marked as math.
// tex-chtml.js itself is copied into assets/mathjax/ at build time (docs/gen_pages.py), with its fonts,
// so the pages render math offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// Material for MkDocs swaps page content without a reload when instant navigation is on: typeset again.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
