// An nnforge web export in the browser: loads export.json, the model (onnxruntime-web, WebAssembly) and, for a text
// classifier, the WordPiece tokenizer; exposes window.nnforgePredict(inputs) and drives the page's text box.
//
//   await window.nnforgePredict(["Now is the winter of our discontent"])
//   // -> [{label: "history", confidence: 0.71, probabilities: {comedy: 0.1, tragedy: 0.19, history: 0.71}}]
//
// Texts for a text classifier; for a tensor classifier, one flat array of numbers per example.

import * as ort from "./ort.wasm.min.mjs";
import { WordPiece } from "./wordpiece.mjs";

const BATCH = 16;
const here = new URL("./", import.meta.url).href;

ort.env.wasm.wasmPaths = here;
// threads need SharedArrayBuffer, which only a cross-origin-isolated page has (COOP/COEP headers)
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

async function fetchJson(name) {
  const response = await fetch(here + name);
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response.json();
}

async function load() {
  const manifest = await fetchJson("export.json");
  const session = await ort.InferenceSession.create(here + manifest.model, { executionProviders: ["wasm"] });
  const tokenizer = manifest.family === "text-classifier" ? new WordPiece(await fetchJson("wordpiece.json")) : null;
  return { manifest, session, tokenizer };
}

const state = load();

function int64(rows, length) {
  const data = new BigInt64Array(rows.length * length);
  rows.forEach((row, i) => row.forEach((v, j) => { data[i * length + j] = BigInt(v); }));
  return new ort.Tensor("int64", data, [rows.length, length]);
}

function feeds({ manifest, tokenizer }, inputs) {
  if (tokenizer) {
    const b = tokenizer.batch(inputs.map(String));
    return { input_ids: int64(b.inputIds, b.length), attention_mask: int64(b.attentionMask, b.length) };
  }
  const input = manifest.inputs[0];
  const shape = input.shape.slice(1);
  const size = shape.reduce((a, d) => a * d, 1);
  const data = new Float32Array(inputs.length * size);
  inputs.forEach((row, i) => {
    const flat = Array.from(row).flat(Infinity).map(Number);
    if (flat.length !== size) throw new Error(`input ${i} has ${flat.length} numbers; the model reads ${size} (${shape.join("x")})`);
    data.set(flat, i * size);
  });
  return { [input.name]: new ort.Tensor("float32", data, [inputs.length, ...shape]) };
}

function rows(logits, names) {
  const [n, k] = logits.dims;
  const out = [];
  for (let i = 0; i < n; i++) {
    const z = Array.from(logits.data.slice(i * k, (i + 1) * k));
    const top = Math.max(...z);
    const e = z.map((v) => Math.exp(v - top));
    const sum = e.reduce((a, b) => a + b, 0);
    const p = e.map((v) => v / sum);
    const best = z.indexOf(top);
    const labels = names || z.map((_, j) => String(j));
    out.push({ label: labels[best], index: best, confidence: p[best],
               probabilities: Object.fromEntries(labels.map((name, j) => [name, p[j]])) });
  }
  return out;
}

/** Predict a list of inputs; resolves to one {label, index, confidence, probabilities} per input, in order. */
export async function predict(inputs) {
  if (!Array.isArray(inputs)) throw new Error("nnforgePredict takes an array of inputs");
  const loaded = await state;
  const out = [];
  for (let i = 0; i < inputs.length; i += BATCH) {
    const result = await loaded.session.run(feeds(loaded, inputs.slice(i, i + BATCH)));
    out.push(...rows(result.logits, loaded.manifest.label_names));
  }
  return out;
}

window.nnforgePredict = predict;
window.nnforgeReady = state.then(() => true);

function show(text, cls) {
  const el = document.getElementById("result");
  if (el) { el.textContent = text; el.className = cls; }
}

state.then(({ manifest }) => {
  const form = document.getElementById("form");
  const title = document.getElementById("title");
  if (title && manifest.source && manifest.source.run) title.textContent += ` — run ${manifest.source.run}, ${manifest.source.variant}`;
  show("model loaded: type and press Classify", "ready");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = document.getElementById("input").value;
    const input = manifest.family === "text-classifier" ? text : text.split(/[\s,]+/).filter(Boolean).map(Number);
    try {
      const [row] = await predict([input]);
      show(`${row.label} (${(100 * row.confidence).toFixed(1)}%)  ` + Object.entries(row.probabilities)
        .map(([name, p]) => `${name} ${(100 * p).toFixed(1)}%`).join(", "), "ok");
    } catch (err) {
      show(`error: ${err.message || err}`, "error");
    }
  });
}, (err) => show(`the model did not load: ${err.message || err}`, "error"));
