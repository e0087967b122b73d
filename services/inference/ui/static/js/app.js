// The page: wires inputs, the editor, feedback, the compare view and batch jobs to the API.

import * as api from "./api.js";
import { MaskEditor } from "./editor.js";
import { CLASSES, agreement, decodeTrimapPng, encodeTrimapPng, fractions, paint } from "./mask.js";
import { JobsView } from "./jobs.js";

const $ = (id) => document.getElementById(id);
const state = { config: null, image: null, answer: null };

const editor = new MaskEditor($("image"), $("overlay"), { onChange: updateLegend });

function say(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function percent(x, digits = 1) {
  return `${(100 * x).toFixed(digits)}%`;
}

// ---- API key: asked for when the API answers 401/403, kept for this tab only ----

function askForKey(reason) {
  return new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-reason").textContent = reason || "This API asks for a key. It is kept for this tab only.";
    $("key-input").value = "";
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save" && $("key-input").value.trim()) {
        api.setApiKey($("key-input").value.trim());
        resolve(true);
      } else {
        if (dialog.returnValue === "forget") api.setApiKey("");
        resolve(false);
      }
    }, { once: true });
    dialog.showModal();
    $("key-input").focus();
  });
}

/** Run an API call; when the API wants a key, ask for one and try again. */
async function withKey(fn) {
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (!(error instanceof api.ApiError) || !error.needsKey) throw error;
      const reason = api.apiKey()
        ? `The API refused this key (${error.message}). Enter another one.`
        : `The API asks for a key: ${error.message}`;
      if (!(await askForKey(reason))) throw error;
    }
  }
}

$("key-button").addEventListener("click", () => askForKey());

// ---- legend, class toggles, tools ----

function buildControls() {
  const legend = $("legend");
  const paintClasses = $("paint-classes");
  for (const c of CLASSES) {
    const li = document.createElement("li");
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.id = `show-${c.name}`;
    box.addEventListener("change", () => editor.setVisible(c.value, box.checked));
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.colour.join(",")})`;
    label.append(box, swatch, document.createTextNode(c.name));
    const share = document.createElement("span");
    share.className = "fraction";
    share.id = `fraction-${c.name}`;
    share.textContent = "–";
    li.append(label, share);
    legend.append(li);

    const radio = document.createElement("label");
    radio.className = "check";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "paint-class";
    input.value = String(c.value);
    input.checked = c.value === editor.paintClass;
    input.addEventListener("change", () => { editor.paintClass = c.value; });
    const sw = swatch.cloneNode();
    const key = document.createElement("kbd");
    key.textContent = String(c.value);
    radio.append(input, sw, document.createTextNode(`${c.name} `), key);
    paintClasses.append(radio);
  }
}

function updateLegend() {
  if (!editor.values) return;
  const shares = fractions(editor.values);
  for (const c of CLASSES) $(`fraction-${c.name}`).textContent = percent(shares[c.name]);
  $("undo").disabled = !editor.undoStack.length;
  $("redo").disabled = !editor.redoStack.length;
  $("reset").disabled = !editor.edited;
  $("send").disabled = !state.answer?.feedbackToken || !editor.edited;
}

function setOpacity() {
  const value = Number($("opacity").value);
  $("overlay").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value}%`;
}

function setSize(size) {
  editor.size = Math.min(80, Math.max(1, size));
  $("size").value = String(editor.size);
  $("size-value").textContent = `${editor.size} px`;
}

function setTool(tool) {
  editor.tool = tool;
  for (const r of document.querySelectorAll("input[name=tool]")) r.checked = r.value === tool;
}

function setPaintClass(value) {
  editor.paintClass = value;
  for (const r of document.querySelectorAll("input[name=paint-class]")) r.checked = Number(r.value) === value;
}

$("opacity").addEventListener("input", setOpacity);
$("size").addEventListener("input", () => setSize(Number($("size").value)));
for (const r of document.querySelectorAll("input[name=tool]")) {
  r.addEventListener("change", () => setTool(r.value));
}
$("undo").addEventListener("click", () => editor.undo());
$("redo").addEventListener("click", () => editor.redo());
$("reset").addEventListener("click", () => editor.reset());

