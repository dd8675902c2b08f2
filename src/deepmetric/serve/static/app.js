// deepmetric search page: upload or pick an image, POST it to /search, show the top-k as a grid.
// Plain browser JavaScript, no libraries. All text from the server goes through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let queryUrl = null;
// The true class is filled in when an example is picked; a file uploaded next is another image, so the
// example's class must not stay selected for it (it would mark every correct result ✗).
let labelFromExample = false;

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function trueLabel() {
  const v = $("true-class").value;
  return v === "" ? null : Number(v);
}

function kValue() {
  const k = Number($("k").value);
  return Number.isInteger(k) && k >= 1 ? Math.min(k, info ? info.max_k : 100) : 10;
}

async function loadInfo() {
  const res = await fetch("/info");
  info = await res.json();
  const src = info.source || {};
  const where = src.image_dir ? `folder ${src.image_dir}` : `${src.dataset || "?"} / ${src.split || "?"}`;
  const th = info.threshold;
  const decision = th ? ` · match threshold ${th.value.toFixed(4)} (${th.criterion} ${th.target}, calibrated on ${th.split || "?"})` : " · no match threshold (deepmetric calibrate)";
  $("info").textContent = `${info.items} gallery items (${where}) · ${info.kind} index · ${info.dim}-d embeddings · model ${info.model || "?"}${decision}`;
  $("k").max = info.max_k;
  $("k").value = info.default_k;
  const select = $("true-class");
  info.class_names.forEach((name, i) => {
    const opt = document.createElement("option");
    opt.value = String(i);
    opt.textContent = name;
    select.appendChild(opt);
  });
  const box = $("examples");
  for (const ex of info.examples) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "example";
    b.dataset.id = ex.id;
    b.title = `item ${ex.id}${ex.class_name !== null ? " · class " + ex.class_name : ""}`;
    const img = document.createElement("img");
    img.src = ex.thumbnail_url;
    img.alt = b.title;
    b.appendChild(img);
    b.addEventListener("click", () => pickExample(ex));
    box.appendChild(b);
  }
}

async function pickExample(ex) {
  showError("");
  setStatus(`fetching example item ${ex.id}…`);
  const res = await fetch(ex.thumbnail_url);
  if (!res.ok) { showError(`could not fetch item ${ex.id} (HTTP ${res.status})`); return; }
  const blob = await res.blob();
  $("true-class").value = ex.label === null ? "" : String(ex.label);
  labelFromExample = true;
  await search(blob, `gallery item ${ex.id}`, ex.label);
}

async function search(blob, name, label) {
  showError("");
  if (info && blob.size > info.max_upload_bytes) {
    showError(`the file is ${blob.size.toLocaleString()} bytes; the limit is ${info.max_upload_bytes.toLocaleString()} bytes`);
    return;
  }
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = URL.createObjectURL(blob);
  $("query-image").src = queryUrl;
  $("query-caption").textContent = name + (label !== null && info.class_names[label] !== undefined ? ` · class ${info.class_names[label]}` : "");
  $("query-figure").hidden = false;
  setStatus("searching…");
  $("results").replaceChildren();
  $("summary").textContent = "";
  $("verdict").hidden = true;
  const form = new FormData();
  form.append("file", blob, name);
  const t0 = performance.now();
  let res, body;
  try {
    res = await fetch(`/search?k=${kValue()}`, { method: "POST", body: form });
    body = await res.json();
  } catch (e) {
    setStatus("");
    showError(`the search failed: ${e}`);
    return;
  }
  if (!res.ok) {
    setStatus("");
    showError(body.error || `HTTP ${res.status}`);
    return;
  }
  render(body, label, performance.now() - t0);
}

function render(body, label, ms) {
  const grid = $("results");
  let correct = 0, judged = 0;
  for (const r of body.results) {
    const tile = document.createElement("figure");
    tile.className = "tile";
    tile.dataset.id = r.id;
    if (r.match === false) tile.classList.add("below");
    if (label !== null && r.label !== null) {
      judged += 1;
      const ok = r.label === label;
      if (ok) correct += 1;
      tile.classList.add(ok ? "correct" : "incorrect");
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.textContent = ok ? "✓" : "✗";
      mark.title = ok ? "same class as the query" : "another class";
      tile.appendChild(mark);
    }
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${r.rank}`;
    const img = document.createElement("img");
    img.src = r.thumbnail_url;
    img.alt = `item ${r.id}`;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = scoreText(r.score);
    score.title = info && info.kind === "ivfpq" ? "approximate similarity (ivfpq compresses the vectors): not a cosine, can exceed 1" : "cosine similarity";
    cap.appendChild(score);
    cap.appendChild(document.createTextNode(` · ${r.class_name !== null ? r.class_name : "?"} · #${r.id}`));
    tile.append(rank, img, cap);
    grid.appendChild(tile);
  }
  const verdict = $("verdict");
  if (body.threshold !== null && body.threshold !== undefined) {
    const n = body.results.filter((r) => r.match).length;
    verdict.textContent = n ? `${n} match${n > 1 ? "es" : ""} (score ≥ ${body.threshold.toFixed(4)})` : `no match: the best score is below the threshold ${body.threshold.toFixed(4)}`;
    verdict.className = n ? "verdict" : "verdict none";
    verdict.hidden = false;
  }
  setStatus(`${body.results.length} results in ${ms.toFixed(0)} ms (query ${body.query.width}×${body.query.height} ${body.query.mode})`);
  $("summary").textContent = judged ? `${correct} of ${judged} results share the query's class` : "pick the query's true class to mark results ✓/✗";
}

function uploadLabel() {
  if (labelFromExample) {  // the class came with the previous example, not from the user
    $("true-class").value = "";
    labelFromExample = false;
  }
  return trueLabel();
}

function scoreText(score) {
  // ivfpq scores are approximate inner products of compressed vectors: they can exceed 1, so they are
  // not shown as cosines
  return info && info.kind === "ivfpq" ? `≈${score.toFixed(3)}` : score.toFixed(3);
}

function wireUpload() {
  $("true-class").addEventListener("change", () => { labelFromExample = false; });
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files.length) search(input.files[0], input.files[0].name, uploadLabel());
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) search(e.dataTransfer.files[0], e.dataTransfer.files[0].name, uploadLabel());
  });
}

wireUpload();
loadInfo().catch((e) => showError(`could not load the index description: ${e}`));
