// The flowhooks debugger page. Data comes only from this service's JSON API, called
// with the token kept in sessionStorage. Every stored value is written with
// textContent (never innerHTML): a request body is data, never markup.
"use strict";

(function () {
  const TOKEN_KEY = "flowhooks.debugger.token";
  const state = { flowId: null, cursor: null, tail: null, requestId: null };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function pretty(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, body) {
      const error = body && body.error ? body.error : {};
      super(error.message || "HTTP " + status);
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
    $("sign-in").hidden = true;
    $("sign-in-error").textContent = "";
    $("app").hidden = false;
    $("sign-out").hidden = false;
    route();
  }

  // Flows.

  async function loadFlows() {
    const page = await api("/v1/debugger/flows");
    const list = $("flows");
    list.replaceChildren();
    for (const flow of page.items) {
      const item = el("li");
      const link = el("a", flow.id);
      link.href = "#flow=" + encodeURIComponent(flow.id);
      item.append(link);
      if (flow.last_request_at) item.append(el("span", " last " + flow.last_request_at, "muted"));
      list.append(item);
    }
    $("flows-empty").hidden = page.items.length > 0;
  }

  // Requests of a flow.

  function filterQuery() {
    const form = new FormData($("filters"));
    const query = new URLSearchParams();
    for (const name of ["outcome", "mode", "since", "until", "match", "header"]) {
      const value = String(form.get(name) || "").trim();
      if (value) query.set(name, value);
    }
    return query;
  }

  function requestRow(item, live) {
    const row = el("tr", null, live ? "live" : "");
    row.dataset.id = item.id;
    const cells = [
      item.received_at,
      item.method,
      item.mode,
      item.outcome,
      item.status_code,
      item.duration_ms,
    ];
    for (const value of cells) row.append(el("td", value));
    const idCell = el("td");
    const link = el("a", item.id);
    link.href = "#flow=" + encodeURIComponent(item.flow_id) + "&request=" + encodeURIComponent(item.id);
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
      const page = await api("/v1/flows/" + encodeURIComponent(state.flowId) + "/requests?" + query);
      if (!more) body.replaceChildren();
      for (const item of page.items) body.append(requestRow(item, false));
      state.cursor = page.next_cursor;
      $("more").hidden = !page.next_cursor;
    } catch (e) {
      if (!more) body.replaceChildren();
      $("requests-error").textContent = e.message;
      $("more").hidden = true;
    }
  }

  function openFlow(flowId) {
    if (state.flowId !== flowId) {
      stopTail();
      state.flowId = flowId;
      state.cursor = null;
      $("flow-title").textContent = flowId;
      $("requests-panel").hidden = false;
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
      const answer = await fetch("/v1/flows/" + encodeURIComponent(flowId) + "/requests/stream", {
        headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!answer.ok) {
        let message = "HTTP " + answer.status;
        try {
          message = (await answer.json()).error.message;
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

  // One request in full.

  function summaryEntry(list, name, value) {
    if (value === undefined || value === null || value === "") return;
    list.append(el("dt", name), el("dd", pretty(value)));
  }

  function headerEntries(headers) {
    if (!headers) return [];
    if (Array.isArray(headers)) return headers;
    return Object.entries(headers);
  }

  async function openRequest(requestId) {
    state.requestId = requestId;
    $("detail").hidden = false;
    $("detail-error").textContent = "";
    $("replay-result").hidden = true;
    $("detail-id").textContent = requestId;
    let row;
    try {
      row = await api("/v1/requests/" + encodeURIComponent(requestId));
    } catch (e) {
      $("detail-error").textContent = e.message;
      return;
    }
    if (state.requestId !== requestId) return;
    const summary = $("summary");
    summary.replaceChildren();
    for (const name of [
      "flow_id", "received_at", "method", "path", "content_type", "mode", "outcome",
      "started_at", "finished_at", "replay_of", "duplicate_of", "raw_body_encoding",
      "raw_body_truncated", "truncated", "callback", "trace_id",
    ]) {
      summaryEntry(summary, name, row[name]);
    }
    const headers = $("headers").tBodies[0];
    headers.replaceChildren();
    for (const [name, value] of headerEntries(row.headers)) {
      const line = el("tr");
      line.append(el("th", name), el("td", pretty(value)));
      headers.append(line);
    }
    $("query").textContent = pretty(row.query);
    $("input").textContent = pretty(row.input);
    $("raw-body").textContent = pretty(row.raw_body);
    $("error").textContent = pretty(row.error);
    $("response").textContent = pretty(row.response);
    const steps = $("steps");
    steps.replaceChildren();
    for (const step of row.steps || []) {
      const item = el("li");
      const title = [step.ref_id, step.type, step.status].filter((v) => v !== undefined);
      if (step.duration_ms !== undefined) title.push(step.duration_ms + " ms");
      item.append(el("strong", title.join(" · ")), el("pre", pretty(step)));
      steps.append(item);
    }
    const replays = $("replays");
    replays.replaceChildren();
    for (const replay of row.replays || []) {
      const id = typeof replay === "string" ? replay : replay.id;
      const item = el("li");
      const link = el("a", id);
      link.href = "#flow=" + encodeURIComponent(row.flow_id) + "&request=" + encodeURIComponent(id);
      item.append(link);
      if (replay.outcome) item.append(el("span", " " + replay.outcome, "muted"));
      replays.append(item);
    }
  }

  async function replay() {
    const requestId = state.requestId;
    const button = $("replay");
    button.disabled = true;
    $("detail-error").textContent = "";
    try {
      const result = await api("/v1/requests/" + encodeURIComponent(requestId) + "/replay", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      });
      const link = $("replay-link");
      link.textContent = result.request_id;
      link.href = "#flow=" + encodeURIComponent(state.flowId || "") + "&request=" +
        encodeURIComponent(result.request_id);
      $("replay-outcome").textContent = result.outcome;
      $("replay-result").hidden = false;
    } catch (e) {
      $("detail-error").textContent = "Replay failed: " + e.message;
    } finally {
      button.disabled = false;
    }
  }

  // Navigation: #flow=<id>&request=<id> (no token in the URL, ever).

  function route() {
    if (!token()) return;
    const params = new URLSearchParams(location.hash.slice(1));
    const flowId = params.get("flow");
    const requestId = params.get("request");
    if (flowId) openFlow(flowId);
    if (requestId) {
      openRequest(requestId);
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
    $("open-flow-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("open-flow-id").value.trim();
      if (value) location.hash = "flow=" + encodeURIComponent(value);
    });
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      state.cursor = null;
      loadRequests(false);
    });
    $("more").addEventListener("click", () => loadRequests(true));
    $("tail-toggle").addEventListener("click", () => {
      if (state.tail) stopTail();
      else startTail();
    });
    $("replay").addEventListener("click", replay);
    $("close-detail").addEventListener("click", () => {
      location.hash = "flow=" + encodeURIComponent(state.flowId || "");
    });
    window.addEventListener("hashchange", route);
    if (token()) signIn(token());
  });
})();
