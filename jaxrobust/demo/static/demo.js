// The demo page: draw on an upscaled canvas grid, step the image toward (or away from) a
// class through the server's /api/step, show the class probabilities as bars.
// State lives in `window.demo` (image, probs, stepsTaken) so tests can read it back.
"use strict";

const demo = {
  info: null,
  image: null, // Float32Array, H*W*C, row-major (H, W, C), values in [0, 1]
  probs: null,
  stepsTaken: 0,
  running: false,
  busy: false,
  requests: 0,
};
window.demo = demo;

const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function api(path, body) {
  const res = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

// ------------------------------------------------------------------------- drawing

function shape() { return demo.info.image_shape; }

function render(canvas, image) {
  const [h, w, c] = shape();
  const ctx = canvas.getContext("2d");
  const cw = canvas.width / w, ch = canvas.height / h;
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) {
      const k = (i * w + j) * c;
      const rgb = c === 1 ? [image[k], image[k], image[k]] : [image[k], image[k + 1], image[k + 2]];
      const [r, g, b] = rgb.map((v) => Math.round(255 * Math.min(1, Math.max(0, v))));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(j * cw, i * ch, Math.ceil(cw), Math.ceil(ch));
    }
  }
  if (canvas.id === "canvas" && w <= 16) { // a faint grid on the big canvas of small images
    ctx.strokeStyle = "rgba(128,128,128,0.35)";
    ctx.lineWidth = 1;
    for (let j = 1; j < w; j++) { ctx.beginPath(); ctx.moveTo(j * cw, 0); ctx.lineTo(j * cw, canvas.height); ctx.stroke(); }
    for (let i = 1; i < h; i++) { ctx.beginPath(); ctx.moveTo(0, i * ch); ctx.lineTo(canvas.width, i * ch); ctx.stroke(); }
  }
}

function brushColor() {
  const c = shape()[2];
  if (c === 1) return [1];
  const hex = $("brush-color").value;
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
}

// Paint a soft disk at grid position (y, x) (in cells, fractional).
function paint(y, x) {
  const [h, w, c] = shape();
  const radius = Number($("brush-size").value);
  const strength = Number($("brush-strength").value);
  const eraser = $("tool-eraser").checked;
  const color = eraser ? new Array(c).fill(0) : brushColor();
  const reach = Math.ceil(radius + 1);
  for (let i = Math.floor(y) - reach; i <= Math.floor(y) + reach; i++) {
    for (let j = Math.floor(x) - reach; j <= Math.floor(x) + reach; j++) {
      if (i < 0 || j < 0 || i >= h || j >= w) continue;
      const d = Math.hypot(i + 0.5 - y, j + 0.5 - x);
      const a = strength * Math.max(0, Math.min(1, radius + 0.5 - d));
      if (a <= 0) continue;
      for (let k = 0; k < c; k++) {
        const idx = (i * w + j) * c + k;
        demo.image[idx] = demo.image[idx] * (1 - a) + color[k] * a;
      }
    }
  }
}

function cellAt(canvas, ev) {
  const rect = canvas.getBoundingClientRect();
  const [h, w] = shape();
  return [((ev.clientY - rect.top) / rect.height) * h, ((ev.clientX - rect.left) / rect.width) * w];
}

