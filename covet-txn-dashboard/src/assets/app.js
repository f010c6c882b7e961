// The covet-txn dashboard. Updates come over a WebSocket (api/ws) when
// one can be opened, and over server-sent events (api/events) otherwise:
// a proxy that refuses the upgrade, or a socket that keeps closing before
// its first update, switches the page to the event stream for good.
// Every value that comes from the application
// (function names, alert messages) is written with textContent or as an
// SVG text node: nothing received is ever parsed as markup. The token, if
// one is needed, travels in an HttpOnly cookie that the server set when the
// page was first opened with ?token=: this script never sees it, and no
// address it builds carries it.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);
  const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
  const precise = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });

  let alertLevel = "";
  let source = null;
  let socket = null;
  let retry = null;
  // "websocket" until the WebSocket path proves unusable, then "events".
  let transport = "WebSocket" in window ? "websocket" : "events";
  let socketFailures = 0;
  let latest = null;
  let functionSort = { key: "committed", descending: true };

  // Relative to the page, so that the dashboard works mounted under any path.
  function url(path, extra) {
    const target = new URL(path, document.baseURI);
    for (const [key, value] of Object.entries(extra || {})) {
      if (value) target.searchParams.set(key, value);
    }
    return target.toString();
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  function ms(value) {
    return value === null || value === undefined ? "—" : value < 10 ? precise.format(value) : decimal.format(value);
  }

  function percent(rate) {
    return rate === null || rate === undefined ? "—" : `${decimal.format(rate * 100)} %`;
  }

  function age(millis) {
    if (millis < 1000) return `${integer.format(millis)} ms`;
    if (millis < 60000) return `${decimal.format(millis / 1000)} s`;
    return `${integer.format(Math.floor(millis / 60000))} min ${integer.format((millis % 60000) / 1000)} s`;
  }

  function clock(atMs) {
    return new Date(atMs).toLocaleTimeString("en-GB", { hour12: false });
  }

  function healthClass(score) {
    return score >= 90 ? "good" : score >= 70 ? "fair" : "poor";
  }

  function setConnection(state, text) {
    const pill = byId("connection");
    pill.className = `pill pill-${state}`;
    pill.textContent = text;
    pill.dataset.transport = transport;
    pill.title = transport === "websocket" ? "updates over a WebSocket" : "updates over server-sent events";
  }

  // Throughput over the last few seconds of updates, from the running
  // totals: live at every refresh, whatever the monitor's sampling interval.
  const RATE_WINDOW_MS = 5000;
  const RATE_MINIMUM_SPAN_MS = 800;
  const recentTotals = [];

  function liveRate(total, takenAt) {
    const ended = total.committed + total.failed;
    recentTotals.push({ takenAt, ended });
    while (recentTotals.length > 2 && takenAt - recentTotals[1].takenAt >= RATE_WINDOW_MS) recentTotals.shift();
    const oldest = recentTotals[0];
    const span = takenAt - oldest.takenAt;
    return span >= RATE_MINIMUM_SPAN_MS ? (Math.max(0, ended - oldest.ended) * 1000) / span : null;
  }

  function renderCards(state) {
    const { metrics, health } = state;
    const total = metrics.total;
    setText("manager", metrics.manager);
    setText("backend", metrics.backend);
    setText("updated", clock(metrics.taken_at_ms));
    byId("updated").dateTime = new Date(metrics.taken_at_ms).toISOString();

    const score = health.score;
    setText("health-score", integer.format(score));
    byId("health-arc").setAttribute("stroke-dasharray", `${score} ${100 - score}`);
    byId("health-ring").setAttribute("class", `ring ${healthClass(score)}`);

    const rate = liveRate(total, metrics.taken_at_ms);
    setText("kpi-throughput", rate === null ? "—" : decimal.format(rate));
    setText("kpi-committed", `${integer.format(total.committed)} committed in all`);
    setText("kpi-success", percent(total.success_rate));
    setText("kpi-failed", `${integer.format(total.failed)} failed · ${integer.format(total.rolled_back)} rolled back`);
    setText("kpi-p99", ms(total.duration.p99_ms));
    setText("kpi-latency", `p50 ${ms(total.duration.p50_ms)} · p95 ${ms(total.duration.p95_ms)} ms`);
    setText("kpi-retries", integer.format(total.retries));
    const lockConflicts = total.busy + total.lock_timeouts + total.snapshot_conflicts;
    setText(
      "kpi-conflicts",
      `${integer.format(total.deadlocks)} deadlocks · ${integer.format(total.serialization_failures)} serialization · ${integer.format(lockConflicts)} lock`,
    );
    setText("kpi-active", integer.format(metrics.active.length));
    const oldest = metrics.active[0];
    setText("kpi-oldest", oldest ? `oldest ${age(oldest.age_ms)}` : "none running");
    const pool = metrics.pool;
    setText("kpi-pool", pool.max ? `${integer.format(pool.size - pool.idle)} / ${integer.format(pool.max)}` : "—");
    setText("kpi-pool-idle", `${integer.format(pool.size)} open · ${integer.format(pool.idle)} idle`);
  }

  // Where the history is kept, and whether writing it fails.
  function renderStore(store) {
    const note = byId("store");
    note.hidden = !store;
    if (!store) return;
    const failing = store.consecutive_failures > 0;
    note.className = failing ? "store-failing" : "muted";
    note.textContent = failing
      ? `history store (${store.backend}) failing: ${store.pending_samples} samples wait`
      : `history kept in ${store.backend}`;
    note.title = failing && store.last_error ? store.last_error : "";
  }

  function renderActive(active, thresholds) {
    const body = byId("active-table").tBodies[0];
    body.replaceChildren();
    for (const transaction of active) {
      const row = element("tr");
      row.append(
        element("td", transaction.id, "num"),
        element("td", transaction.function, "name"),
        element("td", transaction.state),
        element("td", transaction.isolation || "default"),
        element("td", transaction.depth, "num"),
        element("td", transaction.attempt, "num"),
        element("td", age(transaction.age_ms), "num"),
      );
      if (transaction.age_ms >= thresholds) row.className = "long";
      body.append(row);
    }
    setText("active-count", integer.format(active.length));
    byId("active-empty").hidden = active.length > 0;
  }

  function renderReplicas(replicas) {
    const shown = replicas.replicas.length > 0 || replicas.primary_changes > 0;
    byId("replicas-panel").hidden = !shown;
    if (!shown) return;
    setText(
      "replica-summary",
      `lag bound ${ms(replicas.max_lag_ms)} ms · reads on the primary: ` +
        `${integer.format(replicas.reads_on_primary_unavailable)} with no replica fit, ` +
        `${integer.format(replicas.reads_on_primary_for_writes)} for the task's own writes · ` +
        `primary moved ${integer.format(replicas.primary_changes)} times`,
    );
    const body = byId("replica-table").tBodies[0];
    body.replaceChildren();
    for (const replica of replicas.replicas) {
      const state = replica.serving ? "serving" : replica.reachable ? "lagging" : "down";
      const row = element("tr");
      row.append(
        element("td", replica.name, "name"),
        element("td", state),
        element("td", replica.lag_ms === null ? "—" : `${ms(replica.lag_ms)} ms`, "num"),
        element("td", replica.lag_bytes === null ? "—" : integer.format(replica.lag_bytes), "num"),
        element("td", integer.format(replica.reads), "num"),
        element("td", replica.last_error || ""),
      );
      if (!replica.serving) row.className = "long";
      body.append(row);
    }
  }

  // Each outbox table the manager's relays serve, a row per topic; a lag
  // over a minute is shown as long, as the alert rule says.
  function renderOutbox(tables) {
    const shown = tables.length > 0;
    byId("outbox-panel").hidden = !shown;
    if (!shown) return;
    const body = byId("outbox-table").tBodies[0];
    body.replaceChildren();
    for (const table of tables) {
      const lagMs = table.lag ? table.lag.secs * 1000 + table.lag.nanos / 1e6 : null;
      const topics = Object.entries(table.topics);
      if (topics.length === 0) topics.push(["—", { enqueued: 0, delivered: 0, failed: 0, dead_lettered: 0 }]);
      for (const [topic, counts] of topics) {
        const row = element("tr");
        row.append(
          element("td", table.table, "name"),
          element("td", topic),
          element("td", integer.format(counts.enqueued), "num"),
          element("td", integer.format(counts.delivered), "num"),
          element("td", integer.format(counts.failed), "num"),
          element("td", integer.format(counts.dead_lettered), "num"),
          element("td", lagMs === null ? "—" : `${ms(lagMs)} ms`, "num"),
        );
        if (lagMs !== null && lagMs > 60000) row.className = "long";
        body.append(row);
      }
    }
  }

  // Each two-phase coordinator the manager takes part in; a branch in doubt
  // for more than five minutes is shown as long, as the alert rule says.
  function renderTwoPhase(coordinators) {
    const shown = coordinators.length > 0;
    byId("two-phase-panel").hidden = !shown;
    if (!shown) return;
    const body = byId("two-phase-table").tBodies[0];
    body.replaceChildren();
    for (const coordinator of coordinators) {
      const oldest = coordinator.oldest_in_doubt;
      const oldestMs = oldest ? oldest.secs * 1000 + oldest.nanos / 1e6 : null;
      const row = element("tr");
      row.append(
        element("td", coordinator.coordinator, "name"),
        element("td", integer.format(coordinator.committed), "num"),
        element("td", integer.format(coordinator.rolled_back), "num"),
        element("td", integer.format(coordinator.committed_pending_recovery + coordinator.in_doubt), "num"),
        element("td", integer.format(coordinator.in_doubt_branches), "num"),
        element("td", oldestMs === null ? "—" : `${ms(oldestMs)} ms`, "num"),
        element("td", integer.format(coordinator.recovered_committed + coordinator.recovered_rolled_back), "num"),
      );
      if (oldestMs !== null && oldestMs > 300000) row.className = "long";
      body.append(row);
    }
  }

  function functionValue(metrics, key) {
    switch (key) {
      case "p50": return metrics.duration.p50_ms ?? -1;
      case "p95": return metrics.duration.p95_ms ?? -1;
      case "p99": return metrics.duration.p99_ms ?? -1;
      case "success_rate": return metrics.success_rate ?? -1;
      case "limit": return metrics.limit ?? -1;
      default: return metrics[key];
    }
  }

  // Each function's counters with its admission: the limit and the
  // attempts waiting now (from the snapshot's admission list), and the
  // time its attempts waited in all.
  function withAdmission(metrics) {
    const admission = new Map(metrics.admission.map((status) => [status.function, status]));
    return metrics.functions.map((counters) => ({
      ...counters,
      limit: admission.get(counters.function)?.limit ?? null,
      waiting: admission.get(counters.function)?.waiting ?? 0,
      waited: counters.admission_wait_microseconds / 1000,
    }));
  }

  function renderFunctions(functions) {
    const { key, descending } = functionSort;
    const sorted = [...functions].sort((a, b) => {
      const left = functionValue(a, key);
      const right = functionValue(b, key);
      const order = typeof left === "string" ? left.localeCompare(right) : left - right;
      return descending ? -order : order;
    });
    const body = byId("function-table").tBodies[0];
    body.replaceChildren();
    for (const metrics of sorted) {
      const row = element("tr");
      const success = element("td", percent(metrics.success_rate), "num");
      if (metrics.success_rate !== null && metrics.success_rate < 0.95) success.classList.add("bad");
      row.append(
        element("td", metrics.function, "name"),
        element("td", integer.format(metrics.committed), "num"),
        element("td", integer.format(metrics.rolled_back), "num"),
        element("td", integer.format(metrics.failed), metrics.failed ? "num bad" : "num"),
        element("td", integer.format(metrics.retries), "num"),
        element("td", integer.format(metrics.timeouts), metrics.timeouts ? "num bad" : "num"),
        success,
        element("td", ms(metrics.duration.p50_ms), "num"),
        element("td", ms(metrics.duration.p95_ms), "num"),
        element("td", ms(metrics.duration.p99_ms), "num"),
        element("td", metrics.limit === null ? "—" : metrics.limit.toFixed(1), "num"),
        element("td", integer.format(metrics.waiting), "num"),
        element("td", ms(metrics.waited), "num"),
      );
      body.append(row);
    }
    byId("function-empty").hidden = functions.length > 0;
    for (const header of byId("function-table").tHead.rows[0].cells) {
      header.setAttribute("aria-sort", header.dataset.key === key ? (descending ? "descending" : "ascending") : "none");
    }
  }

  function renderHealth(health) {
    const penalties = byId("penalties");
    penalties.replaceChildren();
    const parts = [
      ["failures", health.failure_penalty],
      ["contention", health.contention_penalty],
      ["latency", health.latency_penalty],
      ["incidents", health.incident_penalty],
      ["pool", health.pool_penalty],
    ];
    for (const [name, points] of parts) {
      const bar = element("span", null, "bar");
      const fill = element("span", null, points > 0 ? "bar-fill" : "bar-fill none");
      fill.style.width = `${Math.min(100, points * 2)}%`;
      bar.append(fill);
      const value = element("dd");
      value.append(bar, element("span", `−${decimal.format(points)}`, "points"));
      penalties.append(element("dt", name), value);
    }
    const list = byId("recommendations");
    list.replaceChildren();
    const advice = health.recommendations.length ? health.recommendations : ["Nothing to do: all is well."];
    for (const text of advice) list.append(element("li", text));
  }

  function renderAlerts(alerts) {
    const list = byId("alerts");
    list.replaceChildren();
    for (const alert of alerts) {
      const item = element("li", null, `alert level-${alert.level.toLowerCase()}`);
      const head = element("div", null, "alert-head");
      head.append(
        element("span", alert.level, "badge"),
        element("time", clock(alert.at_ms)),
        element("span", alert.rule.replaceAll("_", " "), "rule"),
      );
      if (alert.function) head.append(element("code", alert.function, "name"));
      item.append(head, element("p", alert.message));
      list.append(item);
    }
    setText("alert-count", integer.format(alerts.length));
    byId("alerts-empty").hidden = alerts.length > 0;
  }

  // A line chart of `series` over the history's points, in SVG.
  function renderChart(id, points, series, options) {
    const host = byId(id);
    const width = 560;
    const height = 200;
    const pad = { left: 44, right: 10, top: 10, bottom: 22 };
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "plot" });
    const values = series.flatMap((line) => points.map(line.value)).filter((value) => Number.isFinite(value));
    const top = Math.max(options.minimumTop || 1, ...values) * 1.1;
    const x = (index) => pad.left + (points.length < 2 ? 0 : (index / (points.length - 1)) * (width - pad.left - pad.right));
    const y = (value) => height - pad.bottom - (value / top) * (height - pad.top - pad.bottom);

    for (let step = 0; step <= 4; step += 1) {
      const value = (top / 4) * step;
      chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: "grid" }));
      const label = svg("text", { x: pad.left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" });
      label.textContent = value >= 100 ? integer.format(value) : decimal.format(value);
      chart.append(label);
    }
    if (points.length > 0) {
      for (const [index, anchor] of [[0, "start"], [points.length - 1, "end"]]) {
        const label = svg("text", { x: x(index), y: height - 6, class: "axis", "text-anchor": anchor });
        label.textContent = clock(points[index].at_ms);
        chart.append(label);
      }
    }
    for (const line of series) {
      const coordinates = [];
      points.forEach((point, index) => {
        const value = line.value(point);
        if (Number.isFinite(value)) coordinates.push(`${x(index).toFixed(1)},${y(value).toFixed(1)}`);
      });
      if (coordinates.length > 0) {
        chart.append(svg("polyline", { points: coordinates.join(" "), class: `line ${line.className}` }));
      }
    }
    const legend = element("div", null, "legend");
    for (const line of series) {
      const last = points.length ? line.value(points[points.length - 1]) : null;
      const key = element("span", null, `key ${line.className}`);
      key.append(element("i"), element("span", `${line.name} ${Number.isFinite(last) ? decimal.format(last) : "—"}`));
      legend.append(key);
    }
    if (points.length < 2) {
      const note = svg("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" });
      note.textContent = "waiting for the monitor's samples…";
      chart.append(note);
    }
    host.replaceChildren(chart, legend);
  }

  function renderCharts(history) {
    // The first sample counts everything before it: it has no rate.
    const points = history.filter((point) => point.seconds > 0);
    const perSecond = (field) => (point) => point[field] / point.seconds;
    renderChart("chart-throughput", points, [
      { name: "committed", className: "s-good", value: perSecond("committed") },
      { name: "rolled back", className: "s-warn", value: perSecond("rolled_back") },
      { name: "failed", className: "s-bad", value: perSecond("failed") },
    ], {});
    renderChart("chart-latency", points, [
      { name: "p50", className: "s-info", value: (point) => point.p50_ms ?? NaN },
      { name: "p95", className: "s-warn", value: (point) => point.p95_ms ?? NaN },
      { name: "p99", className: "s-bad", value: (point) => point.p99_ms ?? NaN },
    ], {});
    renderChart("chart-conflicts", points, [
      { name: "retries", className: "s-info", value: perSecond("retries") },
      { name: "deadlocks", className: "s-bad", value: perSecond("deadlocks") },
      { name: "serialization", className: "s-warn", value: perSecond("serialization_failures") },
      { name: "lock conflicts", className: "s-lock", value: perSecond("lock_conflicts") },
    ], {});
    renderChart("chart-health", points, [
      { name: "health", className: "s-good", value: (point) => point.health },
      { name: "active", className: "s-info", value: (point) => point.active },
    ], { minimumTop: 100 });
  }

  function render(state) {
    latest = state;
    renderCards(state);
    renderStore(state.store);
    renderActive(state.metrics.active, state.long_transaction_ms);
    renderReplicas(state.replicas);
    renderTwoPhase(state.metrics.two_phase);
    renderOutbox(state.metrics.outbox || []);
    renderFunctions(withAdmission(state.metrics));
    renderHealth(state.health);
    renderAlerts(state.alerts);
    renderCharts(state.history);
  }

  function disconnect() {
    if (retry) clearTimeout(retry);
    retry = null;
    if (source) source.close();
    source = null;
    if (socket) {
      const closing = socket;
      socket = null;
      closing.close();
    }
  }

  function connect() {
    disconnect();
    if (transport === "websocket") connectSocket();
    else connectEvents();
  }

  function connectEvents() {
    source = new EventSource(url("api/events", { level: alertLevel }));
    source.addEventListener("open", () => setConnection("live", "live"));
    source.addEventListener("state", (event) => {
      setConnection("live", "live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("failure", (event) => setConnection("bad", event.data));
    // EventSource reconnects by itself; say so meanwhile.
    source.addEventListener("error", () => setConnection("wait", "reconnecting…"));
  }

  function connectSocket() {
    const address = new URL(url("api/ws", { level: alertLevel }));
    address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
    const current = new WebSocket(address.toString());
    socket = current;
    let opened = false;
    let updated = false;
    current.addEventListener("open", () => {
      opened = true;
    });
    current.addEventListener("message", (event) => {
      if (socket !== current) return;
      const message = JSON.parse(event.data);
      updated = true;
      socketFailures = 0;
      if (message.failure !== undefined) {
        setConnection("bad", message.failure);
        return;
      }
      setConnection("live", "live");
      render(message);
    });
    current.addEventListener("close", () => {
      if (socket !== current) return;
      socket = null;
      // Refused before it opened (a proxy that blocks upgrades), or closed
      // twice in a row before any update: the event stream takes over.
      if (!opened || (!updated && ++socketFailures >= 2)) {
        transport = "events";
        connectEvents();
        return;
      }
      setConnection("wait", "reconnecting…");
      retry = setTimeout(connect, 1000);
    });
  }

  function refreshNow() {
    fetch(url("api/state", { level: alertLevel }), { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : Promise.reject(new Error(response.statusText))))
      .then(render)
      .catch(() => setConnection("wait", "reconnecting…"));
  }

  function linkExports() {
    byId("export-report").href = url("export/report.json");
    byId("export-metrics").href = url("export/metrics.csv");
    byId("export-history").href = url("export/history.csv");
    byId("export-alerts").href = url("export/alerts.csv", { level: alertLevel });
    byId("export-prometheus").href = url("metrics");
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("alert-level").addEventListener("change", (event) => {
      alertLevel = event.target.value;
      linkExports();
      refreshNow();
      connect();
    });
    for (const header of byId("function-table").tHead.rows[0].cells) {
      header.tabIndex = 0;
      const sortBy = () => {
        const key = header.dataset.key;
        functionSort = { key, descending: functionSort.key === key ? !functionSort.descending : key !== "function" };
        if (latest) renderFunctions(withAdmission(latest.metrics));
      };
      header.addEventListener("click", sortBy);
      header.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy();
        }
      });
    }
    linkExports();
    refreshNow();
    connect();
  });
})();
