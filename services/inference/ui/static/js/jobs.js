// The small batch jobs view: submit a job for a prefix, watch its progress, then open any
// output mask over its input (both read through the API, which checks they belong to the job).

import * as api from "./api.js";
import { CLASSES, decodeTrimapPng } from "./mask.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const PAGE = 50;

export class JobsView {
  constructor(withKey, view) {
    this.withKey = withKey;
    this.view = view;
    this.timer = 0;
    $("job-form").addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
  }

  say(text, isError = false) {
    $("job-status").textContent = text;
    $("job-status").classList.toggle("error", isError);
  }

  async submit() {
    clearTimeout(this.timer);
    const request = { input: $("job-input").value.trim(), output: $("job-output").value.trim() };
    this.say("Submitting…");
    try {
      const status = await this.withKey(() => api.submitJob(request));
      this.show(status);
    } catch (error) {
      this.say(`Not submitted: ${error.message}`, true);
    }
  }

  show(status) {
    const { images = 0, done = 0, failed = 0 } = status.totals || {};
    const progress = $("job-progress");
    progress.hidden = false;
    progress.max = Math.max(1, images);
    progress.value = done;
    $("job-status").dataset.state = status.state;
    this.say(`Job ${status.job_id}: ${status.state}, ${done} of ${images} images`
      + (failed ? ` (${failed} failed)` : "") + (status.error ? `: ${status.error}` : ""));
    if (!FINAL.has(status.state)) {
      this.timer = setTimeout(() => this.poll(status.job_id), POLL_MS);
    } else if (status.state === "succeeded") {
      this.listItems(status.job_id);
    }
  }

  async listItems(jobId) {
    const list = $("job-items");
    list.replaceChildren();
    try {
      const page = await this.withKey(() => api.jobItems(jobId, 0, PAGE));
      for (const item of page.items) {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.index = String(item.index);
        const name = item.input.split("/").pop();
        button.textContent = item.error ? `${name} (failed)` : name;
        button.disabled = !item.output;
        button.title = item.error ? item.error.detail : `open ${name} with its mask`;
        button.addEventListener("click", () => this.open(jobId, item, name));
        li.append(button);
        list.append(li);
      }
      if (page.total > page.items.length) {
        const li = document.createElement("li");
        li.textContent = `… and ${page.total - page.items.length} more (see the manifest)`;
        list.append(li);
      }
    } catch (error) {
      this.say(`Could not list the job's images: ${error.message}`, true);
    }
  }

  async open(jobId, item, name) {
    try {
      const [image, mask] = await Promise.all([
        this.withKey(() => api.jobItemFile(jobId, item.index, "input")),
        this.withKey(() => api.jobItemFile(jobId, item.index, "mask")),
      ]);
      const [bitmap, decoded] = await Promise.all([
        createImageBitmap(image), decodeTrimapPng(new Uint8Array(await mask.arrayBuffer()))]);
      this.view.drawComposite($("job-canvas"), bitmap, decoded);
      $("job-view").hidden = false;
      const shares = CLASSES.map((c) => `${c.name} ${(100 * (item.class_fractions?.[c.name] ?? 0)).toFixed(1)}%`);
      $("job-caption").textContent = `${name}: ${decoded.width}×${decoded.height}, ${shares.join(", ")}`;
      $("job-view").dataset.index = String(item.index);
    } catch (error) {
      this.say(`Could not open ${name}: ${error.message}`, true);
    }
  }

  async poll(jobId) {
    try {
      this.show(await this.withKey(() => api.job(jobId)));
    } catch (error) {
      this.say(`Lost the job: ${error.message}`, true);
    }
  }
}
