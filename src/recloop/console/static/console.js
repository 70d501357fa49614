// recloop console: a few conveniences, nothing the pages need in order to work.
"use strict";
document.addEventListener("submit", function (event) {
  // One submission per click: slow actions (generation, gap analysis) are not sent twice.
  var form = event.target;
  if (form.dataset.sent === "1") {
    event.preventDefault();
    return;
  }
  form.dataset.sent = "1";
  var button = event.submitter;
  if (button && button.dataset.busy) {
    button.textContent = button.dataset.busy;
  }
  window.setTimeout(function () { form.dataset.sent = ""; }, 15000);
});
