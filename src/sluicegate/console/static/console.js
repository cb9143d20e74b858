// Progressive enhancement only: every page works without this file (forms post, links navigate).
"use strict";
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const field = document.getElementById(copy.dataset.copy);
    const note = document.getElementById(copy.getAttribute("aria-describedby"));
    const done = (text) => { if (note) note.textContent = text; };
    field.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(() => done("Copied."), () => done("Press Ctrl+C to copy."));
    } else {
      done(document.execCommand("copy") ? "Copied." : "Press Ctrl+C to copy.");
    }
    return;
  }
  const back = event.target.closest("[data-back]");
  if (back) {
    event.preventDefault();
    history.back();
  }
});
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-autosubmit]")) event.target.form.requestSubmit();
});
for (const back of document.querySelectorAll("[data-back]")) {
  if (history.length > 1) back.hidden = false;
}
