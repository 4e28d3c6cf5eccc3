// curate explore: a little plain JavaScript (no libraries, works offline).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // copy a uid to the clipboard
  document.body.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.copy");
    if (!b) return;
    const done = () => { b.textContent = "copied"; setTimeout(() => { b.textContent = "copy"; }, 1200); };
    if (navigator.clipboard) navigator.clipboard.writeText(b.dataset.copy).then(done, done);
  });
  // show the chosen image next to the upload form
  const file = document.querySelector("input[type=file][form=upload]");
  const preview = document.getElementById("preview");
  if (file && preview) {
    file.addEventListener("change", () => {
      const f = file.files && file.files[0];
      if (!f) { preview.hidden = true; return; }
      preview.src = URL.createObjectURL(f);
      preview.hidden = false;
    });
  }
  // a page restored from the back/forward cache gets its fields back
  window.addEventListener("pageshow", () => {
    for (const el of document.querySelectorAll("#query [disabled]")) {
      if (!el.title) el.disabled = false;
    }
  });
  // drop empty fields from the query string so links stay short
  const form = document.getElementById("query");
  if (form) {
    form.addEventListener("submit", () => {
      for (const el of form.querySelectorAll("input, select")) {
        if (!el.value || (el.name === "kept" && el.value === "any")) el.disabled = true;
      }
    });
  }
});
