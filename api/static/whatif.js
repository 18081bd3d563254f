// The what-if page: a customer form generated from the served bundle's feature schema, answered by
// the service's public endpoints (/recommend or /predict-segment, /bundle, /bundle/position) with
// the key the user types. Plain JS, no build step; every rule (validation, segment, ranking,
// eligibility) is the service's: this page only shows what the API answers.
"use strict";

(function () {
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf"];
  const $ = (id) => document.getElementById(id);
  const state = { key: "", bundle: null, reportUrl: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined) return "n/a";
    if (typeof v !== "number") return String(v);
    if (Math.abs(v) >= 1000) return v.toLocaleString("en", { maximumFractionDigits: 0 });
    return v.toFixed(digits === undefined ? 3 : digits);
  }

  async function call(method, path, body) {
    const headers = { "X-API-Key": state.key };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const type = response.headers.get("Content-Type") || "";
    const payload = type.includes("json") ? await response.json() : await response.blob();
    return { status: response.status, ok: response.ok, payload };
  }

  function errorText(answer) {
    const e = answer.payload && answer.payload.error;
    return e ? `${answer.status} ${e.code}: ${e.message}` : `HTTP ${answer.status}`;
  }

  // ---- connecting ----------------------------------------------------------------------------
  async function connect(event) {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    $("status").textContent = "loading the served bundle…";
    const answer = await call("GET", "/bundle");
    if (!answer.ok) {
      $("status").textContent = errorText(answer);
      return;
    }
    state.bundle = answer.payload;
    $("status").textContent = `connected: model ${state.bundle.model_version}`;
    $("tabs").hidden = false;
    buildForm(state.bundle);
    showBundle(state.bundle);
    showTab("whatif");
  }

  function showTab(name) {
    for (const tab of document.querySelectorAll(".tab")) {
      tab.classList.toggle("active", tab.dataset.tab === name);
    }
    $("whatif").hidden = name !== "whatif";
    $("bundle").hidden = name !== "bundle";
  }

  // ---- the form, from the feature schema ------------------------------------------------------
  function buildForm(bundle) {
    const box = $("fields");
    box.replaceChildren();
    for (const f of bundle.features.inputs) {
      const range = f.observed_min === null || f.observed_min === undefined
        ? "" : `seen ${fmt(f.observed_min)} – ${fmt(f.observed_max)}`;
      const input = el("input", {
        id: `f-${f.name}`, name: f.name, type: "text", inputmode: "decimal",
        placeholder: fmt(f.median), "data-kind": f.kind,
      });
      box.append(el("div", { class: "field", "data-field": f.name },
        el("label", { for: `f-${f.name}`, text: `${f.name}${f.required ? " *" : ""} (${f.kind})` }),
        input,
        el("span", { class: "range", text: range }),
        el("div", { class: "field-error", id: `e-${f.name}` })));
    }
    for (const c of bundle.features.categoricals) {
      const select = el("select", { id: `f-${c.name}`, name: c.name },
        el("option", { value: "", text: "(missing)" }));
      for (const value of c.categories) select.append(el("option", { value, text: value }));
      box.append(el("div", { class: "field", "data-field": c.name },
        el("label", { for: `f-${c.name}`, text: `${c.name} (category)` }),
        select,
        el("div", { class: "field-error", id: `e-${c.name}` })));
    }
  }

  function fillMedians() {
    for (const f of state.bundle.features.inputs) $(`f-${f.name}`).value = String(f.median);
  }

  function record() {
    const out = {};
    for (const f of state.bundle.features.inputs) {
      const text = $(`f-${f.name}`).value.trim();
      if (text === "") continue;
      // a number goes as a JSON number; anything else is sent as typed, for the API to judge
      const number = Number(text);
      out[f.name] = Number.isFinite(number) ? number : text;
    }
    for (const c of state.bundle.features.categoricals) {
      const value = $(`f-${c.name}`).value;
      if (value !== "") out[c.name] = value;
    }
    return out;
  }

  function clearErrors() {
    $("form-error").textContent = "";
    for (const node of document.querySelectorAll(".field")) node.classList.remove("invalid");
    for (const node of document.querySelectorAll(".field-error")) node.textContent = "";
  }

  function showErrors(answer) {
    const error = answer.payload && answer.payload.error;
    const other = [];
    for (const [name, messages] of Object.entries((error && error.fields) || {})) {
      const text = [].concat(messages).join(" ");
      const box = $(`e-${name}`);
      if (box) {
        box.textContent = text;
        box.parentElement.classList.add("invalid");
      } else {
        other.push(`${name}: ${text}`);
      }
    }
    $("form-error").textContent = [errorText(answer), ...other].join(" — ");
  }

  // ---- scoring -------------------------------------------------------------------------------
  async function score(event) {
    event.preventDefault();
    clearErrors();
    const bundle = state.bundle;
    const customer = record();
    const ranked = bundle.has_response_model;
    const body = ranked
      ? { ...customer, explain: true, top_k: Math.max(bundle.campaigns.length, 1) }
      : customer;
    const [answer, position] = await Promise.all([
      call("POST", ranked ? "/recommend" : "/predict-segment", body),
      call("POST", "/bundle/position", customer),
    ]);
    if (!answer.ok) {
      $("result").hidden = true;
      showErrors(answer);
      return;
    }
    showResult(answer.payload, position.ok ? position.payload : null);
  }

  function showResult(result, position) {
    const bundle = state.bundle;
    const segment = bundle.segments[result.segment_id];
    $("result").hidden = false;
    $("segment-title").textContent = `Segment ${result.segment_id}: ${result.segment_name}`;
    $("segment-title").dataset.segmentId = String(result.segment_id);
    const badge = el("span", {
      class: `badge ${result.atypical ? "atypical" : "typical"}`,
      text: result.atypical ? "atypical" : "typical",
    });
    $("segment-detail").replaceChildren(
      `${segment.description} · ${fmt(segment.size, 0)} customers (${fmt(100 * segment.share, 1)}%)`
      + ` · distance to the centre ${fmt(result.distance)} `, badge);
    if (result.membership) {
      // a bundle serving the Gaussian mixture: the probability of every segment
      $("segment-detail").append(el("div", { id: "membership", class: "hint" },
        "membership: " + result.membership.map((p, i) =>
          `${bundle.segments[i].name} ${fmt(100 * p, 1)}%`).join(" · ")));
    }

    const offered = new Set();
    const rows = [];
    (result.campaigns || []).forEach((c, i) => {
      offered.add(c.campaign_id);
      const why = (c.contributions || []).map((x) => el("span",
        { class: x.contribution >= 0 ? "pos" : "neg" },
        `${x.feature} ${x.contribution >= 0 ? "+" : ""}${fmt(x.contribution)}  `));
      rows.push(el("tr", { "data-campaign": c.campaign_id },
        el("td", { class: "num", text: String(i + 1) }),
        el("td", { text: `${c.name} (${c.campaign_id}, ${c.channel})` }),
        el("td", { class: "num", text: fmt(c.probability, 4) }),
        el("td", { class: "num", text: fmt(c.expected_value, 3) }),
        el("td", {}, ...why, el("div", { class: "hint", text: c.eligibility || "" }))));
    });
    $("offers").tBodies[0].replaceChildren(...rows);
    const noOffers = $("no-offers");
    noOffers.hidden = rows.length > 0;
    noOffers.textContent = bundle.has_response_model
      ? "No campaign is open to this segment."
      : `This bundle has no response model; the segment's default campaigns: ${
        (result.recommended_campaigns || []).join(", ") || "none"}.`;

    const missing = bundle.campaigns.filter((c) => !offered.has(c.id));
    $("not-offered").replaceChildren(...missing.map((c) => el("li", { "data-campaign": c.id },
      `${c.name} (${c.id}): ${bundle.has_response_model
        ? (c.eligible[result.segment_id]
          ? "eligible, but not ranked" : c.not_eligible[result.segment_id])
        : "no response model to rank campaigns"}`)));
    if (!missing.length) $("not-offered").append(el("li", { text: "every campaign was offered" }));

    const stats = result.segment_stats || {};
    const seen = position ? position.features : {};
    const profile = Object.keys(bundle.population_mean).map((name) => el("tr", {},
      el("td", { text: name }),
      el("td", { class: "num", text: fmt(seen[name]) }),
      el("td", { class: "num", text: fmt((stats.mean || {})[name]) }),
      el("td", { class: "num", text: fmt(bundle.population_mean[name]) })));
    $("profile").tBodies[0].replaceChildren(...profile);
    drawMap(bundle.map, position, result.segment_id);
  }

  // ---- the segment map -----------------------------------------------------------------------
  function drawMap(map, position, segmentId) {
    const canvas = $("map");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!map) {
      ctx.fillText("this bundle has no map data", 20, 30);
      return;
    }
    const xs = map.x.concat(map.centers.map((c) => c[0]));
    const ys = map.y.concat(map.centers.map((c) => c[1]));
    if (position) { xs.push(position.x); ys.push(position.y); }
    const pad = 24;
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const sx = (x) => pad + ((x - x0) / ((x1 - x0) || 1)) * (canvas.width - 2 * pad);
    const sy = (y) => canvas.height - pad - ((y - y0) / ((y1 - y0) || 1)) * (canvas.height - 2 * pad);
    ctx.globalAlpha = 0.45;
    map.x.forEach((x, i) => {
      ctx.fillStyle = COLOURS[map.segment[i] % COLOURS.length];
      ctx.fillRect(sx(x) - 1.5, sy(map.y[i]) - 1.5, 3, 3);
    });
    ctx.globalAlpha = 1;
    ctx.font = "bold 12px sans-serif";
    map.centers.forEach((c, s) => {
      ctx.fillStyle = "#000";
      ctx.fillRect(sx(c[0]) - 4, sy(c[1]) - 4, 8, 8);
      ctx.fillText(String(s), sx(c[0]) + 6, sy(c[1]) - 6);
    });
    if (position) {
      const [px, py] = [sx(position.x), sy(position.y)];
      ctx.beginPath();
      ctx.arc(px, py, 9, 0, 2 * Math.PI);
      ctx.fillStyle = COLOURS[segmentId % COLOURS.length];
      ctx.fill();
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#000";
      ctx.stroke();
      ctx.fillStyle = "#000";
      ctx.fillText("this customer", px + 12, py + 4);
    }
    const axes = (map.explained || []).map((v, i) => `PC${i + 1} ${fmt(100 * v, 0)}%`).join(", ");
    $("map-legend").replaceChildren(...state.bundle.segments.map((s) => {
      const item = el("span", { text: `${s.segment_id}: ${s.name}` });
      item.style.setProperty("--c", COLOURS[s.segment_id % COLOURS.length]);
      return item;
    }), el("em", { text: `squares: centres; axes: ${axes}` }));
  }

  // ---- the served bundle tab -----------------------------------------------------------------
  function cells(values, numeric) {
    return values.map((v, i) => el("td", { class: numeric[i] ? "num" : "", text: v }));
  }

  function showBundle(bundle) {
    $("bundle-title").textContent = `Model ${bundle.model_version}`;
    $("bundle-detail").textContent = `${bundle.name || ""} · created ${bundle.created_at} · `
      + `k = ${bundle.k} · served clustering: ${bundle.served_model} · `
      + `${bundle.has_response_model ? "with" : "without"} a response model`;
    $("segments").tBodies[0].replaceChildren(...bundle.segments.map((s) => el("tr", {},
      ...cells([String(s.segment_id), s.name, fmt(s.size, 0), `${fmt(100 * s.share, 1)}%`,
        s.description, (s.default_campaigns || []).join(", ")],
      [true, false, true, true, false, false]))));
    const ks = bundle.k_selection || {};
    $("k-reasoning").textContent = ks.reasoning ? `k = ${ks.chosen_k}: ${ks.reasoning}.` : "";
    $("k-table").tBodies[0].replaceChildren(...(ks.table || []).map((r) => {
      const row = el("tr", { class: r.k === ks.chosen_k ? "chosen" : "" },
        ...cells([String(r.k), fmt(r.inertia), fmt(r.silhouette), fmt(r.calinski_harabasz),
          fmt(r.davies_bouldin)], [true, true, true, true, true]));
      return row;
    }));
    $("comparison").tBodies[0].replaceChildren(...(bundle.comparison || []).map((m) => el("tr",
      { class: m.served ? "served" : "" },
      ...cells([m.label + (m.served ? " (served)" : ""), String(m.clusters ?? "n/a"),
        fmt(m.silhouette), m.noise_share === null || m.noise_share === undefined
          ? "n/a" : `${fmt(100 * m.noise_share, 1)}%`, fmt(m.stability_ari),
        m.assigns_new_customers ? "yes" : "no (compared only)"],
      [false, true, true, true, true, false]))));
    $("open-report").disabled = !bundle.report_available;
    $("report-status").textContent = bundle.report_available
      ? "" : "no report was written for this bundle (python -m training report rebuilds it)";
  }

  async function openReport() {
    $("report-status").textContent = "loading…";
    const answer = await call("GET", "/bundle/report");
    if (!answer.ok) {
      $("report-status").textContent = errorText(answer);
      return;
    }
    if (state.reportUrl) URL.revokeObjectURL(state.reportUrl);
    state.reportUrl = URL.createObjectURL(
      new Blob([await answer.payload.text()], { type: "text/html" }));
    const frame = $("report-frame");
    frame.src = state.reportUrl;
    frame.hidden = false;
    $("report-status").textContent = "";
    frame.scrollIntoView();
  }

  $("key-form").addEventListener("submit", connect);
  $("customer-form").addEventListener("submit", score);
  $("fill-median").addEventListener("click", fillMedians);
  $("open-report").addEventListener("click", openReport);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }
})();
