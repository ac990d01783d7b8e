// The broadcast page of the django-flosse demo: one EventSource per pane, and a form that
// publishes. Each pane remembers the last id it received; "Reconnect" opens a new
// EventSource with ?lastEventId= so the server replays exactly what the pane missed.
(function () {
  "use strict";

  var MAX_ROWS = 50;

  function part(root, role) { return root.querySelector('[data-role="' + role + '"]'); }

  function Pane(card) {
    this.card = card;
    this.url = card.dataset.url;
    this.source = null;
    this.lastId = "";
    this.connection = 0;
    var pane = this;
    part(card, "toggle").addEventListener("click", function () {
      if (pane.source) { pane.disconnect(); } else { pane.connect(pane.lastId); }
    });
    part(card, "madeup").addEventListener("click", function () {
      pane.disconnect();
      pane.connect("made-up-id");
    });
  }

  Pane.prototype.status = function (text) { part(this.card, "status").textContent = text; };

  Pane.prototype.row = function (cells, kind) {
    var body = part(this.card, "events");
    var tr = document.createElement("tr");
    if (kind) tr.className = kind;
    cells.forEach(function (text) {
      var td = document.createElement("td");
      td.textContent = text;  // textContent, never innerHTML: data is data
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.children.length > MAX_ROWS) body.removeChild(body.lastElementChild);
  };

  Pane.prototype.connect = function (fromId) {
    var pane = this;
    var url = this.url + (fromId ? "?lastEventId=" + encodeURIComponent(fromId) : "");
    var source = this.source = new EventSource(url);
    var number = this.connection += 1;
    this.card.dataset.connection = number;
    part(this.card, "toggle").textContent = "Disconnect";
    this.status("connection " + number + ": connecting" +
      (fromId ? " with lastEventId=" + fromId : " (no id: live events only)") + "…");
    source.addEventListener("hello", function (e) {
      pane.status("connection " + number + ": connected to process " +
        JSON.parse(e.data).pid + (fromId ? ", resumed from " + fromId : ""));
    });
    source.addEventListener("note", function (e) {
      var data = JSON.parse(e.data);
      pane.lastId = e.lastEventId;
      pane.row([number, e.lastEventId, "note", data.text + "  (published by " + data.pid + ")"]);
    });
    source.addEventListener("flosse-reset", function (e) {
      // A real page reloads its state here: it missed an unknown number of events.
      pane.lastId = e.lastEventId;
      pane.row([number, e.lastEventId, "flosse-reset", "cannot resume: reload the state"],
        "demo-reset");
    });
    source.onerror = function () {
      // EventSource reconnects by itself (sending Last-Event-ID); nothing to do.
      if (source.readyState === EventSource.CONNECTING) {
        pane.status("connection lost; the browser reconnects with Last-Event-ID…");
      }
    };
  };

  Pane.prototype.disconnect = function () {
    if (this.source) this.source.close();
    this.source = null;
    part(this.card, "toggle").textContent = "Reconnect from the last id";
    this.status("disconnected; last id " + (this.lastId || "none") +
      ". Publish something, then reconnect.");
  };

  document.querySelectorAll(".demo-pane").forEach(function (card) {
    new Pane(card).connect("");
  });

  var form = document.getElementById("demo-publish");
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    fetch(form.action, {
      method: "POST", body: new FormData(form), headers: { "X-Requested-With": "fetch" },
    }).then(function (response) {
      part(form.parentNode, "status").textContent = response.ok
        ? "published to " + form.elements.topic.value
        : "refused: " + response.status;
      if (response.ok) form.elements.text.value = "";
    });
  });
})();
