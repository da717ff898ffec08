// Sign in with a code (device.html): ask relay whether the provider has the user's answer yet,
// no faster than relay says the provider allows, and go on to the user's page once it has.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var panel = document.getElementById("device");
  var form = document.getElementById("device-form");
  var status = document.getElementById("device-status");
  if (!panel || !form || !status || !window.fetch) { return; }

  function later(seconds) {
    window.setTimeout(ask, Math.max(Number(seconds) || 1, 1) * 1000);
  }

  function refused(message) {
    document.getElementById("device-code").hidden = true;
    form.hidden = true;
    status.textContent = message;
    status.classList.add("error");
  }

  function ask() {
    fetch(panel.dataset.status, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      if (!response.ok) {
        // Refused before relay looked (the session ended, say): the page itself says why.
        window.location.reload();
        return null;
      }
      return response.json();
    }).then(function (answer) {
      if (answer === null) { return; }
      if (answer.location) {  // signed in, or ended by another request
        window.location.assign(answer.location);
      } else if (answer.state === "refused") {
        refused(answer.message);
      } else {
        later(answer.wait);
      }
    }).catch(function () {
      later(panel.dataset.wait);  // relay unreachable for a moment: keep waiting
    });
  }

  later(panel.dataset.wait);
});
