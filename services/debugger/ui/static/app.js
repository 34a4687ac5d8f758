// The flowhooks debugger page. Data comes only from this service's JSON API, called
// with the token kept in sessionStorage. Every stored value is written with
// textContent or as an SVG attribute value (never innerHTML): a request body is data,
// never markup. The charts are SVG drawn here, with no library.
"use strict";

(function () {
  const TOKEN_KEY = "flowhooks.debugger.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  // Filters kept in the URL's fragment (shareable links; never the token).
  const FILTERS = ["outcome", "mode", "since", "until", "match", "header"];
  // Stacking order and legend of the chart; any other outcome is drawn after these.
  const OUTCOME_ORDER = [
    "succeeded", "failed", "timeout", "expired", "rejected", "duplicate", "handshake",
    "debounced", "filtered", "routed", "queued", "running", "waiting",
  ];
  const WINDOW_LABELS = { "1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days" };
  const state = {
    flowId: null,
    sourceId: null,
    filterKey: null,
    window: "1h",
    cursor: null,
    tail: null,
    requestId: null,
    record: null,
    series: null,
    flows: [],
    sources: [],
    job: null,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function pretty(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function failedOutcomes() {
    return ($("app").dataset.failedOutcomes || "").split(",");
  }

  // Humane values: relative times with the exact one on hover, short durations.

  function relativeTime(iso) {
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    const ahead = seconds < 0;
    const s = Math.abs(seconds);
    let text;
    if (s < 45) text = Math.round(s) + " s";
    else if (s < 3600) text = Math.round(s / 60) + " min";
    else if (s < 86400) text = Math.round(s / 3600) + " h";
    else text = Math.round(s / 86400) + " d";
    return ahead ? "in " + text : text + " ago";
  }

  function timeElement(iso) {
    const node = el("time", relativeTime(iso));
    node.dateTime = iso;
    const exact = new Date(iso);
    node.title = exact.toISOString() + " (" + exact.toLocaleString() + ")";
    return node;
  }

  function humanDuration(ms) {
    if (ms === undefined || ms === null) return "—";
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    const minutes = Math.floor(ms / 60000);
    return minutes + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function badge(outcome) {
    const node = el("span", outcome, "badge outcome-" + String(outcome).replace(/[^a-z_]/g, ""));
    return node;
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, body) {
      // The contract's envelope: {"status", "error": kind, "message", "data"}.
      super((body && body.message) || "HTTP " + status);
      this.status = status;
    }
  }

  async function api(path, options) {
    const init = Object.assign({}, options || {});
    init.headers = Object.assign({ Authorization: "Bearer " + token() }, init.headers || {});
    const answer = await fetch(path, init);
    let body = null;
    try {
      body = await answer.json();
    } catch (e) {
      body = null;
    }
    if (answer.status === 401) {
      signOut("The token was not accepted; sign in again.");
    }
    if (!answer.ok) throw new ApiError(answer.status, body);
    return body;
  }

  function flowPath(flowId, rest) {
    return "/v1/flows/" + encodeURIComponent(flowId) + (rest || "");
  }

  // The fragment: #flow=<id>&window=24h&outcome=failed&...&request=<id>.

  function hashParams() {
    return new URLSearchParams(location.hash.slice(1));
  }

  function setHash(changes) {
    const params = hashParams();
    for (const [name, value] of Object.entries(changes)) {
      if (value === null || value === undefined || value === "") params.delete(name);
      else params.set(name, value);
    }
    location.hash = params.toString();
  }

  function flowLink(flowId, extra) {
    const params = new URLSearchParams();
    params.set("flow", flowId);
    for (const [name, value] of Object.entries(extra || {})) params.set(name, value);
    return "#" + params.toString();
  }

  // Sign-in.

  function signOut(message) {
    stopTail();
    sessionStorage.removeItem(TOKEN_KEY);
    $("app").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
  }

  async function signIn(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
    try {
      await loadFlows();
    } catch (e) {
      if (e.status !== 401) signOut(e.message);
      return;
    }
    // Asked of the runner: the page works without them if it does not answer.
    loadSources();
    $("sign-in").hidden = true;
    $("sign-in-error").textContent = "";
    $("app").hidden = false;
    $("sign-out").hidden = false;
    route();
  }

  // Flows: by name, status, last request, a sparkline of the last 24 h.

  function sparkline(line) {
    const width = 96;
    const height = 24;
    const peak = Math.max(1, ...line.requests);
    const step = width / line.requests.length;
    const total = line.requests.reduce((a, b) => a + b, 0);
    const failed = line.failures.reduce((a, b) => a + b, 0);
    const picture = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      width: width,
      height: height,
      class: "sparkline",
      role: "img",
      "aria-label": total + " requests, " + failed + " failed in the last 24 hours",
    });
    picture.append(svg("title", {}, total + " requests, " + failed + " failed (24 h)"));
    line.requests.forEach((count, i) => {
      if (!count) return;
      const h = Math.max(1, (count / peak) * height);
      picture.append(svg("rect", { x: i * step, y: height - h, width: step - 1, height: h, class: "ok" }));
      const bad = line.failures[i];
      if (bad) {
        const hb = Math.max(1, (bad / peak) * height);
        picture.append(svg("rect", { x: i * step, y: height - hb, width: step - 1, height: hb, class: "bad" }));
      }
    });
    return picture;
  }

  function flowName(flow) {
    return flow.name || flow.id;
  }

  function renderFlows() {
    const query = $("flow-search").value.trim().toLowerCase();
    const list = $("flows");
    list.replaceChildren();
    // A source's requests are kept under its id like a flow's, so the debugger may list
    // it among the flows (nameless): it is shown under Sources instead.
    const shown = state.flows.filter(
      (flow) =>
        !knownSource(flow.id) &&
        (!query || flowName(flow).toLowerCase().includes(query) || flow.id.includes(query))
    );
    for (const flow of shown) {
      const item = el("li");
      if (flow.id === state.flowId) item.className = "current";
      const link = el("a", flowName(flow));
      link.href = flowLink(flow.id);
      if (flow.id === state.flowId) link.setAttribute("aria-current", "page");
      const top = el("div", null, "flow-top");
      top.append(link);
      if (flow.status) top.append(el("span", flow.status, "badge status-" + flow.status));
      const bottom = el("div", null, "flow-bottom");
      const last = el("span", null, "muted small");
      if (flow.last_request_at) last.append("last ", timeElement(flow.last_request_at));
      else last.textContent = "no requests yet";
      bottom.append(last, sparkline(flow.sparkline));
      item.append(top, bottom);
      list.append(item);
    }
    $("flows-empty").hidden = shown.length > 0;
    $("flows-empty").textContent = state.flows.length ? "No flow matches." : "No flows recorded yet.";
  }

  async function loadFlows() {
    const page = await api("/v1/debugger/flows");
    state.flows = page.items;
    renderFlows();
  }

  function knownFlow(flowId) {
    return state.flows.find((flow) => flow.id === flowId);
  }

  // Sources (asked of the runner by the debugger) and their routes.

  function sourceLink(sourceId) {
    return "#source=" + encodeURIComponent(sourceId);
  }

  function dayCounts(source) {
    if (source.routed_24h === null || source.routed_24h === undefined) return "counts unavailable";
    return source.routed_24h + " routed / " + source.filtered_24h + " filtered";
  }

  function renderSources() {
    const list = $("sources");
    list.replaceChildren();
    for (const source of state.sources) {
      const item = el("li");
      const current = source.id === state.sourceId;
      if (current) item.className = "current";
      const link = el("a", source.name);
      link.href = sourceLink(source.id);
      if (current) link.setAttribute("aria-current", "page");
      const top = el("div", null, "flow-top");
      top.append(link, el("span", source.routes.length + " route" + (source.routes.length === 1 ? "" : "s"), "muted small"));
      item.append(top, el("div", dayCounts(source), "muted small"));
      list.append(item);
    }
    $("sources-empty").hidden = state.sources.length > 0;
  }

  async function loadSources() {
    try {
      const page = await api("/v1/debugger/sources");
      state.sources = page.items;
      renderSources();
      $("sources-empty").textContent = "No sources.";
      if (page.more) $("sources-empty").textContent = "More sources than listed here.";
      $("sources-empty").hidden = !page.more && state.sources.length > 0;
    } catch (e) {
      state.sources = [];
      renderSources();
      $("sources-empty").textContent = "Sources: " + e.message;
    }
    // A deep link to a source (or to a source's requests) is named once they are known.
    renderFlows();
    if (state.sourceId) openSource(state.sourceId);
    const source = state.flowId ? knownSource(state.flowId) : null;
    if (source) {
      $("flow-title").textContent = "Source " + source.name;
      $("flow-id").textContent = source.id;
    }
  }

  function knownSource(sourceId) {
    return state.sources.find((source) => source.id === sourceId);
  }

  function openSource(sourceId) {
    state.sourceId = sourceId;
    renderSources();
    const source = knownSource(sourceId);
    $("source-panel").hidden = false;
    $("source-title").textContent = source ? source.name : sourceId;
    $("source-id").textContent = sourceId;
    $("source-auth").textContent = source ? source.auth_mode || "bearer token" : "";
    $("source-requests").href = flowLink(sourceId);
    const summary = $("source-summary");
    summary.replaceChildren();
    const rows = $("routes").tBodies[0];
    rows.replaceChildren();
    if (!source) {
      summaryEntry(summary, "source", "not found in this workspace");
      $("routes-empty").hidden = true;
      return;
    }
    summaryEntry(summary, "URL", el("span", source.url, "mono"));
    summaryEntry(summary, "last 24 h", dayCounts(source));
    for (const route of source.routes) {
      const line = el("tr");
      const flowCell = el("td");
      const link = el("a", route.flow_name || route.flow_id);
      link.href = flowLink(route.flow_id);
      flowCell.append(link);
      const status = el("td");
      const shown = route.paused ? "paused" : "live";
      status.append(el("span", shown, "badge status-" + shown));
      const filter = el("td", null, "json");
      if (route.filter === null || route.filter === undefined) filter.append(el("span", "every request", "muted"));
      else filter.append(jsonNode(route.filter, null, 0));
      line.append(flowCell, status, filter);
      rows.append(line);
    }
    $("routes-empty").hidden = source.routes.length > 0;
  }

  // The chart: requests per minute by outcome (stacked bars) and p50/p95/p99.

  // The drawing's width is its container's, so text and lines are never stretched.
  const CHART = { width: 720, height: 180, left: 48, bottom: 20, top: 8, right: 8 };

  function fitChart(container) {
    CHART.width = Math.max(280, Math.round(container.clientWidth || 720));
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= value) return m * power;
    return 10 * power;
  }

  function shortNumber(value) {
    if (value >= 100) return String(Math.round(value));
    if (value >= 10) return value.toFixed(1).replace(/\.0$/, "");
    return value.toFixed(2).replace(/\.?0+$/, "") || "0";
  }

  function bucketLabel(iso, windowName) {
    const date = new Date(iso);
    if (windowName === "7d") return date.toLocaleDateString([], { weekday: "short", day: "numeric" });
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function axes(picture, max, unit, series) {
    const { width, height, left, bottom, top, right } = CHART;
    const plotHeight = height - bottom - top;
    for (const fraction of [0, 0.5, 1]) {
      const y = top + plotHeight * (1 - fraction);
      picture.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
      picture.append(
        svg("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "axis" }, shortNumber(max * fraction) + unit)
      );
    }
    const n = series.buckets.length;
    const step = (width - left - right) / n;
    for (const [i, anchor] of [[0, "start"], [Math.floor(n / 2), "middle"], [n - 1, "end"]]) {
      const x = anchor === "start" ? left + i * step : anchor === "end" ? left + (i + 1) * step : left + i * step + step / 2;
      picture.append(
        svg(
          "text",
          { x: x, y: height - 4, "text-anchor": anchor, class: "axis" },
          bucketLabel(series.buckets[i].start, series.window)
        )
      );
    }
  }

  function chartFrame(label) {
    const picture = svg("svg", {
      viewBox: "0 0 " + CHART.width + " " + CHART.height,
      class: "chart-svg",
      role: "img",
      "aria-label": label,
    });
    return picture;
  }

  function drawRequests(series) {
    fitChart($("chart"));
    const { width, height, left, bottom, top, right } = CHART;
    const minutes = series.bucket_s / 60;
    const seen = new Set();
    for (const bucket of series.buckets) for (const name of Object.keys(bucket.by_outcome)) seen.add(name);
    const order = OUTCOME_ORDER.filter((o) => seen.has(o)).concat(
      [...seen].filter((o) => !OUTCOME_ORDER.includes(o)).sort()
    );
    const peak = Math.max(0, ...series.buckets.map((b) => b.per_minute));
    const max = niceMax(peak);
    const picture = chartFrame(
      series.total + " requests in the " + WINDOW_LABELS[series.window] + ", at most " +
        shortNumber(peak) + " per minute"
    );
    picture.dataset.buckets = String(series.buckets.length);
    axes(picture, max, "", series);
    const plotHeight = height - bottom - top;
    const step = (width - left - right) / series.buckets.length;
    series.buckets.forEach((bucket, i) => {
      let y = top + plotHeight;
      const group = svg("g", { class: "bar" });
      const parts = order
        .filter((o) => bucket.by_outcome[o])
        .map((o) => o + " " + bucket.by_outcome[o]);
      group.append(
        svg(
          "title",
          {},
          new Date(bucket.start).toLocaleString() + ": " + bucket.total + " requests (" +
            shortNumber(bucket.per_minute) + "/min)" + (parts.length ? ", " + parts.join(", ") : "")
        )
      );
      for (const outcome of order) {
        const count = bucket.by_outcome[outcome];
        if (!count) continue;
        const h = (count / minutes / max) * plotHeight;
        y -= h;
        group.append(
          svg("rect", {
            x: left + i * step + 0.5,
            y: y,
            width: Math.max(0.5, step - 1),
            height: h,
            class: "fill-" + outcome.replace(/[^a-z_]/g, ""),
            "data-outcome": outcome,
          })
        );
      }
      // A transparent full-height target, so the hover title works on empty space too.
      group.prepend(svg("rect", { x: left + i * step, y: top, width: step, height: plotHeight, class: "hit" }));
      picture.append(group);
    });
    $("chart").replaceChildren(picture);
    const legend = $("legend");
    legend.replaceChildren();
    for (const outcome of order) {
      const item = el("li");
      item.append(el("span", null, "swatch fill-" + outcome.replace(/[^a-z_]/g, "")), outcome);
      legend.append(item);
    }
  }

  function drawLatency(series) {
    fitChart($("latency-chart"));
    const { width, height, left, bottom, top, right } = CHART;
    const plotHeight = height - bottom - top;
    const step = (width - left - right) / series.buckets.length;
    const peak = Math.max(0, ...series.buckets.map((b) => (b.latency_ms ? b.latency_ms.p99 : 0)));
    const max = niceMax(peak);
    const label = series.latency_ms
      ? "Duration over the " + WINDOW_LABELS[series.window] + ": p50 " + humanDuration(series.latency_ms.p50) +
        ", p95 " + humanDuration(series.latency_ms.p95) + ", p99 " + humanDuration(series.latency_ms.p99)
      : "No finished request in the " + WINDOW_LABELS[series.window];
    const picture = chartFrame(label);
    axes(picture, max, " ms", series);
    for (const name of ["p50", "p95", "p99"]) {
      const points = [];
      const dots = svg("g", { class: "dots " + name });
      series.buckets.forEach((bucket, i) => {
        if (!bucket.latency_ms) return;
        const x = left + i * step + step / 2;
        const y = top + plotHeight * (1 - bucket.latency_ms[name] / max);
        points.push(x.toFixed(1) + "," + y.toFixed(1));
        // A dot per bucket: a lone bucket is seen too, and it names its value on hover.
        const dot = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5 });
        dot.append(
          svg("title", {}, new Date(bucket.start).toLocaleString() + " " + name + " " + humanDuration(bucket.latency_ms[name]))
        );
        dots.append(dot);
      });
      if (points.length > 1) picture.append(svg("polyline", { points: points.join(" "), class: "line " + name }));
      picture.append(dots);
    }
    $("latency-chart").replaceChildren(picture);
  }

  function drawTotals(series) {
    const totals = $("totals");
    totals.replaceChildren();
    const failed = failedOutcomes().reduce((sum, o) => sum + (series.by_outcome[o] || 0), 0);
    const entries = [
      ["Requests", String(series.total)],
      ["Failed", series.total ? failed + " (" + ((failed / series.total) * 100).toFixed(1) + " %)" : "0"],
      ["p50", series.latency_ms ? humanDuration(series.latency_ms.p50) : "—"],
      ["p95", series.latency_ms ? humanDuration(series.latency_ms.p95) : "—"],
      ["p99", series.latency_ms ? humanDuration(series.latency_ms.p99) : "—"],
    ];
    for (const [name, value] of entries) {
      const item = el("div");
      item.append(el("dt", name), el("dd", value));
      totals.append(item);
    }
  }

  async function loadChart() {
    const flowId = state.flowId;
    const windowName = state.window;
    for (const button of document.querySelectorAll("[data-window]")) {
      button.setAttribute("aria-pressed", String(button.dataset.window === windowName));
    }
    $("chart-caption").textContent = "Requests per minute by outcome, " + WINDOW_LABELS[windowName];
    $("chart-error").textContent = "";
    try {
      const series = await api(flowPath(flowId, "/stats/series?window=" + encodeURIComponent(windowName)));
      if (state.flowId !== flowId || state.window !== windowName) return;
      state.series = series;
      drawTotals(series);
      drawRequests(series);
      drawLatency(series);
    } catch (e) {
      $("chart-error").textContent = "Chart: " + e.message;
    }
  }

  // Requests of a flow.

  function filterQuery() {
    const params = hashParams();
    const query = new URLSearchParams();
    for (const name of FILTERS) {
      const value = (params.get(name) || "").trim();
      if (value) query.set(name, value);
    }
    return query;
  }

  function fillFilterForm() {
    const params = hashParams();
    const form = $("filters");
    for (const name of FILTERS) form.elements[name].value = params.get(name) || "";
  }

  function requestRow(item, live) {
    const row = el("tr", null, live ? "live" : "");
    row.dataset.id = item.id;
    const received = el("td");
    received.append(timeElement(item.received_at));
    const outcome = el("td");
    outcome.append(badge(item.outcome));
    if (item.resume_at) {
      const resumes = el("span", " resumes ", "muted small resume");
      resumes.append(timeElement(item.resume_at));
      outcome.append(resumes);
    }
    row.append(
      received,
      outcome,
      el("td", item.status_code === null || item.status_code === undefined ? "—" : item.status_code),
      el("td", humanDuration(item.duration_ms), "num"),
      el("td", item.method),
      el("td", item.mode)
    );
    const idCell = el("td");
    const link = el("a", item.id, "mono");
    link.href = flowLink(item.flow_id, Object.fromEntries(filterQuery())) + "&request=" + encodeURIComponent(item.id);
    idCell.append(link);
    row.append(idCell);
    return row;
  }

  async function loadRequests(more) {
    const query = filterQuery();
    if (more && state.cursor) query.set("cursor", state.cursor);
    $("requests-error").textContent = "";
    const body = $("requests").tBodies[0];
    try {
      const page = await api(flowPath(state.flowId, "/requests?" + query));
      if (!more) body.replaceChildren();
      for (const item of page.items) body.append(requestRow(item, false));
      state.cursor = page.next_cursor;
      $("more").hidden = !page.next_cursor;
      $("requests-empty").hidden = body.rows.length > 0;
    } catch (e) {
      if (!more) body.replaceChildren();
      $("requests-error").textContent = e.message;
      $("more").hidden = true;
    }
  }

  function openFlow(flowId) {
    const windowName = hashParams().get("window") || "1h";
    const filterKey = filterQuery().toString();
    const flowChanged = state.flowId !== flowId;
    if (flowChanged) {
      stopTail();
      stopJobWatch();
      state.flowId = flowId;
      state.series = null;
      const source = knownSource(flowId);
      const flow = source ? null : knownFlow(flowId);
      $("flow-title").textContent = flow ? flowName(flow) : source ? "Source " + source.name : flowId;
      $("flow-id").textContent = (flow && flow.name) || source ? flowId : "";
      $("waiting-link").href = flowLink(flowId, { outcome: $("app").dataset.waiting });
      $("flow-status").textContent = (flow && flow.status) || "";
      $("flow-status").className = "badge status-" + ((flow && flow.status) || "none");
      $("flow-status").hidden = !(flow && flow.status);
      $("flow-panel").hidden = false;
      $("bulk-status").textContent = "";
      $("bulk-progress").hidden = true;
      $("bulk-cancel").hidden = true;
      $("alert-status").textContent = "";
      $("flow-tools").open = false;
      renderFlows();
    }
    if (flowChanged || state.window !== windowName) {
      state.window = WINDOW_LABELS[windowName] ? windowName : "1h";
      loadChart();
    }
    if (flowChanged || state.filterKey !== filterKey) {
      state.filterKey = filterKey;
      state.cursor = null;
      fillFilterForm();
      loadRequests(false);
    }
  }

  // The live tail: server-sent events read through fetch(), which (unlike
  // EventSource) can send the Authorization header.

  function stopTail() {
    if (state.tail) state.tail.abort();
    state.tail = null;
    const toggle = $("tail-toggle");
    toggle.setAttribute("aria-pressed", "false");
    toggle.textContent = "Live tail";
    $("tail-status").textContent = "";
  }

  function onEvent(frame) {
    let event = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (event !== "request" || data.length === 0) return;
    const item = JSON.parse(data.join("\n"));
    const body = $("requests").tBodies[0];
    const existing = body.querySelector('tr[data-id="' + CSS.escape(item.id) + '"]');
    const row = requestRow(item, true);
    if (existing) existing.replaceWith(row);
    else body.prepend(row);
    $("requests-empty").hidden = true;
  }

  async function startTail() {
    const controller = new AbortController();
    state.tail = controller;
    const toggle = $("tail-toggle");
    toggle.setAttribute("aria-pressed", "true");
    toggle.textContent = "Stop tail";
    $("tail-status").textContent = "Connecting…";
    const flowId = state.flowId;
    try {
      const answer = await fetch(flowPath(flowId, "/requests/stream"), {
        headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!answer.ok) {
        let message = "HTTP " + answer.status;
        try {
          message = (await answer.json()).message || message;
        } catch (e) {
          // not the envelope: keep the status
        }
        throw new Error(message);
      }
      $("tail-status").textContent = "Tailing: new requests appear at the top (filters do not apply).";
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
      if (state.tail === controller) {
        stopTail();
        $("tail-status").textContent = "The tail ended; start it again.";
      }
    } catch (e) {
      if (state.tail === controller) {
        stopTail();
        $("tail-status").textContent = "Tail stopped: " + e.message;
      }
    }
  }

  // A folding JSON viewer: objects and arrays as <details> (keyboard and screen
  // reader friendly as they are), leaves as text.

  function jsonNode(value, key, depth) {
    const isObject = value !== null && typeof value === "object";
    if (!isObject) {
      const line = el("div", null, "json-leaf");
      if (key !== null) line.append(el("span", key, "json-key"), ": ");
      const kind = value === null ? "null" : typeof value;
      line.append(el("span", JSON.stringify(value), "json-" + kind));
      return line;
    }
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
    const node = el("details", null, "json-node");
    node.open = depth < 2 && entries.length <= 50;
    const summary = el("summary");
    if (key !== null) summary.append(el("span", key, "json-key"), ": ");
    summary.append(
      el("span", Array.isArray(value) ? "[" + entries.length + " items]" : "{" + entries.length + " keys}", "muted")
    );
    node.append(summary);
    const children = el("div", null, "json-children");
    for (const [childKey, child] of entries) children.append(jsonNode(child, childKey, depth + 1));
    node.append(children);
    return node;
  }

  function showJson(container, value) {
    container.replaceChildren();
    if (value === undefined || value === null || value === "") {
      container.append(el("span", "—", "muted"));
      return;
    }
    container.append(jsonNode(value, null, 0));
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (e) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  }

  // A response's body is text; a JSON one is shown (and compared) parsed.
  function readableResponse(response) {
    if (!response || typeof response.body !== "string") return response;
    if (!/json/i.test(response.content_type || "")) return response;
    try {
      return Object.assign({}, response, { body: JSON.parse(response.body) });
    } catch (e) {
      return response;
    }
  }

  // One request in full.

  function summaryEntry(list, name, value) {
    if (value === undefined || value === null || value === "") return;
    const dd = el("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = pretty(value);
    list.append(el("dt", name), dd);
  }

  function headerEntries(headers) {
    if (!headers) return [];
    if (Array.isArray(headers)) return headers;
    return Object.entries(headers);
  }

  // A link to the tracing UI when the debugger is given a URL template
  // (FLOWHOOKS_DEBUGGER_TRACE_URL_TEMPLATE, an http(s) URL: checked there and here).
  function traceId(id) {
    const template = $("app").dataset.traceUrlTemplate || "";
    if (!/^https?:\/\//.test(template) || !/^[0-9a-f]{32}$/.test(id)) return el("span", id, "mono");
    const link = el("a", id, "mono");
    link.id = "trace-link";
    link.href = template.split("{trace_id}").join(encodeURIComponent(id));
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    return link;
  }

  function requestLink(flowId, requestId, text) {
    const link = el("a", text || requestId, "mono");
    link.href = flowLink(flowId) + "&request=" + encodeURIComponent(requestId);
    return link;
  }

  function durationBetween(start, end) {
    if (!start || !end) return null;
    return Date.parse(end) - Date.parse(start);
  }

  function stepTimeline(row) {
    const steps = $("steps");
    steps.replaceChildren();
    const list = row.steps || [];
    if (!list.length) {
      steps.append(el("li", "No step ran.", "muted"));
      return;
    }
    const longest = Math.max(1, ...list.map((s) => s.duration_ms || 0));
    list.forEach((step, i) => {
      const item = el("li", null, "step status-" + String(step.status || "").replace(/[^a-z_]/g, ""));
      const head = el("div", null, "step-head");
      head.append(el("strong", step.ref_id || "step " + (i + 1)));
      if (step.type) head.append(el("span", step.type, "muted"));
      if (step.status) head.append(badge(step.status));
      head.append(el("span", humanDuration(step.duration_ms), "num"));
      const bar = el("span", null, "step-bar");
      bar.append(el("span", null, "step-bar-fill"));
      bar.firstChild.style.width = Math.max(2, ((step.duration_ms || 0) / longest) * 100) + "%";
      head.append(bar);
      item.append(head);
      for (const part of ["input", "output", "error"]) {
        if (step[part] === undefined || step[part] === null) continue;
        const block = el("details", null, "step-part");
        block.open = part !== "input";
        const summary = el("summary", part);
        const copyButton = el("button", "Copy", "copy");
        copyButton.type = "button";
        copyButton.addEventListener("click", (event) => {
          event.preventDefault();
          copy(pretty(step[part]), copyButton);
        });
        summary.append(" ", copyButton);
        const view = el("div", null, "json");
        showJson(view, step[part]);
        block.append(summary, view);
        item.append(block);
      }
      const rest = Object.assign({}, step);
      for (const known of ["ref_id", "type", "status", "duration_ms", "input", "output", "error"]) delete rest[known];
      if (Object.keys(rest).length) {
        const block = el("details", null, "step-part");
        block.append(el("summary", "other fields"));
        const view = el("div", null, "json");
        showJson(view, rest);
        block.append(view);
        item.append(block);
      }
      steps.append(item);
    });
  }

  async function openRequest(requestId) {
    state.requestId = requestId;
    state.record = null;
    $("detail").hidden = false;
    $("detail-error").textContent = "";
    $("replay-result").hidden = true;
    $("replay-editor").hidden = true;
    $("edit-replay").setAttribute("aria-expanded", "false");
    $("compare").hidden = true;
    $("detail-id").textContent = requestId;
    let row;
    try {
      row = await api("/v1/requests/" + encodeURIComponent(requestId));
    } catch (e) {
      $("detail-error").textContent = e.message;
      return;
    }
    if (state.requestId !== requestId) return;
    state.record = row;
    // Keyboard and screen reader users land on what they opened.
    $("detail-title").focus();
    $("detail-outcome").replaceWith(Object.assign(badge(row.outcome), { id: "detail-outcome" }));
    const summary = $("summary");
    summary.replaceChildren();
    const flow = knownFlow(row.flow_id);
    const flowAnchor = el("a", flow ? flowName(flow) : row.flow_id);
    flowAnchor.href = flowLink(row.flow_id);
    summaryEntry(summary, "flow", flowAnchor);
    if (row.received_at) {
      const when = el("span");
      when.append(timeElement(row.received_at), el("span", "  " + row.received_at, "muted"));
      summaryEntry(summary, "received", when);
    }
    summaryEntry(summary, "request", [row.method, row.path].filter(Boolean).join(" "));
    summaryEntry(summary, "content type", row.content_type);
    summaryEntry(summary, "mode", row.mode);
    summaryEntry(summary, "duration", humanDuration(durationBetween(row.received_at, row.finished_at)));
    summaryEntry(summary, "status", row.response && row.response.status_code);
    summaryEntry(summary, "ran again", row.repeated);
    summaryEntry(summary, "raw body", row.raw_body_encoding !== "utf-8" ? row.raw_body_encoding : null);
    summaryEntry(summary, "cut when stored", row.truncated);
    if (row.resume_at) {
      const resumes = el("span");
      resumes.append(timeElement(row.resume_at), el("span", "  " + row.resume_at, "muted"));
      summaryEntry(summary, "resumes", resumes);
    }
    if (row.answered_at) {
      const answered = el("span");
      answered.append(timeElement(row.answered_at), el("span", "  " + row.answered_at, "muted"));
      summaryEntry(summary, "answered", answered);
    }
    if (row.raw_body_truncated) summaryEntry(summary, "raw body cut", "yes");
    if (row.trace_id) summaryEntry(summary, "trace id", traceId(row.trace_id));

    const links = $("links");
    links.replaceChildren();
    if (row.replay_of) links.append("Replay of ", requestLink(row.flow_id, row.replay_of), ". ");
    if (row.duplicate_of) links.append("Duplicate of ", requestLink(row.flow_id, row.duplicate_of), ". ");
    if (row.debounced_by) links.append("Debounced by ", requestLink(row.flow_id, row.debounced_by), ". ");
    // A source's request and its runs are opened by id (the detail reads /v1/requests/{id}).
    if (row.source_request_id) {
      links.append("Routed by source request ", requestLink(row.flow_id, row.source_request_id), ". ");
    }
    if (row.runs && row.runs.length) {
      links.append("Runs: ");
      row.runs.forEach((runId, index) => {
        if (index) links.append(", ");
        links.append(requestLink(row.flow_id, runId));
      });
      links.append(". ");
    }

    const headers = $("headers").tBodies[0];
    headers.replaceChildren();
    for (const [name, value] of headerEntries(row.headers)) {
      const line = el("tr");
      const th = el("th", name);
      th.scope = "row";
      line.append(th, el("td", pretty(value)));
      headers.append(line);
    }
    showJson($("query"), row.query && Object.keys(row.query).length ? row.query : null);
    showJson($("input"), row.input);
    $("raw-body").textContent = pretty(row.raw_body);
    $("error").textContent = pretty(row.error);
    // A handshake's response is the answer given to the provider's challenge.
    $("response-title").firstChild.textContent = row.outcome === "handshake" ? "Handshake answer " : "Response ";
    showJson($("response"), readableResponse(row.response));
    showJson($("callback"), row.callback || null);
    stepTimeline(row);
    const replays = $("replays");
    replays.replaceChildren();
    for (const replay of row.replays || []) {
      const id = typeof replay === "string" ? replay : replay.id;
      const item = el("li");
      item.append(requestLink(row.flow_id, id));
      replays.append(item);
    }
    if (!(row.replays || []).length) replays.append(el("li", "none", "muted"));
    $("replay-body").value = pretty(row.input === null || row.input === undefined ? {} : row.input);
    if (row.replay_of) compareWithOriginal(row);
  }

  // A side-by-side diff of a replay against its original: pretty JSON, line by line
  // (longest common subsequence; bounded, past it the two are shown unmatched).

  const MAX_DIFF_LINES = 2000;

  function diffLines(left, right) {
    const a = left.split("\n");
    const b = right.split("\n");
    if (a.length > MAX_DIFF_LINES || b.length > MAX_DIFF_LINES) {
      const rows = [];
      for (let i = 0; i < Math.max(a.length, b.length); i++) {
        rows.push({ left: a[i], right: b[i], kind: a[i] === b[i] ? "same" : "changed" });
      }
      return rows;
    }
    const n = a.length;
    const m = b.length;
    const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    const rows = [];
    let i = 0;
    let j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && a[i] === b[j]) {
        rows.push({ left: a[i++], right: b[j++], kind: "same" });
      } else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) {
        rows.push({ left: undefined, right: b[j++], kind: "added" });
      } else {
        rows.push({ left: a[i++], right: undefined, kind: "removed" });
      }
    }
    return rows;
  }

  function showDiff(container, before, after) {
    const table = el("table", null, "diff-table");
    const head = el("tr");
    for (const name of ["Original", "Replay"]) {
      const th = el("th", name);
      th.scope = "col";
      head.append(th);
    }
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    const rows = diffLines(pretty(before) || "null", pretty(after) || "null");
    let changes = 0;
    for (const line of rows) {
      const tr = el("tr", null, "diff-" + line.kind);
      if (line.kind !== "same") changes++;
      tr.append(
        el("td", line.left === undefined ? "" : line.left, line.kind === "added" ? "blank" : ""),
        el("td", line.right === undefined ? "" : line.right, line.kind === "removed" ? "blank" : "")
      );
      table.tBodies[0].append(tr);
    }
    container.replaceChildren(
      el("p", changes ? changes + " changed line(s)" : "identical", "muted small diff-summary"),
      table
    );
  }

  async function compareWithOriginal(replay) {
    let original;
    try {
      original = await api("/v1/requests/" + encodeURIComponent(replay.replay_of));
    } catch (e) {
      return;
    }
    if (state.requestId !== replay.id) return;
    const link = $("compare-original");
    link.textContent = original.id;
    link.href = flowLink(original.flow_id) + "&request=" + encodeURIComponent(original.id);
    showDiff($("diff-input"), original.input, replay.input);
    showDiff($("diff-response"), readableResponse(original.response), readableResponse(replay.response));
    $("compare").hidden = false;
  }

  async function replay(edit) {
    const requestId = state.requestId;
    const buttons = [$("replay"), $("replay-edited")];
    buttons.forEach((b) => (b.disabled = true));
    $("detail-error").textContent = "";
    try {
      const result = await api("/v1/requests/" + encodeURIComponent(requestId) + "/replay", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(edit || {}),
      });
      const link = $("replay-link");
      link.textContent = result.request_id;
      link.href = flowLink(state.flowId || (state.record && state.record.flow_id) || "") + "&request=" +
        encodeURIComponent(result.request_id);
      $("replay-outcome").textContent = result.outcome;
      $("replay-result").hidden = false;
    } catch (e) {
      $("detail-error").textContent = "Replay failed: " + e.message;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  function editedInput() {
    const text = $("replay-body").value;
    try {
      const value = JSON.parse(text);
      $("replay-body-error").textContent = "";
      $("replay-body").removeAttribute("aria-invalid");
      $("replay-edited").disabled = false;
      return { ok: true, value: value };
    } catch (e) {
      $("replay-body-error").textContent = "Not valid JSON: " + e.message;
      $("replay-body").setAttribute("aria-invalid", "true");
      $("replay-edited").disabled = true;
      return { ok: false };
    }
  }

  // Bulk replay jobs, their progress polled while they run.

  function stopJobWatch() {
    if (state.job) clearTimeout(state.job.timer);
    state.job = null;
  }

  function showJob(job) {
    const progress = $("bulk-progress");
    progress.hidden = false;
    progress.max = Math.max(1, job.total || 0);
    progress.value = job.done || 0;
    $("bulk-status").textContent =
      "Job " + job.id + ": " + job.status + ", " + (job.done || 0) + " of " + (job.total || 0) +
      " replayed (" + (job.succeeded || 0) + " succeeded, " + (job.failed || 0) + " failed, " +
      (job.skipped || 0) + " skipped)" + (job.reason ? " — " + job.reason : "");
    const running = job.status === "running";
    $("bulk-cancel").hidden = !running;
    return running;
  }

  async function watchJob(jobId) {
    stopJobWatch();
    const watch = { id: jobId, timer: null };
    state.job = watch;
    const poll = async () => {
      try {
        const job = await api("/v1/replays/" + encodeURIComponent(jobId));
        if (state.job !== watch) return;
        if (showJob(job)) watch.timer = setTimeout(poll, 1000);
      } catch (e) {
        $("bulk-status").textContent = "Job: " + e.message;
      }
    };
    await poll();
  }

  async function startBulk() {
    const form = new FormData($("bulk-form"));
    const filter = {};
    for (const name of ["outcome", "since", "until"]) {
      const value = String(form.get(name) || "").trim();
      if (value) filter[name] = value;
    }
    $("bulk-status").textContent = "Starting…";
    try {
      const job = await api(flowPath(state.flowId, "/replays"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(Object.keys(filter).length ? { filter: filter } : {}),
      });
      await watchJob(job.id);
    } catch (e) {
      $("bulk-status").textContent = "Bulk replay: " + e.message;
    }
  }

  async function cancelBulk() {
    if (!state.job) return;
    try {
      showJob(await api("/v1/replays/" + encodeURIComponent(state.job.id), { method: "DELETE" }));
    } catch (e) {
      $("bulk-status").textContent = "Cancel: " + e.message;
    }
  }

  // Alert settings (the `manage` scope).

  async function loadAlert() {
    const form = $("alert-form");
    $("alert-status").textContent = "";
    try {
      const alert = await api(flowPath(state.flowId, "/alert"));
      for (const name of ["url", "failure_rate", "window_s", "min_requests"]) form.elements[name].value = alert[name];
      $("alert-status").textContent = "Signing secret: " + alert.secret_hint;
    } catch (e) {
      form.reset();
      $("alert-status").textContent = e.status === 404 ? "No alert set." : e.message;
    }
  }

  async function saveAlert() {
    const form = $("alert-form");
    const body = {
      url: form.elements.url.value.trim(),
      failure_rate: Number(form.elements.failure_rate.value),
      window_s: Math.round(Number(form.elements.window_s.value)),
      min_requests: Math.round(Number(form.elements.min_requests.value)),
    };
    try {
      const alert = await api(flowPath(state.flowId, "/alert"), {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      $("alert-status").textContent =
        "Saved." + (alert.secret ? " Signing secret (shown once): " + alert.secret : " Secret: " + alert.secret_hint);
    } catch (e) {
      $("alert-status").textContent = "Not saved: " + e.message;
    }
  }

  async function deleteAlert() {
    try {
      await api(flowPath(state.flowId, "/alert"), { method: "DELETE" });
      $("alert-form").reset();
      $("alert-status").textContent = "Deleted.";
    } catch (e) {
      $("alert-status").textContent = e.status === 404 ? "No alert set." : e.message;
    }
  }

  // Navigation: everything the page shows is in the fragment (no token, ever).

  function route() {
    if (!token()) return;
    const params = hashParams();
    const flowId = params.get("flow");
    const sourceId = params.get("source");
    const requestId = params.get("request");
    if (sourceId && !flowId) {
      stopTail();
      state.flowId = null;
      $("flow-panel").hidden = true;
      openSource(sourceId);
    } else {
      state.sourceId = null;
      $("source-panel").hidden = true;
      if (state.sources.length) renderSources();
    }
    if (flowId) {
      openFlow(flowId);
      $("flow-panel").hidden = false;
    }
    if (requestId) {
      if (requestId !== state.requestId) openRequest(requestId);
    } else {
      state.requestId = null;
      $("detail").hidden = true;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      $("token").value = "";
      if (value) signIn(value);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("flow-search").addEventListener("input", renderFlows);
    for (const button of document.querySelectorAll("[data-window]")) {
      button.addEventListener("click", () => setHash({ window: button.dataset.window }));
    }
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = new FormData($("filters"));
      const changes = { request: null };
      for (const name of FILTERS) changes[name] = String(form.get(name) || "").trim();
      setHash(changes);
    });
    $("more").addEventListener("click", () => loadRequests(true));
    $("tail-toggle").addEventListener("click", () => {
      if (state.tail) stopTail();
      else startTail();
    });
    $("replay").addEventListener("click", () => replay(null));
    $("edit-replay").addEventListener("click", () => {
      const editor = $("replay-editor");
      editor.hidden = !editor.hidden;
      $("edit-replay").setAttribute("aria-expanded", String(!editor.hidden));
      if (!editor.hidden) {
        editedInput();
        $("replay-body").focus();
      }
    });
    $("replay-body").addEventListener("input", editedInput);
    $("replay-edited").addEventListener("click", () => {
      const edited = editedInput();
      if (edited.ok) replay({ body: edited.value, force: $("replay-force").checked });
    });
    $("close-detail").addEventListener("click", () => setHash({ request: null }));
    for (const button of document.querySelectorAll("button.copy[data-copy]")) {
      button.addEventListener("click", () => {
        if (state.record) copy(pretty(state.record[button.dataset.copy]), button);
      });
    }
    $("flow-tools").addEventListener("toggle", () => {
      if ($("flow-tools").open && state.flowId) loadAlert();
    });
    $("bulk-form").addEventListener("submit", (event) => {
      event.preventDefault();
      startBulk();
    });
    $("bulk-cancel").addEventListener("click", cancelBulk);
    $("alert-form").addEventListener("submit", (event) => {
      event.preventDefault();
      saveAlert();
    });
    $("alert-delete").addEventListener("click", deleteAlert);
    document.addEventListener("keydown", (event) => {
      // Escape closes the detail, as its Close button does.
      if (event.key === "Escape" && state.requestId && !event.target.closest("textarea")) {
        setHash({ request: null });
      }
    });
    window.addEventListener("hashchange", route);
    // Relative times stay true while the page is open.
    setInterval(() => {
      for (const node of document.querySelectorAll("time[datetime]")) {
        node.textContent = relativeTime(node.dateTime);
      }
    }, 30000);
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        if (state.series && !$("flow-panel").hidden) {
          drawRequests(state.series);
          drawLatency(state.series);
        }
      }, 150);
    });
    if (token()) signIn(token());
  });
})();
