// leadpipe console: a little progressive enhancement. Every page works without this script
// (a running replay then reloads itself every two seconds).
(function () {
  "use strict";

  // A running replay's progress updates in place until it is done.
  function poll() {
    var live = document.querySelector("#progress[data-poll]");
    if (!live) {
      return;
    }
    fetch(live.getAttribute("data-poll"), { credentials: "same-origin" })
      .then(function (r) {
        return r.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").querySelector("#progress");
        if (next) {
          document.querySelector("#progress").replaceWith(next);
        }
        setTimeout(poll, 500);
      })
      .catch(function () {
        setTimeout(poll, 2000);
      });
  }
  setTimeout(poll, 500);

  // A form that starts work submits once; its button says the work is under way.
  document.querySelectorAll("form[data-once]").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("button").forEach(function (b) {
        b.disabled = true;
        b.textContent = b.getAttribute("data-busy") || "Working…";
      });
    });
  });
})();
