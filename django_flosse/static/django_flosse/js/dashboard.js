/*
 * django-flosse live dashboard.
 *
 * Fed by the page's own SSE stream (data-stream-url): one "snapshot" event on connect, then
 * "update" events carrying what changed (cards, total, rows to upsert and to remove). Both
 * may carry "topics", the whole broadcast topics panel (in the snapshot, then when it
 * changed). Every value from the server is put on the page with textContent, never as HTML. The
 * chart is drawn by chart.js on a <canvas>: no library, no CDN, the admin works offline.
 *
 * EventSource reconnects by itself after a network error; when the browser gives up (an
 * HTTP error such as 403, or a redirect to the login page after the session expired) we
 * retry with a growing delay. A "terminated" event means an administrator ended this feed
 * on purpose: we stop, rather than reconnect against their will.
 */
(function () {
    "use strict";

    const root = document.getElementById("flosse-dashboard");
    if (!root) {
        return;
    }
    const T = JSON.parse(document.getElementById("flosse-i18n").textContent);
    const streamUrl = root.dataset.streamUrl;
    const terminateUrl = root.dataset.terminateUrl || "";
    const windowMs = Number(root.dataset.window || 10) * 60 * 1000;

    const statusEl = root.querySelector("[data-flosse-status]");
    const cardsEl = root.querySelector("[data-flosse-cards]");
    const totalEl = root.querySelector("[data-flosse-total]");
    const showingEl = root.querySelector("[data-flosse-showing]");
    const tbody = root.querySelector("[data-flosse-rows]");
    const noRowsEl = root.querySelector("[data-flosse-no-rows]");
    const canvas = root.querySelector("[data-flosse-chart]");
    const csrfForm = root.querySelector("[data-flosse-csrf]");
    const topicsBody = root.querySelector("[data-flosse-topics]");
    const noTopicsEl = root.querySelector("[data-flosse-no-topics]");
    const topicsMoreEl = root.querySelector("[data-flosse-topics-more]");
    const topicsBackendEl = root.querySelector("[data-flosse-topics-backend]");
    const lagEl = root.querySelector("[data-flosse-lag]");
    const unsharedEl = root.querySelector("[data-flosse-unshared]");

    const rows = new Map(); // connection id -> {data, tr, cells}
    let topicRows = []; // [{data, cells}] of the topics panel, for its "ago" times
    let points = []; // [server time in ms, active connections]
    let total = 0;
    let offset = 0; // server clock - browser clock, in ms
    let source = null;
    let retryDelay = 2000;
    let retryTimer = null;

    // ------------------------------------------------------------------ formatting
    function fmt(template, values) {
        return template.replace(/%\((\w+)\)s/g, (_, key) => String(values[key]));
    }

    function number(n) {
        return Number(n).toLocaleString();
    }

    function bytes(n) {
        const units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let value = Number(n);
        let unit = 0;
        while (value >= 1024 && unit < units.length - 1) {
            value /= 1024;
            unit += 1;
        }
        return (unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)) + "\u00a0" + units[unit];
    }

    function rate(n) {
        return n >= 10 || n === 0 ? number(Math.round(n)) : Number(n).toFixed(1);
    }

    function duration(seconds) {
        const s = Math.max(0, Math.floor(seconds));
        const h = Math.floor(s / 3600);
        const m = Math.floor((s % 3600) / 60);
        const rest = s % 60;
        if (h) {
            return h + "h\u00a0" + String(m).padStart(2, "0") + "m";
        }
        if (m) {
            return m + "m\u00a0" + String(rest).padStart(2, "0") + "s";
        }
        return rest + "s";
    }

    function clock(ms) {
        return new Date(ms).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
    }

    function serverNow() {
        return Date.now() + offset;
    }

    function setStatus(text, problem) {
        statusEl.textContent = text;
        statusEl.classList.toggle("flosse-live", !problem);
        statusEl.classList.toggle("flosse-problem", Boolean(problem));
    }

    function el(tag, className, text) {
        const node = document.createElement(tag);
        if (className) {
            node.className = className;
        }
        if (text !== undefined) {
            node.textContent = text;
        }
        return node;
    }

    // ------------------------------------------------------------------ cards
    function renderCards(cards) {
        cardsEl.replaceChildren();
        if (!cards.length) {
            cardsEl.appendChild(el("p", "flosse-empty", cardsEl.dataset.empty || ""));
            return;
        }
        for (const card of cards) {
            const box = el("article", "flosse-card");
            box.dataset.stream = card.stream;
            const name = el("h3", "flosse-card-name", card.stream);
            name.title = card.stream;
            box.appendChild(name);
            const active = el("div", "flosse-card-active", number(card.active));
            active.dataset.flosseActive = "";
            active.appendChild(el("small", "", T.active));
            box.appendChild(active);
            const stats = el("dl", "flosse-card-stats");
            const entries = [
                ["opened", number(card.opened), false],
                ["cancelled", number(card.cancelled), false],
                ["errors", number(card.errors), card.errors > 0],
                ["events_per_s", rate(card.eps), false],
                ["bytes_per_s", bytes(card.bps), false],
            ];
            for (const [key, value, bad] of entries) {
                const item = el("div");
                item.dataset.stat = key;
                item.appendChild(el("dt", "", T[key]));
                item.appendChild(el("dd", bad ? "flosse-bad" : "", value));
                stats.appendChild(item);
            }
            box.appendChild(stats);
            cardsEl.appendChild(box);
        }
    }

    // ------------------------------------------------------------------ table
    function upsertRow(data, fresh) {
        let row = rows.get(data.id);
        if (!row) {
            const tr = el("tr");
            tr.dataset.connectionId = data.id;
            const names = ["stream", "user", "ip", "process", "topics", "opened", "duration", "events", "bytes", "last"];
            const cells = {};
            for (const name of names) {
                const td = el("td");
                if (name === "duration" || name === "events" || name === "bytes") {
                    td.className = "flosse-num";
                } else if (name === "stream" || name === "process" || name === "ip" || name === "topics") {
                    td.className = "flosse-mono";
                }
                cells[name] = td;
                tr.appendChild(td);
            }
            if (terminateUrl) {
                const td = el("td");
                const button = el("button", "flosse-terminate", T.terminate);
                button.type = "button";
                button.addEventListener("click", () => terminate(data.id, button));
                td.appendChild(button);
                tr.appendChild(td);
            }
            if (fresh) {
                tr.classList.add("flosse-new");
                setTimeout(() => tr.classList.remove("flosse-new"), 50);
            }
            row = {tr, cells};
            rows.set(data.id, row);
        }
        row.data = data;
        const c = row.cells;
        c.stream.textContent = data.stream;
        c.user.textContent = data.user || "–";
        c.ip.textContent = data.ip || "–";
        c.process.textContent = data.process;
        c.topics.textContent = data.topics || "–";
        c.topics.title = data.topics || "";
        c.opened.textContent = clock(data.opened * 1000);
        c.events.textContent = number(data.events);
        c.bytes.textContent = bytes(data.bytes);
        refreshTimes(row);
    }

    function refreshTimes(row) {
        const now = serverNow();
        row.cells.duration.textContent = duration(now / 1000 - row.data.opened);
        row.cells.last.textContent = row.data.last
            ? fmt(T.ago, {time: duration(now / 1000 - row.data.last)})
            : T.never;
    }

    function renderRows() {
        const ordered = Array.from(rows.values()).sort(
            (a, b) => b.data.opened - a.data.opened || (a.data.id < b.data.id ? 1 : -1)
        );
        for (const row of ordered) {
            tbody.appendChild(row.tr); // moves existing rows into order
        }
        noRowsEl.hidden = ordered.length > 0;
        showingEl.textContent = fmt(T.showing, {shown: number(ordered.length), total: number(total)});
        totalEl.textContent = number(total);
    }

    async function terminate(id, button) {
        if (!window.confirm(T.confirm)) {
            return;
        }
        button.disabled = true;
        button.textContent = T.terminating;
        const body = csrfForm ? new FormData(csrfForm) : new FormData();
        body.append("connection_id", id);
        const token = body.get("csrfmiddlewaretoken") || "";
        try {
            const response = await fetch(terminateUrl, {
                method: "POST",
                body,
                headers: {"X-CSRFToken": token},
                credentials: "same-origin",
            });
            if (!response.ok) {
                throw new Error(fmt(T.terminate_failed, {status: response.status}));
            }
            // The row goes when the feed reports the connection closed.
        } catch (error) {
            button.disabled = false;
            button.textContent = T.terminate;
            setStatus(error.message, true);
        }
    }

    // ------------------------------------------------------------------ topics panel
    function seconds(value) {
        return value < 1 ? Math.round(value * 1000) + "\u00a0ms" : Number(value).toFixed(2) + "\u00a0s";
    }

    function agoText(epoch) {
        return epoch ? fmt(T.ago, {time: duration(serverNow() / 1000 - epoch)}) : T.never;
    }

    function renderTopics(panel) {
        topicsBody.replaceChildren();
        topicRows = [];
        for (const data of panel.rows) {
            const tr = el("tr");
            tr.dataset.topic = data.topic;
            const name = el("td", "flosse-mono", data.topic);
            const subscribers = el("td", "flosse-num", number(data.subscribers));
            const published = el(
                "td",
                "flosse-num",
                data.published === null ? T.not_available : number(data.published)
            );
            const last = el("td", "", data.published === null ? T.not_available : agoText(data.last));
            tr.append(name, subscribers, published, last);
            topicsBody.appendChild(tr);
            if (data.published !== null) {
                topicRows.push({data, last});
            }
        }
        noTopicsEl.hidden = panel.rows.length > 0;
        const notes = [];
        if (panel.more) {
            notes.push(fmt(T.more_topics, {count: number(panel.more)}));
        }
        if (panel.partial) {
            notes.push(T.partial);
        }
        topicsMoreEl.textContent = notes.join(" ");
        topicsBackendEl.textContent = panel.backend;
        lagEl.textContent = panel.lag
            ? fmt(T.lag, {
                p50: seconds(panel.lag.p50),
                p99: seconds(panel.lag.p99),
                max: seconds(panel.lag.max),
                samples: number(panel.lag.samples),
            })
            : T.lag_none;
        unsharedEl.hidden = !panel.unshared;
        unsharedEl.textContent = panel.unshared
            ? fmt(T.unshared, {count: number(panel.processes), processes: panel.unshared.join(", ")})
            : "";
    }

    // ------------------------------------------------------------------ chart
    function addPoint(ms, value) {
        points.push([ms, value]);
        const start = serverNow() - windowMs;
        // Keep one point before the window, so the line starts at its left edge.
        while (points.length > 2 && points[1][0] < start) {
            points.shift();
        }
    }

    function drawChart() {
        window.djangoFlosseChart.draw(canvas, root, points, total, windowMs, serverNow(), number);
    }

    // ------------------------------------------------------------------ the feed
    function onSnapshot(snapshot) {
        offset = snapshot.t * 1000 - Date.now();
        total = snapshot.total;
        rows.clear();
        tbody.replaceChildren();
        for (const data of snapshot.rows) {
            upsertRow(data, false);
        }
        points = snapshot.history.map((p) => [p[0] * 1000, p[1]]);
        addPoint(snapshot.t * 1000, total);
        renderCards(snapshot.cards);
        renderRows();
        if (snapshot.topics) {
            renderTopics(snapshot.topics);
        }
        drawChart();
        setStatus(T.live, false);
    }

    function onUpdate(update) {
        offset = update.t * 1000 - Date.now();
        total = update.total;
        for (const id of update.remove) {
            const row = rows.get(id);
            if (row) {
                row.tr.remove();
                rows.delete(id);
            }
        }
        for (const data of update.upsert) {
            upsertRow(data, true);
        }
        renderCards(update.cards);
        renderRows();
        if (update.topics) {
            renderTopics(update.topics);
        }
        addPoint(update.t * 1000, total);
        drawChart();
    }

    function connect() {
        clearTimeout(retryTimer);
        if (source) {
            source.close();
        }
        source = new EventSource(streamUrl);
        source.addEventListener("open", () => {
            retryDelay = 2000;
        });
        source.addEventListener("snapshot", (event) => onSnapshot(JSON.parse(event.data)));
        source.addEventListener("update", (event) => onUpdate(JSON.parse(event.data)));
        source.addEventListener("terminated", () => {
            source.close();
            setStatus(T.stopped, true);
        });
        for (const name of ["shutdown", "timeout"]) {
            // The server is going away: EventSource comes back after the retry it was sent.
            source.addEventListener(name, () => setStatus(T.reconnecting, true));
        }
        source.addEventListener("error", () => {
            if (source.readyState === EventSource.CLOSED) {
                // The browser gave up (HTTP error, login redirect): try again later.
                setStatus(T.failed, true);
                source.close();
                retryTimer = setTimeout(connect, retryDelay);
                retryDelay = Math.min(retryDelay * 2, 60000);
            } else {
                setStatus(T.reconnecting, true);
            }
        });
    }

    cardsEl.dataset.empty = (cardsEl.querySelector(".flosse-empty") || {}).textContent || "";
    setInterval(() => {
        for (const row of rows.values()) {
            refreshTimes(row);
        }
        for (const row of topicRows) {
            row.last.textContent = agoText(row.data.last);
        }
        drawChart();
    }, 1000);
    window.addEventListener("resize", drawChart);
    // The admin's theme toggle sets data-theme on <html>; the system theme can change too.
    new MutationObserver(drawChart).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawChart);
    connect();
})();