function setupCanvas() {
  const canvas = $("canvas");
  let drawing = false;
  let last = null;
  const stroke = (ev) => {
    const [y, x] = cellAt(canvas, ev);
    // Fill the gap since the last event so fast strokes stay continuous.
    const n = last ? Math.max(1, Math.ceil(Math.hypot(y - last[0], x - last[1]) * 2)) : 1;
    for (let s = 1; s <= n; s++) {
      const t = s / n;
      paint(last ? last[0] + (y - last[0]) * t : y, last ? last[1] + (x - last[1]) * t : x);
    }
    last = [y, x];
    render(canvas, demo.image);
  };
  canvas.addEventListener("pointerdown", (ev) => {
    if (demo.running) return;
    drawing = true; last = null;
    canvas.setPointerCapture(ev.pointerId);
    stroke(ev);
  });
  canvas.addEventListener("pointermove", (ev) => { if (drawing) stroke(ev); });
  const end = () => { if (drawing) { drawing = false; last = null; predict(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

// ---------------------------------------------------------------------- probabilities

function buildBars() {
  const box = $("probs");
  box.textContent = "";
  demo.info.class_names.forEach((name, i) => {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.class = String(i);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    track.appendChild(fill);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.id = `prob-${i}`;
    prob.textContent = "–";
    row.append(label, track, prob);
    box.appendChild(row);
  });
}

function showProbs(probs) {
  demo.probs = probs;
  const pred = probs.indexOf(Math.max(...probs));
  const target = Number($("target").value);
  document.querySelectorAll(".bar-row").forEach((row, i) => {
    row.querySelector(".fill").style.width = `${(100 * probs[i]).toFixed(1)}%`;
    row.querySelector(".prob").textContent = probs[i].toFixed(3);
    row.classList.toggle("pred", i === pred);
    row.classList.toggle("target", i === target);
  });
  $("probs").dataset.probs = JSON.stringify(probs);
}

async function predict() {
  try {
    const out = await api("/api/predict", { image: Array.from(demo.image) });
    demo.requests++;
    showProbs(out.probs);
  } catch (e) {
    setStatus(`error: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------------------- steps

async function oneStep() {
  const t0 = performance.now();
  const out = await api("/api/step", {
    image: Array.from(demo.image),
    target: Number($("target").value),
    away: $("away").checked,
    steps: 1,
    step_size: Number($("step-size").value),
  });
  demo.requests++;
  demo.image = Float32Array.from(out.image);
  demo.stepsTaken++;
  render($("canvas"), demo.image);
  showProbs(out.probs);
  const name = demo.info.class_names[Number($("target").value)];
  setStatus(`steps taken: ${demo.stepsTaken}; p(${name}) = ${out.target_probs[0].toFixed(3)}; ` +
            `last step ${(performance.now() - t0).toFixed(0)} ms (round trip)`);
}

function setRunning(on) {
  demo.running = on;
  $("stop").disabled = !on;
  ["step", "run", "reset"].forEach((id) => { $(id).disabled = on; });
}

async function runSteps(n) {
  if (demo.running) return;
  setRunning(true);
  try {
    for (let s = 0; s < n && demo.running; s++) await oneStep();
  } catch (e) {
    setStatus(`error: ${e.message}`, true);
  } finally {
    setRunning(false);
  }
}

// -------------------------------------------------------------------------- set-up

function loadImage(values) {
  demo.image = Float32Array.from(values);
  demo.stepsTaken = 0;
  render($("canvas"), demo.image);
  setStatus("steps taken: 0");
  predict();
}

function setupExamples() {
  const box = $("examples");
  const [h, w] = shape();
  const scale = Math.max(1, Math.round(32 / Math.max(h, w)));
  demo.info.examples.forEach((ex, n) => {
    const c = document.createElement("canvas");
    c.width = w * scale; c.height = h * scale;
    c.title = `test image of class ${demo.info.class_names[demo.info.example_labels[n]]}`;
    c.className = "example";
    c.dataset.index = String(n);
    box.appendChild(c);
    render(c, ex);
    c.addEventListener("click", () => { if (!demo.running) loadImage(ex); });
  });
}

async function init() {
  try {
    demo.info = await api("/api/info");
  } catch (e) {
    setStatus(`cannot load the model: ${e.message}`, true);
    return;
  }
  const info = demo.info;
  $("description").textContent = `model: ${info.description}`;
  const [h, w, c] = info.image_shape;
  const canvas = $("canvas");
  const cell = Math.max(1, Math.floor(320 / Math.max(h, w)));
  canvas.width = w * cell; canvas.height = h * cell;
  $("color-label").hidden = c !== 3;
  const select = $("target");
  info.class_names.forEach((name, i) => {
    const opt = document.createElement("option");
    opt.value = String(i);
    opt.textContent = name;
    select.appendChild(opt);
  });
  const size = $("step-size");
  size.value = String(info.default_step_size);
  size.max = String(info.max_step_size);
  $("run-steps").max = String(info.max_steps);
  buildBars();
  setupCanvas();
  setupExamples();
  $("reset").addEventListener("click", () => loadImage(new Float32Array(h * w * c)));
  $("step").addEventListener("click", () => runSteps(1));
  $("run").addEventListener("click", () => {
    const n = Math.max(1, Math.min(info.max_steps, Math.round(Number($("run-steps").value) || 1)));
    runSteps(n);
  });
  $("stop").addEventListener("click", () => { demo.running = false; });
  select.addEventListener("change", () => { if (demo.probs) showProbs(demo.probs); });
  loadImage(new Float32Array(h * w * c));
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
