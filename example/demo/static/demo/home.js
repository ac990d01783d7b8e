// The home page of the django-flosse demo: one plain EventSource per card.
(function () {
  "use strict";

  function part(card, role) { return card.querySelector('[data-role="' + role + '"]'); }
  function setStatus(card, text) { part(card, "status").textContent = text; }
  function time(iso) { return new Date(iso).toLocaleTimeString(); }
  function addItem(list, text, max) {
    var li = document.createElement("li");
    li.textContent = text;  // textContent, never innerHTML: data is data
    list.appendChild(li);
    while (max && list.children.length > max) list.removeChild(list.firstElementChild);
    return li;
  }

  // Feed: endless. EventSource reconnects by itself if the connection drops.
  var feed = document.getElementById("demo-feed");
  var feedSource = new EventSource(feed.dataset.url);
  feedSource.onopen = function () { setStatus(feed, "connected"); };
  feedSource.onerror = function () { setStatus(feed, "connection lost, reconnecting…"); };
  feedSource.addEventListener("tick", function (e) {
    var data = JSON.parse(e.data);
    part(feed, "n").textContent = data.n;
    part(feed, "now").textContent = time(data.now);
  });
  feedSource.addEventListener("message", function (e) {
    var data = JSON.parse(e.data);
    addItem(part(feed, "messages"), time(data.at) + "  " + data.text, 8);
  });
  // Post without leaving the page; the message comes back through the feed.
  part(feed, "form").addEventListener("submit", function (e) {
    e.preventDefault();
    var form = e.target;
    fetch(form.action, {
      method: "POST", body: new FormData(form), headers: { "X-Requested-With": "fetch" },
    }).then(function () { form.reset(); });
  });

  // Progress: the stream ends after "done". Close it, or EventSource would reconnect
  // (after the stream's retry of 2 s) and run the job again.
  var prog = document.getElementById("demo-progress");
  function runProgress() {
    part(prog, "restart").disabled = true;
    setStatus(prog, "connecting…");
    var source = new EventSource(prog.dataset.url);
    source.onopen = function () { setStatus(prog, "running"); };
    source.onerror = function () { setStatus(prog, "connection lost, retrying…"); };
    source.addEventListener("progress", function (e) {
      var data = JSON.parse(e.data);
      part(prog, "bar").value = data.percent;
      part(prog, "percent").textContent = data.percent;
    });
    source.addEventListener("done", function (e) {
      source.close();
      setStatus(prog, "done in " + JSON.parse(e.data).seconds + " s (EventSource closed)");
      part(prog, "restart").disabled = false;
    });
  }
  part(prog, "restart").addEventListener("click", runProgress);
  runProgress();

  // Resume: every event has an id. When the server ends a connection, the browser waits
  // `retry` ms, reconnects, and sends the last id in the Last-Event-ID header. Each event
  // echoes the header the server received, so the page can show it.
  var resume = document.getElementById("demo-resume");
  var resumeSource = new EventSource(resume.dataset.url);
  var connection = 0, lastSeen = null, current = null;
  resumeSource.onopen = function () {
    connection += 1;
    current = addItem(part(resume, "connections"), "connection " + connection + ": …", 6);
    setStatus(resume, "connected");
  };
  resumeSource.onerror = function () {
    if (resumeSource.readyState === EventSource.CONNECTING) {
      setStatus(resume, "the server ended the stream; the browser reconnects after " +
        "last id " + lastSeen + "…");
    }
  };
  resumeSource.addEventListener("count", function (e) {
    var data = JSON.parse(e.data);
    part(resume, "n").textContent = data.n;
    if (!current.dataset.first) {
      current.dataset.first = data.n;
      current.dataset.header = data.last_event_id === null ? "none" : data.last_event_id;
    }
    current.textContent = "connection " + connection + ": Last-Event-ID sent: " +
      current.dataset.header + " → events " + current.dataset.first + "–" + e.lastEventId;
    lastSeen = e.lastEventId;
  });
  resumeSource.addEventListener("done", function () {
    resumeSource.close();
    setStatus(resume, "done: every number arrived once, over " + connection +
      " connections (EventSource closed)");
  });

  // Failure: listeners for "error" get both the server's error event (a MessageEvent
  // with data) and the browser's own connection errors (no data).
  var fail = document.getElementById("demo-fail");
  function runFail() {
    part(fail, "restart").disabled = true;
    part(fail, "error").hidden = true;
    part(fail, "step").textContent = "–";
    var source = new EventSource(fail.dataset.url);
    source.onopen = function () { setStatus(fail, "connected"); };
    source.addEventListener("status", function (e) {
      part(fail, "step").textContent = JSON.parse(e.data).step;
    });
    source.addEventListener("error", function (e) {
      if (!e.data) { setStatus(fail, "connection problem, reconnecting…"); return; }
      source.close();  // the failure would happen again: do not reconnect in a loop
      var data = JSON.parse(e.data);
      var box = part(fail, "error");
      box.textContent = data.message + " Error id: " + data.error_id +
        (data.detail ? " (DEBUG detail: " + data.detail + ")" : "");
      box.hidden = false;
      setStatus(fail, "closed. Search the console log for error_id " + data.error_id + ".");
      part(fail, "restart").disabled = false;
    });
  }
  part(fail, "restart").addEventListener("click", runFail);
  runFail();
})();
