// The page at /: picks an image, sends it to POST /detect (the public API, JSON answer) and draws the
// boxes over it as SVG, with a table of the detections. No framework, nothing fetched from elsewhere.
"use strict";

// service/render.py's PALETTE: a class has the same colour here and on the server's annotated images.
const PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
];
const SVG = "http://www.w3.org/2000/svg";
const KEY_STORE = "detector-api-key";

const state = { key: sessionStorage.getItem(KEY_STORE) || "", manifest: null, file: null, sequence: 0 };
const $ = (id) => document.getElementById(id);

function colour(label) {
  const [r, g, b] = PALETTE[label % PALETTE.length];
  return `rgb(${r}, ${g}, ${b})`;
}

function textColour(label) {
  const [r, g, b] = PALETTE[label % PALETTE.length];
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "black" : "white";
}

function headers(extra) {
  const all = Object.assign({}, extra);
  if (state.key) all["Authorization"] = `Bearer ${state.key}`;
  return all;
}

// The server's words for a failure: problem JSON's detail (RFC 9457), else the status line.
async function failure(response) {
  let detail = "";
  try {
    const problem = await response.json();
    detail = problem.detail || problem.title || "";
  } catch (error) {
    detail = "";
  }
  return `${response.status} ${response.statusText}${detail ? ": " + detail : ""}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// data-state (idle, busy, done, error) and data-answers (answers shown so far) let a test wait for an answer.
function setStatus(stateName, text) {
  const status = $("status");
  status.dataset.state = stateName;
  status.textContent = text;
  if (stateName === "done" || stateName === "error") status.dataset.answers = Number(status.dataset.answers || 0) + 1;
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/models/default", { headers: headers({ Accept: "application/json" }) });
  } catch (error) {
    showError(`the server could not be reached: ${error.message}`);
    return;
  }
  if (response.status === 401) {
    $("key-form").hidden = false;
    showError(await failure(response));
    $("api-key").focus();
    return;
  }
  if (!response.ok) {
    showError(await failure(response));
    setTimeout(loadModel, 2000); // loading or warming up: ask again
    return;
  }
  const description = await response.json();
  state.manifest = description.manifest;
  showError("");
  showModel(description);
  if (state.file) detect();
}

function showModel(description) {
  const manifest = description.manifest;
  $("model").textContent = `model: ${manifest.name}, version ${manifest.version} (${description.runtime.engine}, ${description.runtime.device})`;
  $("score").value = manifest.score_threshold;
  $("iou").value = manifest.iou_threshold;
  const fieldset = $("classes");
  fieldset.querySelectorAll("label").forEach((label) => label.remove());
  manifest.categories.forEach((name, label) => {
    if (label === 0) return; // __background__
    const item = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = name;
    box.addEventListener("change", detect);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(label);
    item.append(box, swatch, document.createTextNode(name));
    fieldset.append(item);
  });
}

function query() {
  const params = new URLSearchParams({ score_threshold: $("score").value, iou_threshold: $("iou").value });
  const boxes = [...$("classes").querySelectorAll("input")];
  const kept = boxes.filter((box) => box.checked).map((box) => box.value);
  // Every class kept: no filter. None kept: sent as such, and the server says why it refuses.
  if (kept.length < boxes.length) params.set("classes", kept.join(","));
  return params;
}

async function detect() {
  if (!state.file || !state.manifest) return;
  const sequence = ++state.sequence;
  setStatus("busy", "detecting…");
  let response;
  try {
    response = await fetch(`/detect?${query()}`, {
      method: "POST",
      body: state.file,
      headers: headers({ "Content-Type": "application/octet-stream", Accept: "application/json" }),
    });
  } catch (error) {
    if (sequence !== state.sequence) return;
    clearResult();
    showError(`the server could not be reached: ${error.message}`);
    setStatus("error", "");
    return;
  }
  const answer = response.ok ? await response.json() : null;
  const message = response.ok ? "" : await failure(response);
  if (sequence !== state.sequence) return; // a newer request was sent meanwhile
  if (!answer) {
    clearResult();
    showError(message);
    setStatus("error", "");
    return;
  }
  showError("");
  showResult(answer);
  setStatus("done", `${answer.detections.length} detection(s)`);
}

function clearResult() {
  $("stage").hidden = true;
  $("overlay").replaceChildren();
  $("detections").tBodies[0].replaceChildren();
  $("detections").hidden = true;
  $("summary").textContent = "";
}

function showResult(answer) {
  const { width, height } = answer.image;
  const overlay = $("overlay");
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  $("stage").hidden = false;
  // Outlines and labels keep one size on screen (2 and 13 pixels), whatever the image's scale there.
  const scale = fitPicture(width, height);
  const line = 2 / scale;
  const font = 13 / scale;
  const shapes = [];
  const rows = [];
  answer.detections.forEach((detection, index) => {
    const { x1, y1, x2, y2 } = detection.box;
    const rect = document.createElementNS(SVG, "rect");
    const attributes = { class: "box", x: x1, y: y1, width: x2 - x1, height: y2 - y1, fill: "none", stroke: colour(detection.label), "stroke-width": line };
    Object.entries(attributes).forEach(([name, value]) => rect.setAttribute(name, value));
    Object.assign(rect.dataset, { index, x1, y1, x2, y2, label: detection.label, className: detection.class_name, score: detection.score });
    // The label: the class's colour behind, white or black text on it (as on the server's images), above the box
    // where there is room; its background is sized once the text is laid out, below.
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x1 + line);
    text.setAttribute("y", y1 - font * 1.3 > 0 ? y1 - font * 0.35 : y1 + font);
    text.setAttribute("font-size", font);
    text.setAttribute("fill", textColour(detection.label));
    text.textContent = `${detection.class_name} ${detection.score.toFixed(2)}`;
    const background = document.createElementNS(SVG, "rect");
    background.setAttribute("class", "label");
    background.setAttribute("fill", colour(detection.label));
    shapes.push([rect, background, text]);

    const row = document.createElement("tr");
    const cells = [index + 1, detection.class_name, detection.score.toFixed(3), x1.toFixed(1), y1.toFixed(1), x2.toFixed(1), y2.toFixed(1)];
    cells.forEach((value, column) => {
      const cell = document.createElement("td");
      cell.textContent = value;
      if (column === 1) {
        cell.className = "class";
        cell.style.color = colour(detection.label);
      }
      row.append(cell);
    });
    rows.push(row);
  });
  // The best-scored drawn last, on top of the others (as on the server's images).
  overlay.replaceChildren(...shapes.reverse().flat());
  overlay.querySelectorAll("rect.label").forEach((background) => {
    const area = background.nextSibling.getBBox();
    const attributes = { x: area.x - line, y: area.y, width: area.width + 2 * line, height: area.height };
    Object.entries(attributes).forEach(([name, value]) => background.setAttribute(name, value));
  });
  $("detections").tBodies[0].replaceChildren(...rows);
  $("detections").hidden = rows.length === 0;
  const timing = answer.timing_ms;
  $("summary").textContent =
    `${answer.model.name} version ${answer.model.version}: ${answer.detections.length} detection(s) in ${width} × ${height} px; ` +
    `queue ${timing.queue.toFixed(1)} ms, inference ${timing.inference.toFixed(1)} ms, total ${timing.total.toFixed(1)} ms`;
}

// Small images are shown larger, large ones smaller: within the page's width and most of the window's height.
function fitPicture(width, height) {
  const room = $("result").clientWidth;
  const scale = Math.min(Math.max(room, 320) / width, Math.max(window.innerHeight * 0.75, 320) / height, Math.max(1, 640 / Math.max(width, height)));
  $("picture").style.width = `${Math.round(width * scale)}px`;
  return scale;
}

function pick(file) {
  if (!file) return;
  state.file = file;
  const picture = $("picture");
  if (picture.src) URL.revokeObjectURL(picture.src);
  picture.src = URL.createObjectURL(file);
  clearResult();
  detect();
}

function setUp() {
  $("file").addEventListener("change", (event) => {
    pick(event.target.files[0]);
    event.target.value = ""; // the same file picked again is a new request
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pick(event.dataTransfer.files[0]);
  });
  $("score").addEventListener("change", detect);
  $("iou").addEventListener("change", detect);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    loadModel();
  });
  if (state.key) $("key-form").hidden = false;
  $("api-key").value = state.key;
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
