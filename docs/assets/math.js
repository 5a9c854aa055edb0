// Typesets the math that pymdownx.arithmatex (generic mode) leaves in the page: \( … \) in
// span.arithmatex, \[ … \] in div.arithmatex. KaTeX is vendored under assets/katex, so the
// site needs no network.
function typesetMath(root) {
  root.querySelectorAll(".arithmatex").forEach(function (element) {
    var display = element.tagName === "DIV";
    var tex = element.textContent.trim();
    tex = tex.replace(/^\\[([]/, "").replace(/\\[)\]]$/, "");
    katex.render(tex, element, { displayMode: display, throwOnError: false });
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(function () { typesetMath(document); });  // Material's page-load signal
} else {
  document.addEventListener("DOMContentLoaded", function () { typesetMath(document); });
}
