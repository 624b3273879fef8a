// The review page: the model's detections over each image, per-class thresholds, accept / reject / draw, Grad-CAM,
// and the export of what was reviewed. Plain JS, no framework; it talks to this server's /api/review/ and nothing else.
// Every decision is saved on the server as it is made, so the export holds every reviewed image.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#469990", "#808000"];
  const color = (label) => COLORS[label % COLORS.length];

  // Everything the page knows; window.review for tests and the console.
  const S = {
    ready: false, config: null, queue: [], index: -1, current: null, selected: null, thresholds: [],
    drawing: false, draft: null, cam: null, saving: Promise.resolve(), camURL: null,
  };
  window.review = S;
  S.idle = () => S.saving;
  S.shownBoxes = () => (S.current ? S.current.detections.filter(isKept).length : 0);
  S.keptBoxes = () => (S.current ? S.current.detections.filter(isKept).length + S.current.drawn.length : 0);

  function status(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", error);
  }

  async function api(url, options = {}) {
    const res = await fetch(url, { credentials: "same-origin", ...options });
    if (res.status === 401) {
      $("login").hidden = false;
      throw new Error("this server needs its token");
    }
    const body = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
    if (!res.ok) throw new Error((body && body.detail) || `${res.status} ${res.statusText}`);
    return body;
  }
  const query = (params) => new URLSearchParams(params).toString();
  const fail = (err) => status(String(err.message || err), true);

  // -- decisions --------------------------------------------------------------------------------------------------

  const statusOf = (d) => S.current.statuses[d.index];
  // A model box is kept when accepted, or when its score reaches its class's threshold and it was not rejected.
  function isKept(d) {
    const s = statusOf(d);
    return s === "accepted" || (s !== "rejected" && d.score >= S.thresholds[d.label]);
  }
  // Drawn on the image: the kept ones, and rejected ones the threshold would show (dashed, to undo).
  const isDrawn = (d) => isKept(d) || (statusOf(d) === "rejected" && d.score >= S.thresholds[d.label]);

  function save() {
    const cur = S.current;
    if (!cur) return S.saving;
    const body = JSON.stringify({ statuses: cur.statuses, drawn: cur.drawn, thresholds: S.thresholds });
    cur.reviewed = true;
    S.saving = S.saving.then(async () => {
      const res = await api(`api/review/review?${query({ path: cur.path })}`,
        { method: "PUT", headers: { "Content-Type": "application/json" }, body });
      const item = S.queue.find((it) => it.path === cur.path);
      if (item) Object.assign(item, { reviewed: true, kept: res.review.kept });
      $("reviewed-count").textContent = `${res.reviewed} image(s) reviewed`;
      renderQueue();
    }).catch(fail);
    return S.saving;
  }

  function decide(index, decision) {
    if (decision) S.current.statuses[index] = decision;
    else delete S.current.statuses[index];
    render();
    return save();
  }

  // -- queue ------------------------------------------------------------------------------------------------------

  async function loadQueue() {
    const params = { sort: $("sort").value, list: $("list").value, thresholds: S.thresholds.join(",") };
    if ($("sort").value === "uncertainty") status("detecting on every image to sort them…");
    const res = await api(`api/review/images?${query(params)}`);
    const path = S.current && S.current.path;
    S.queue = res.images;
    S.index = S.queue.findIndex((it) => it.path === path);
    const skipped = res.skipped ? `, ${res.skipped} listed path(s) skipped` : "";
    $("queue-count").textContent = `${S.queue.length} image(s)${res.list ? ` from ${res.list}` : ""}${skipped}`;
    renderQueue();
    status("");
  }

  function renderQueue() {
    const ol = $("queue");
    ol.replaceChildren(...S.queue.map((it, i) => {
      const li = document.createElement("li");
      li.dataset.path = it.path;
      li.classList.toggle("current", i === S.index);
      li.classList.toggle("reviewed", it.reviewed);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = it.name;
      name.title = it.path;
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = it.reviewed ? `${it.kept} box${it.kept === 1 ? "" : "es"}`
        : it.uncertainty != null ? `u ${it.uncertainty.toFixed(2)}` : "";
      li.append(name, badge);
      li.addEventListener("click", () => openImage(i).catch(fail));
      return li;
    }));
  }

  async function openImage(i) {
    if (i < 0 || i >= S.queue.length) return;
    await S.saving;
    const item = S.queue[i];
    status(`detecting on ${item.name}…`);
    const data = await api(`api/review/detections?${query({ path: item.path })}`);
    const photo = $("photo");
    await new Promise((resolve) => {
      photo.onload = photo.onerror = resolve;
      photo.src = `api/review/image?${query({ path: item.path })}`;
    });
    S.index = i;
    S.current = { path: item.path, width: data.width, height: data.height, detections: data.detections,
      statuses: {}, drawn: [], reviewed: false };
    if (data.review) {
      for (const [k, v] of Object.entries(data.review.statuses)) S.current.statuses[Number(k)] = v;
      S.current.drawn = data.review.drawn.map((b) => ({ box: b.box, label: b.label }));
      S.current.reviewed = true;
      setThresholds(data.review.thresholds);
    }
    S.selected = null;
    S.cam = null;
    $("show-image").hidden = true;
    $("overlay").setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);
    $("overlay").setAttribute("preserveAspectRatio", "none");
    $("image-name").textContent = item.path;
    fit();
    renderQueue();
    render();
    S.opened = item.path; // what is on screen, boxes and all
    status("");
  }

  // -- drawing the image's boxes ------------------------------------------------------------------------------------

  function rect(box, cls, stroke, extra = {}) {
    const r = document.createElementNS(SVG, "rect");
    const [x1, y1, x2, y2] = box;
    Object.entries({ x: x1, y: y1, width: Math.max(0, x2 - x1), height: Math.max(0, y2 - y1), class: cls, stroke, ...extra })
      .forEach(([k, v]) => r.setAttribute(k, v));
    return r;
  }

  function label(box, text, fill, size) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", box[0] + 2);
    t.setAttribute("y", box[1] > size * 1.2 ? box[1] - size * 0.3 : box[1] + size);
    t.setAttribute("fill", fill);
    t.setAttribute("style", `font-size:${size}px; stroke-width:${size / 4}px`);
    t.textContent = text;
    return t;
  }

  // The image as large as the viewer allows (small crops scaled up to 8x), its aspect ratio kept.
  function fit() {
    const cur = S.current;
    if (!cur) return;
    const viewer = $("viewer").getBoundingClientRect();
    const room = [viewer.width - 24, window.innerHeight - $("stage").getBoundingClientRect().top - 16];
    const scale = Math.max(0.05, Math.min(8, room[0] / cur.width, room[1] / cur.height));
    $("photo").style.width = `${Math.floor(cur.width * scale)}px`;
    $("photo").style.height = `${Math.floor(cur.height * scale)}px`;
  }

  function render() {
    const svg = $("overlay");
    const cur = S.current;
    svg.replaceChildren();
    svg.classList.toggle("drawing", S.drawing);
    if (!cur) return;
    const names = S.config.classes;
    const shown = svg.getBoundingClientRect().width || cur.width;
    const size = 12 * cur.width / shown; // 12 screen pixels, whatever the image's scale
    for (const d of cur.detections) {
      if (!isDrawn(d)) continue;
      const sel = S.selected && S.selected.kind === "det" && S.selected.index === d.index;
      const cls = `det ${isKept(d) ? "kept" : "rejected"}${statusOf(d) === "accepted" ? " accepted" : ""}${sel ? " selected" : ""}`;
      const r = rect(d.box, cls, color(d.label), { "data-index": d.index });
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${names[d.label]} ${d.score.toFixed(3)}`;
      r.append(title);
      r.addEventListener("click", (ev) => { ev.stopPropagation(); select({ kind: "det", index: d.index }); });
      svg.append(r, label(d.box, `${names[d.label]} ${d.score.toFixed(2)}`, color(d.label), size));
    }
    cur.drawn.forEach((b, j) => {
      const sel = S.selected && S.selected.kind === "drawn" && S.selected.index === j;
      const r = rect(b.box, `drawn kept${sel ? " selected" : ""}`, color(b.label), { "data-drawn": j });
      r.addEventListener("click", (ev) => { ev.stopPropagation(); select({ kind: "drawn", index: j }); });
      svg.append(r, label(b.box, `${names[b.label]} (drawn)`, color(b.label), size));
    });
    if (S.draft) svg.append(rect(S.draft, "draft", "#1f6feb"));
    renderList();
    renderSelected();
  }

  function renderList() {
    const cur = S.current;
    const names = S.config.classes;
    $("det-count").textContent = `(${cur.detections.filter(isKept).length} kept of ${cur.detections.length}, ${cur.drawn.length} drawn)`;
    $("detections").replaceChildren(...cur.detections.map((d) => {
      const li = document.createElement("li");
      const s = statusOf(d);
      li.className = `${s === "rejected" ? "rejected" : ""} ${isDrawn(d) ? "" : "hidden-box"}`;
      li.classList.toggle("selected", !!(S.selected && S.selected.kind === "det" && S.selected.index === d.index));
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = color(d.label);
      const text = document.createElement("span");
      text.textContent = `#${d.index} ${names[d.label]} ${d.score.toFixed(3)}${s ? ` (${s})` : ""}`;
      li.append(sw, text);
      li.addEventListener("click", () => select({ kind: "det", index: d.index }));
      return li;
    }));
  }

  function select(sel) {
    S.selected = sel;
    render();
  }

  function renderSelected() {
    const box = $("selected");
    const sel = S.selected;
    box.hidden = !sel;
    if (!sel) return;
    const names = S.config.classes;
    const det = sel.kind === "det";
    for (const id of ["accept", "reject", "undecide", "cam"]) $(id).hidden = !det;
    $("delete").hidden = det;
    if (det) {
      const d = S.current.detections[sel.index];
      $("selected-text").textContent = `#${d.index} ${names[d.label]}, score ${d.score.toFixed(3)} ` +
        `(threshold ${S.thresholds[d.label].toFixed(3)}): ${isKept(d) ? "kept" : "dropped"}`;
    } else {
      $("selected-text").textContent = `drawn ${names[S.current.drawn[sel.index].label]}`;
    }
  }

  // -- thresholds ---------------------------------------------------------------------------------------------------

  function buildThresholds() {
    const names = S.config.classes;
    $("thresholds").replaceChildren(...names.map((name, i) => {
      const div = document.createElement("div");
      div.className = "threshold";
      const lab = document.createElement("label");
      lab.textContent = name;
      lab.htmlFor = `threshold-${i}`;
      const out = document.createElement("output");
      out.id = `threshold-value-${i}`;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: "0", max: "1", step: "0.01", id: `threshold-${i}` });
      input.dataset.class = i;
      input.addEventListener("input", () => {
        S.thresholds[i] = Number(input.value);
        out.textContent = S.thresholds[i].toFixed(3);
        render();
        if (S.current && S.current.reviewed) save();
      });
      div.append(lab, out, input);
      return div;
    }));
    setThresholds(S.thresholds);
  }

  function setThresholds(values) {
    S.thresholds = values.slice();
    values.forEach((v, i) => {
      const input = $(`threshold-${i}`);
      if (input) input.value = v;
      const out = $(`threshold-value-${i}`);
      if (out) out.textContent = Number(v).toFixed(3);
    });
  }

  // -- drawing a missed box -----------------------------------------------------------------------------------------

  function toImage(ev) {
    const r = $("overlay").getBoundingClientRect();
    const cur = S.current;
    const x = Math.min(Math.max(ev.clientX - r.left, 0), r.width) * cur.width / r.width;
    const y = Math.min(Math.max(ev.clientY - r.top, 0), r.height) * cur.height / r.height;
    return [x, y];
  }

  function setDrawing(on) {
    S.drawing = on;
    $("draw").setAttribute("aria-pressed", String(on));
    render();
  }

  let start = null;
  function onDown(ev) {
    if (!S.drawing || !S.current || ev.button !== 0) return;
    ev.preventDefault();
    start = toImage(ev);
    S.draft = [...start, ...start];
  }
  function onMove(ev) {
    if (!start) return;
    const [x, y] = toImage(ev);
    S.draft = [Math.min(start[0], x), Math.min(start[1], y), Math.max(start[0], x), Math.max(start[1], y)];
    render();
  }
  function onUp(ev) {
    if (!start) return;
    onMove(ev);
    const box = S.draft;
    start = null;
    S.draft = null;
    if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) {
      S.current.drawn.push({ box: box.map((v) => Math.round(v * 10) / 10), label: Number($("draw-class").value) });
      S.selected = { kind: "drawn", index: S.current.drawn.length - 1 };
      render();
      save();
    } else {
      render();
    }
  }

  // -- Grad-CAM -------------------------------------------------------------------------------------------------------

  async function showCam(index) {
    const cur = S.current;
    status(`Grad-CAM of detection #${index}…`);
    const res = await fetch(`api/review/cam?${query({ path: cur.path, index })}`, { credentials: "same-origin" });
    if (!res.ok) {
      let detail = `${res.status} ${res.statusText}`;
      try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    if (S.current !== cur) return;
    if (S.camURL) URL.revokeObjectURL(S.camURL);
    S.camURL = URL.createObjectURL(await res.blob());
    S.cam = index;
    $("photo").src = S.camURL;
    $("show-image").hidden = false;
    status(`Grad-CAM of detection #${index}`);
  }

  function hideCam() {
    if (S.cam === null) return;
    S.cam = null;
    $("show-image").hidden = true;
    if (S.current) $("photo").src = `api/review/image?${query({ path: S.current.path })}`;
  }

  // -- export and upload ----------------------------------------------------------------------------------------------

  async function exportFolder() {
    await S.saving;
    const res = await api("api/review/export", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: $("export-name").value.trim() || "exp" }) });
    S.lastExport = res;
    $("export-result").textContent = `wrote ${res.images} image(s), ${res.boxes} box(es) ` +
      `(${res.negatives} negative image(s)) to ${res.folder}`;
  }

  async function upload(files) {
    let added = [];
    for (const file of files) { // one per request: each stays under the server's upload limit
      const form = new FormData();
      form.append("files", file, file.name);
      status(`uploading ${file.name}…`);
      added = added.concat((await api("api/review/upload", { method: "POST", body: form })).added);
    }
    await loadQueue();
    const first = S.queue.findIndex((it) => it.path === added[0]);
    if (first >= 0) await openImage(first);
  }

  // -- wiring -----------------------------------------------------------------------------------------------------------

  function selectedDet() {
    return S.selected && S.selected.kind === "det" ? S.selected.index : null;
  }

  function wire() {
    $("sort").addEventListener("change", () => loadQueue().catch(fail));
    $("list").addEventListener("change", () => loadQueue().catch(fail));
    $("upload").addEventListener("change", (ev) => upload([...ev.target.files]).catch(fail));
    $("prev").addEventListener("click", () => openImage(S.index - 1).catch(fail));
    $("done").addEventListener("click", () => save().then(() => openImage(S.index + 1)).catch(fail));
    $("draw").addEventListener("click", () => setDrawing(!S.drawing));
    $("accept").addEventListener("click", () => selectedDet() !== null && decide(selectedDet(), "accepted"));
    $("reject").addEventListener("click", () => selectedDet() !== null && decide(selectedDet(), "rejected"));
    $("undecide").addEventListener("click", () => selectedDet() !== null && decide(selectedDet(), null));
    $("cam").addEventListener("click", () => selectedDet() !== null && showCam(selectedDet()).catch(fail));
    $("show-image").addEventListener("click", hideCam);
    $("delete").addEventListener("click", () => {
      if (!S.selected || S.selected.kind !== "drawn") return;
      S.current.drawn.splice(S.selected.index, 1);
      S.selected = null;
      render();
      save();
    });
    $("export").addEventListener("click", () => exportFolder().catch(fail));
    const svg = $("overlay");
    svg.addEventListener("mousedown", onDown);
    window.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", onUp);
    svg.addEventListener("click", () => { if (!S.drawing && S.selected) select(null); });
    window.addEventListener("resize", () => { fit(); render(); });
    document.addEventListener("keydown", (ev) => {
      if (ev.target.closest && ev.target.closest("input, select, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const i = selectedDet();
      const keys = {
        a: () => i !== null && decide(i, "accepted"), r: () => i !== null && decide(i, "rejected"),
        u: () => i !== null && decide(i, null), g: () => i !== null && showCam(i), d: () => setDrawing(!S.drawing),
        n: () => save().then(() => openImage(S.index + 1)), p: () => openImage(S.index - 1),
        Delete: () => $("delete").click(), Escape: () => (S.drawing ? setDrawing(false) : select(null)),
      };
      if (keys[ev.key]) Promise.resolve(keys[ev.key]()).catch(fail);
    });
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      document.cookie = `retinadet_token=${$("token").value}; path=/; SameSite=Strict`;
      $("login").hidden = true;
      init().catch(fail);
    });
  }

  async function init() {
    S.config = await api("api/review/config");
    S.thresholds = S.config.thresholds.slice();
    const names = S.config.classes;
    $("model").textContent = `classes: ${names.join(", ")} · thresholds: ${S.config.thresholds_source}`;
    buildThresholds();
    $("draw-class").replaceChildren(...names.map((n, i) => new Option(n, String(i))));
    const lists = [new Option("every image", "")].concat(S.config.lists.map((l) => new Option(l, l)));
    $("list").replaceChildren(...lists);
    $("list").value = S.config.default_list || "";
    $("reviewed-count").textContent = `${S.config.reviewed} image(s) reviewed`;
    await loadQueue();
    if (S.queue.length) await openImage(0);
    else status(S.config.review_dir ? "no images in the review folder" : "no review folder: upload images");
    S.ready = true;
  }

  wire();
  init().catch(fail);
})();