document.addEventListener("keydown", (e) => {
  const target = e.target;
  if (target instanceof HTMLInputElement && !["range", "radio", "checkbox"].includes(target.type)) return;
  if (target instanceof HTMLTextAreaElement || $("key-dialog").open) return;
  const key = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && key === "z") {
    e.preventDefault();
    if (e.shiftKey) editor.redo(); else editor.undo();
  } else if ((e.ctrlKey || e.metaKey) && key === "y") {
    e.preventDefault();
    editor.redo();
  } else if (e.ctrlKey || e.metaKey || e.altKey) {
    return;
  } else if (key === "b") setTool("brush");
  else if (key === "e") setTool("eraser");
  else if (["1", "2", "3"].includes(key)) setPaintClass(Number(key));
  else if (key === "[") setSize(editor.size - 2);
  else if (key === "]") setSize(editor.size + 2);
});

// ---- segmenting an image ----

async function segmentImage(blob, label) {
  state.image = blob;
  state.answer = null;
  $("send").disabled = true;
  say("feedback-result", "");
  say("status", `Segmenting ${label}…`);
  document.body.dataset.busy = "segment";
  try {
    const keep = $("keep").checked;
    const [answer, bitmap] = await Promise.all([
      withKey(() => api.segment(blob, { keep })),
      createImageBitmap(blob),
    ]);
    const mask = await decodeTrimapPng(answer.maskPng);
    if (mask.width !== answer.width || mask.height !== answer.height) {
      throw new Error("the served mask's size differs from what the API said");
    }
    state.answer = answer;
    editor.load(bitmap, mask);
    $("info-model").textContent = `${answer.model} version ${answer.version}`;
    $("info-latency").textContent = `${Math.round(answer.latencyMs)} ms`;
    $("info-cache").textContent = answer.cached ? "hit (answered from the cache)" : "miss (the model ran)";
    $("info-request").textContent = answer.requestId;
    $("info-kept").textContent = keptText(answer);
    $("overlay").dataset.requestId = answer.requestId;
    say("status", `${label}: ${mask.width}×${mask.height}. Paint to correct the mask, then send the correction.`);
    $("compare-run").disabled = false;
  } catch (error) {
    say("status", `Could not segment ${label}: ${error.message}`, true);
  } finally {
    delete document.body.dataset.busy;
  }
}

function keptText(answer) {
  if (!answer.feedbackToken) return "not kept: this answer cannot be corrected (tick “keep” and segment again)";
  if (answer.kept === "durable") {
    const days = (state.config?.keep?.ttl_seconds ?? 0) / 86400;
    return days >= 1 ? `kept for correction for ${Math.round(days * 10) / 10} days`
      : `kept for correction for ${Math.round(days * 24 * 10) / 10} hours`;
  }
  return "kept briefly: send the correction soon, or tick “keep” to keep it for days";
}

function acceptFile(file) {
  if (!file) return;
  if (!["image/jpeg", "image/png"].includes(file.type)) {
    say("status", `${file.name || "That file"} is ${file.type || "of an unknown type"}; the API takes JPEG or PNG.`, true);
    return;
  }
  segmentImage(file, file.name || "pasted image");
}

$("file").addEventListener("change", () => acceptFile($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  acceptFile(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) acceptFile(item.getAsFile());
});

async function loadSamples() {
  try {
    const response = await fetch("samples/index.json");
    const samples = await response.json();
    for (const sample of samples) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.sample = sample.name;
      const img = document.createElement("img");
      img.src = sample.file;
      img.alt = "";
      button.append(img, document.createTextNode(sample.name));
      button.addEventListener("click", async () => {
        const blob = await (await fetch(sample.file)).blob();
        segmentImage(new Blob([blob], { type: "image/jpeg" }), `sample “${sample.name}”`);
      });
      $("sample-list").append(button);
    }
  } catch (error) {
    $("sample-list").textContent = `no samples (${error.message})`;
  }
}

// ---- sending a correction ----

/**
 * Send `png` for `answer`. A feedback token is bound to the key the answer was served to, so
 * when this key may not send corrections, the page asks for one that may, segments the same
 * image again with it (a new token) and sends the same painted mask for that answer.
 */
