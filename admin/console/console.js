// The Headwater console: the admin REST API in a page. The credential lives in
// this closure only (never a URL, a cookie or storage) and goes out in an
// Authorization header; live updates are Server-Sent Events read with fetch,
// since EventSource cannot send that header.
"use strict";
(() => {
  let token = null;
  let current = null;
  let hls = null;
  let timer = null;
  const streams = new Set();
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  function problemOf(status, text) {
    let p = null;
    try { p = JSON.parse(text); } catch { /* not JSON */ }
    const message = p && p.detail
      ? `${p.title || "Error"}: ${p.detail}${p.field ? ` (field: ${p.field})` : ""}`
      : `HTTP ${status}${text ? `: ${text}` : ""}`;
    const e = new Error(message);
    e.status = status;
    e.problem = p;
    return e;
  }

  function showError(e) {
    const el = $("error");
    el.textContent = e && e.message ? e.message : String(e);
    el.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  async function api(method, path, body) {
    const headers = { authorization: `Bearer ${token}` };
    const init = { method, headers };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    if (!res.ok) throw problemOf(res.status, text);
    return text ? JSON.parse(text) : null;
  }

  // Reads a text/event-stream response as it arrives and calls onEvent with
  // each event ({event, id, data}); returns when the stream ends.
  async function watch(path, onEvent, signal) {
    const res = await fetch(path, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" }, signal });
    if (!res.ok) throw problemOf(res.status, await res.text());
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let end;
      while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end).replace(/^\r?\n\r?\n/, "");
        const ev = { event: "message", id: null, data: [] };
        for (const line of block.split(/\r?\n/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? "" : line.slice(colon + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "event") ev.event = v;
          else if (field === "data") ev.data.push(v);
          else if (field === "id") ev.id = v;
        }
        if (ev.data.length) onEvent({ event: ev.event, id: ev.id, data: ev.data.join("\n") });
      }
    }
  }

  function cell(content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content == null ? "-" : String(content);
    return td;
  }

  function fill(table, rows) {
    const tbody = $(table).tBodies[0];
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      tr.append(...cells.map(cell));
      return tr;
    }));
    return [...tbody.rows];
  }

  function button(label, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    return b;
  }

  const offerText = (o) => (o.mbps ? `${o.kind} ${o.mbps} Mbit/s` : o.kind);
  // The random end of a UUIDv7 (its start is the time, the same for ids made together).
  const short = (id) => (id ? String(id).slice(-8) : "-");

  function fmtBytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    let v = n;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return `${i ? v.toFixed(1) : v} ${units[i]}`;
  }

  // ---- customers ----

  function locatorCell(locator) {
    const span = document.createElement("span");
    const code = document.createElement("code");
    code.textContent = locator;
    const copy = button("Copy", async () => {
      try {
        await navigator.clipboard.writeText(locator);
        copy.textContent = "Copied";
      } catch {
        getSelection().selectAllChildren(code);
        copy.textContent = "Selected: press Ctrl+C";
      }
    });
    copy.className = "copy";
    span.append(code, " ", copy);
    return span;
  }

  async function loadAccounts() {
    const page = await api("GET", "/v1/accounts?limit=100");
    const rows = fill("accounts", page.items.map((a) => [
      button(a.name, () => selectAccount(a.name).catch(showError)),
      a.origin_type,
      offerText(a.offer),
      a.state,
      a.pool ? `${a.pool.kind} ${a.pool.ready_nodes}/${a.pool.desired_nodes}` : "-",
      a.availability == null ? "-" : `${(a.availability * 100).toFixed(1)} %`,
      locatorCell(a.locator),
    ]));
    rows.forEach((tr, i) => {
      tr.dataset.account = page.items[i].name;
      tr.classList.toggle("selected", page.items[i].name === current);
    });
    return page.items;
  }

  async function selectAccount(name) {
    clearError();
    current = name;
    $("account").hidden = false;
    $("account-name").textContent = name;
    for (const tr of $("accounts").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.account === name);
    const a = await api("GET", `/v1/accounts/${enc(name)}`);
    $("offer-kind").value = a.offer.kind;
    $("offer-mbps").value = a.offer.mbps || "";
    await Promise.all([loadAssets(a), loadUsage(name)]);
  }

  // The first asset's master playlist, wherever the folder keeps it.
  async function defaultPath(a, assets) {
    if (!assets.length) return "";
    const asset = assets[0].name;
    for (const p of [`${asset}/hls/master.m3u8`, `${asset}/master.m3u8`]) {
      try {
        const res = await fetch(a.locator + p, { method: "HEAD" });
        if (res.ok) return p;
      } catch { /* the router is unreachable from here */ }
    }
    return `${asset}/master.m3u8`;
  }

  async function loadAssets(a) {
    const list = await api("GET", `/v1/accounts/${enc(a.name)}/assets`);
    fill("assets", list.items.map((x) => [x.name, x.files, x.bytes]));
    if (!$("play-path").value || $("play-path").dataset.account !== a.name) {
      $("play-path").value = await defaultPath(a, list.items);
      $("play-path").dataset.account = a.name;
    }
    $("play-form").dataset.locator = a.locator;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    return el;
  }

  // Bars of bytes per window, and a line of each window's peak Mbit/s.
  function chart(windows) {
    const W = 480;
    const H = 120;
    const n = windows.length || 1;
    const maxBytes = Math.max(1, ...windows.map((w) => w.bytes));
    const maxPeak = Math.max(0.001, ...windows.map((w) => w.peak_mbps));
    const out = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    const points = [];
    windows.forEach((w, i) => {
      const h = Math.round((w.bytes / maxBytes) * (H - 12));
      const r = svg("rect", { x: (i * W) / n + 1, y: H - h, width: Math.max(1, W / n - 2), height: h, "data-bytes": w.bytes });
      const title = svg("title");
      title.textContent = `${w.window_start}: ${fmtBytes(w.bytes)}, ${w.requests} requests, peak ${w.peak_mbps} Mbit/s`;
      r.append(title);
      out.append(r);
      points.push(`${(i + 0.5) * (W / n)},${H - (w.peak_mbps / maxPeak) * (H - 12)}`);
    });
    out.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: "#d9822b", "stroke-width": 2, class: "peak" }));
    // The scale: the largest bar and peak at the top, the range along the bottom.
    const label = (x, y, text, anchor) => {
      const el = svg("text", { x, y, "font-size": 10, fill: "#5b6472", "text-anchor": anchor });
      el.textContent = text;
      out.append(el);
    };
    label(4, 10, `${fmtBytes(maxBytes)} · ${maxPeak} Mbit/s`, "start");
    if (windows.length) {
      label(4, H - 2, windows[0].window_start.slice(0, 16).replace("T", " "), "start");
      label(W - 4, H - 2, windows[windows.length - 1].window_start.slice(0, 16).replace("T", " "), "end");
    }
    return out;
  }

  async function loadUsage(name) {
    for (const g of ["hour", "day"]) {
      const u = await api("GET", `/v1/accounts/${enc(name)}/usage?granularity=${g}`);
      $(`usage-${g}`).replaceChildren(chart(u.windows));
      const total = $(`usage-${g}-total`);
      total.textContent = `${fmtBytes(u.total_bytes)} in ${u.total_requests} requests; peak ${u.peak_mbps} Mbit/s, 95th percentile ${u.p95_mbps} Mbit/s (bars: bytes, line: peak Mbit/s)`;
      total.dataset.bytes = u.total_bytes;
    }
  }

  function play(url) {
    const video = $("video");
    if (hls) { hls.destroy(); hls = null; }
    if (window.Hls && window.Hls.isSupported()) {
      hls = new window.Hls();
      hls.on(window.Hls.Events.ERROR, (_, d) => {
        if (d.fatal) showError(new Error(`The player stopped: ${d.type} ${d.details}${d.response ? ` (HTTP ${d.response.code})` : ""}`));
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else {
      video.src = url;
    }
    video.play().catch(() => { /* starts once media is attached */ });
    $("play-status").textContent = `Playing ${url}`;
  }

  function upload(path, file, onSent) {
    return new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open("PUT", path);
      x.setRequestHeader("authorization", `Bearer ${token}`);
      x.upload.onprogress = (e) => onSent(e.loaded);
      x.onload = () => (x.status < 300 ? resolve() : reject(problemOf(x.status, x.responseText)));
      x.onerror = () => reject(new Error(`The upload of ${path} failed: the connection broke`));
      x.send(file);
    });
  }

  function progress(share) {
    const pct = Math.min(100, Math.round(share * 100));
    $("upload-progress").value = pct;
    $("upload-percent").textContent = `${pct} %`;
  }

  async function followOperation(op) {
    $("op-title").textContent = `${op.kind} ${short(op.id)}`;
    const ol = $("op-steps");
    ol.replaceChildren();
    const state = $("op-state");
    let shown = 0;
    const show = (o) => {
      for (const s of o.steps.slice(shown)) {
        const li = document.createElement("li");
        li.className = "done";
        li.textContent = `${s.step} (${s.at})`;
        ol.append(li);
      }
      shown = Math.max(shown, o.steps.length);
      state.textContent = o.state + (o.last_error ? `: ${o.last_error}` : "");
      state.dataset.state = o.state;
    };
    show(op);
    const ctl = new AbortController();
    streams.add(ctl);
    try {
      await watch(`/v1/operations/${op.id}/watch`, (ev) => { if (ev.event === "operation") show(JSON.parse(ev.data)); }, ctl.signal);
    } finally {
      streams.delete(ctl);
    }
  }

  async function change(request) {
    clearError();
    try {
      const accepted = await request();
      await loadAccounts();
      await followOperation(accepted.operation);
    } catch (e) {
      showError(e);
    }
    await loadAccounts().catch(showError);
  }

  function showCustomer() {
    $("signin").hidden = true;
    $("customer").hidden = false;
    $("signout").hidden = false;
    loadAccounts().catch(showError);
    timer = setInterval(() => loadAccounts().catch(showError), 5000);
  }

  $("play-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearError();
    play($("play-form").dataset.locator + $("play-path").value.replace(/^\//, ""));
  });

  $("offer-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const kind = $("offer-kind").value;
    const offer = kind === "sla" ? { kind, mbps: Number($("offer-mbps").value) } : { kind };
    change(() => api("PATCH", `/v1/accounts/${enc(current)}`, { offer }));
  });
  $("deactivate").addEventListener("click", () => change(() => api("POST", `/v1/accounts/${enc(current)}/deactivate`)));
  $("reactivate").addEventListener("click", () => change(() => api("POST", `/v1/accounts/${enc(current)}/reactivate`)));

  $("upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError();
    const asset = $("upload-asset").value.trim();
    // A folder's files go under the asset by their path inside the folder.
    const files = [...$("upload-folder").files].map((f) => [f.webkitRelativePath.split("/").slice(1).join("/") || f.name, f]);
    const one = $("upload-file").files[0];
    if (!files.length && one) files.push([one.name, one]);
    if (!files.length) { showError(new Error("Choose a folder or a file to upload")); return; }
    const total = files.reduce((s, [, f]) => s + f.size, 0) || 1;
    let done = 0;
    progress(0);
    try {
      for (const [path, f] of files) {
        const url = `/v1/accounts/${enc(current)}/assets/${enc(asset)}/${path.split("/").map(enc).join("/")}`;
        await upload(url, f, (sent) => progress((done + sent) / total));
        done += f.size;
        progress(done / total);
      }
      progress(1);
      await loadAssets(await api("GET", `/v1/accounts/${enc(current)}`));
    } catch (err) {
      showError(err);
    }
  });

  // ---- operators ----

  async function loadOperator() {
    const [types, pools, nodes, upgrades] = await Promise.all([
      api("GET", "/v1/origin-types"),
      api("GET", "/v1/pools?limit=200"),
      api("GET", "/v1/nodes?limit=500"),
      api("GET", "/v1/operations?kind=upgrade&limit=10"),
    ]);
    fill("types", types.items.map((t) => [t.name, `${t.node_capacity_mbps} Mbit/s`, `${t.sla_increment_mbps} Mbit/s`, `${t.trial_cap_mbps} Mbit/s`, `${t.payg_cap_mbps} Mbit/s`, t.current_image]));
    fill("pools", pools.items.map((p) => [short(p.id), p.origin_type, p.kind, p.state, p.health, p.image_version, `${p.ready_nodes}/${p.desired_nodes}`, p.accounts]));
    const now = Date.now();
    const rows = fill("nodes", nodes.items.map((n) => [
      short(n.id), short(n.pool_id), n.state, n.egress_mbps.toFixed(1),
      n.last_heartbeat ? `${Math.max(0, Math.round((now - Date.parse(n.last_heartbeat)) / 1000))} s` : "-",
      n.image_version, n.target,
    ]));
    rows.forEach((tr, i) => { tr.dataset.node = nodes.items[i].id; tr.dataset.state = nodes.items[i].state; });
    fill("upgrades", upgrades.items.map((o) => [
      short(o.id), o.origin_type, o.state, o.step, o.progress ? JSON.stringify(o.progress) : "-",
      o.state === "pending" || o.state === "running"
        ? button("Roll back", () => api("POST", `/v1/operations/${o.id}/rollback`).then(loadOperator).catch(showError))
        : "",
    ]));
  }

  function addEvent(e) {
    const li = document.createElement("li");
    li.textContent = `${e.at}  ${e.actor}  ${e.action}  ${e.subject}${e.reason ? `  ${e.reason}` : ""}`;
    li.dataset.id = e.id;
    li.dataset.action = e.action;
    li.dataset.subject = e.subject;
    $("events").prepend(li);
  }

  // The newest events, then each new one; reopened after a break with the last id.
  async function followEvents() {
    const page = await api("GET", "/v1/events?limit=50");
    $("events").replaceChildren();
    let after = 0;
    for (const e of page.items.slice().reverse()) { addEvent(e); after = e.id; }
    const ctl = new AbortController();
    streams.add(ctl);
    while (!ctl.signal.aborted) {
      try {
        await watch(`/v1/events/watch?after=${after}`, (ev) => {
          if (ev.event !== "event") return;
          const e = JSON.parse(ev.data);
          if (e.id <= after) return;
          after = e.id;
          addEvent(e);
        }, ctl.signal);
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (err.status) { showError(err); return; }
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  function showOperator() {
    $("signin").hidden = true;
    $("operator").hidden = false;
    $("signout").hidden = false;
    loadOperator().catch(showError);
    timer = setInterval(() => loadOperator().catch(showError), 2000);
    followEvents().catch(showError);
  }

  // ---- signing in and out ----

  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError();
    token = $("credential").value.trim();
    $("credential").value = "";
    try {
      const me = await api("GET", "/v1/customers/me");
      $("who").textContent = `${me.name} <${me.email}>`;
      showCustomer();
    } catch (err) {
      // A valid credential that is not a customer's: the operator's?
      if (err.status === 403) {
        try {
          await api("GET", "/v1/origin-types");
          $("who").textContent = "operator";
          showOperator();
          return;
        } catch (err2) {
          token = null;
          showError(err2);
          return;
        }
      }
      token = null;
      showError(err);
    }
  });

  $("signout").addEventListener("click", () => {
    for (const c of streams) c.abort();
    streams.clear();
    clearInterval(timer);
    if (hls) { hls.destroy(); hls = null; }
    token = null;
    current = null;
    for (const id of ["customer", "operator", "account", "signout"]) $(id).hidden = true;
    $("signin").hidden = false;
    $("who").textContent = "";
    clearError();
  });
})();
