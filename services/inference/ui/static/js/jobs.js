// The small batch jobs view: submit a job for a prefix, watch its progress.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);

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