async function sendCorrection(answer, png) {
  try {
    return await api.sendFeedback(answer, png);
  } catch (error) {
    if (!(error instanceof api.ApiError) || !error.needsKey) throw error;
    const asked = await askForKey(`This key may not send corrections (${error.message}). `
      + "Enter one that may: the image is segmented again with it and your painting is kept.");
    if (!asked) throw error;
    const fresh = await withKey(() => api.segment(state.image, { keep: $("keep").checked }));
    if (fresh.width !== editor.width || fresh.height !== editor.height) {
      throw new Error("the new answer has another size; segment the image again");
    }
    state.answer = fresh;
    $("info-request").textContent = fresh.requestId;
    $("info-kept").textContent = keptText(fresh);
    return sendCorrection(fresh, png);
  }
}

$("send").addEventListener("click", async () => {
  const answer = state.answer;
  if (!answer || !editor.values) return;
  $("send").disabled = true;
  say("feedback-result", "Sending the correction…");
  try {
    const png = await encodeTrimapPng(editor.values, editor.width, editor.height);
    const receipt = await sendCorrection(answer, png);
    say("feedback-result", `Correction stored. IoU between the served and your mask: ${receipt.iou.toFixed(4)} (version ${receipt.version}).`);
    $("feedback-result").dataset.iou = String(receipt.iou);
  } catch (error) {
    const why = error.status === 404 ? " The answer is no longer kept: segment the image again (tick “keep” to keep it longer)."
      : error.status === 409 ? " This answer already received its correction." : "";
    say("feedback-result", `Not stored: ${error.message}.${why}`, true);
    $("send").disabled = false;
  }
});

// ---- compare stable and candidate ----

function drawComposite(canvas, bitmap, mask) {
  canvas.width = mask.width;
  canvas.height = mask.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, mask.width, mask.height);
  const layer = new OffscreenCanvas(mask.width, mask.height);
  const lctx = layer.getContext("2d");
  const pixels = lctx.createImageData(mask.width, mask.height);
  paint(mask.values, pixels.data, editor.visible);
  lctx.putImageData(pixels, 0, 0);
  ctx.globalAlpha = Number($("opacity").value) / 100;
  ctx.drawImage(layer, 0, 0);
  ctx.globalAlpha = 1;
}

$("compare-run").addEventListener("click", async () => {
  const blob = state.image;
  const compare = state.config?.compare;
  if (!blob || !compare) return;
  say("compare-result", "Segmenting with both versions…");
  document.body.dataset.busy = "compare";
  try {
    const sides = compare.stage
      ? [{}, { stage: compare.stage }]
      : [{ variant: { header: compare.header, value: compare.stable } },
         { variant: { header: compare.header, value: compare.canary } }];
    const [stable, candidate] = await Promise.all(sides.map((o) => withKey(() => api.segment(blob, o))));
    const [a, b, bitmap] = await Promise.all([
      decodeTrimapPng(stable.maskPng), decodeTrimapPng(candidate.maskPng), createImageBitmap(blob)]);
    $("compare-pair").hidden = false;
    drawComposite($("compare-stable"), bitmap, a);
    drawComposite($("compare-candidate"), bitmap, b);
    $("compare-stable-caption").textContent = `Stable: ${stable.model} version ${stable.version}`;
    $("compare-candidate-caption").textContent = `Candidate: ${candidate.model} version ${candidate.version}`;
    const agree = agreement(a.values, b.values);
    $("compare-result").dataset.agreement = String(agree);
    say("compare-result", stable.version === candidate.version
      ? `Both sides answered with version ${stable.version}: no candidate is being served.`
      : `Pixel agreement between version ${stable.version} and version ${candidate.version}: ${percent(agree, 2)}.`);
  } catch (error) {
    say("compare-result", `Could not compare: ${error.message}`, true);
  } finally {
    delete document.body.dataset.busy;
  }
});

// ---- start ----

async function start() {
  buildControls();
  setOpacity();
  loadSamples();
  try {
    state.config = await withKey(() => api.pageConfig());
    const c = state.config;
    $("model-info").textContent = c.model
      ? `Model ${c.model.name} version ${c.model.version} (${c.model.stage})` : "Model: still loading";
    $("compare-help").textContent = c.compare.stage
      ? `This API also serves the “${c.compare.stage}” stage: compare it with the stable version.`
      : `Asks the gateway for each side with the ${c.compare.header} header (stable / canary).`;
    $("keep").parentElement.hidden = !c.keep?.enabled;
  } catch (error) {
    $("model-info").textContent = `API unreachable: ${error.message}`;
  }
  new JobsView(withKey, { drawComposite });
  document.body.dataset.ready = "true";
}

start();
