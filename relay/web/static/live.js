// The Test forms, live: the form is posted to its data-live address, which answers with
// server-sent events, one per stage as it ends; each becomes a row like the finished report's.
// Without this script the form posts as usual and the page shows the finished report.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var live = document.getElementById("live");
  var rows = document.getElementById("live-stages");
  if (!live || !rows || !window.fetch || !window.TextDecoder) { return; }

  function line(className, heading, text) {
    var div = document.createElement("div");
    div.className = className;
    if (heading) { div.appendChild(document.createTextNode(heading + " ")); }
    if (className === "reply") {
      var code = document.createElement("code");
      code.textContent = text;
      div.appendChild(code);
    } else {
      div.appendChild(document.createTextNode(text));
    }
    return div;
  }

  function addStage(stage) {
    var row = document.createElement("li");
    row.className = "stage " + stage.status;
    row.id = "live-stage-" + stage.name;
    var badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = stage.status_label;
    var label = document.createElement("strong");
    label.textContent = stage.label;
    row.appendChild(badge);
    row.appendChild(document.createTextNode(" "));
    row.appendChild(label);
    if (stage.summary) { row.appendChild(line("summary", null, stage.summary)); }
    if (stage.reply) { row.appendChild(line("reply", stage.reply_label, stage.reply)); }
    if (stage.fix) { row.appendChild(line("fix", stage.fix_label, stage.fix)); }
    rows.appendChild(row);
  }

  // One event of the stream: "event: NAME" and "data: JSON" lines (HTML §9.2).
  function handle(frame) {
    var name = "message", data = "";
    frame.split("\n").forEach(function (text) {
      if (text.indexOf("event: ") === 0) { name = text.slice(7); }
      if (text.indexOf("data: ") === 0) { data += text.slice(6); }
    });
    if (!data) { return; }
    var payload = JSON.parse(data);
    if (name === "stage") { addStage(payload); }
    if (name === "done") { window.location.assign(payload.next); }
  }

  // A refusal (an expired form, too many attempts) comes as a page: show it in place.
  function showPage(html) {
    var page = new DOMParser().parseFromString(html, "text/html");
    document.replaceChild(document.adoptNode(page.documentElement), document.documentElement);
  }

  async function run(form) {
    var response = await fetch(form.dataset.live, {
      method: "POST", body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin", headers: { "Accept": "text/event-stream" },
    });
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("text/event-stream") !== 0) { showPage(await response.text()); return; }
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) { break; }
      buffer += decoder.decode(chunk.value, { stream: true });
      var end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  document.querySelectorAll("form[data-live]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var old = document.getElementById("results");
      if (old) { old.hidden = true; }
      rows.textContent = "";
      live.hidden = false;
      form.querySelectorAll("button").forEach(function (button) { button.disabled = true; });
      run(form).catch(function () { form.submit(); });  // the stream broke: post it plainly
    });
  });
});
