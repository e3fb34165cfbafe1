// whisper-api web page: creates async jobs, follows their SSE progress, shows the transcript.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { jobId: null, started: 0, segments: [], text: "", abort: null };

function headers(extra = {}) {
  const key = localStorage.getItem("whisper-api-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) $("key-box").open = true;  // show where the key goes
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message || message; } catch (_) { /* text */ }
    throw new Error(message);
  }
  return response;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(2, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

async function submitJob(event) {
  event.preventDefault();
  showError("");
  const file = $("file").files[0];
  const url = $("url").value.trim();
  if (!file && !url) { showError("Choose a file or paste a URL first."); return; }
  const fields = { language: $("language").value, format: $("format").value,
    word_timestamps: $("words").checked, task: $("task").value, ...subtitleOptions() };
  if ($("model").value) fields.model = $("model").value;
  if ($("preset").value) fields.preset = $("preset").value;
  if ($("prompt").value.trim()) fields.prompt = $("prompt").value.trim();
  let request;
  if (file) {
    const form = new FormData();
    form.append("file", file);
    for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
    request = { method: "POST", body: form };
  } else {
    request = { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ url, ...fields }) };
  }
  $("submit").disabled = true;
  try {
    const job = await (await api("/api/v1/jobs", request)).json();
    setPlayer(file);
    follow(job.id);
  } catch (error) {
    showError(error.message);
  } finally {
    $("submit").disabled = false;
    refreshJobs();
  }
}

function setPlayer(source) {
  const player = $("player");
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  player.hidden = !source;
  if (source) player.src = typeof source === "string" ? source : URL.createObjectURL(source);
  else player.removeAttribute("src");
}

// After a URL job (or when reopening a job), play the server's converted audio. An <audio> src
// cannot carry the Authorization header, so with a key the audio is fetched as a blob.
async function loadServerAudio(jobId) {
  if (!localStorage.getItem("whisper-api-key")) { setPlayer(`/api/v1/jobs/${jobId}/audio`); return; }
  try {
    setPlayer(await (await api(`/api/v1/jobs/${jobId}/audio`)).blob());
  } catch (_) { setPlayer(null); /* the audio expired with the job: the transcript still shows */ }
}

async function follow(jobId) {
  if (state.abort) state.abort.abort();
  state.abort = new AbortController();
  Object.assign(state, { jobId, started: Date.now() });
  $("progress-box").hidden = false;
  $("result-box").hidden = true;
  $("cancel").disabled = false;
  showProgress({ status: "queued", progress: {} });
  try {
    const response = await api(`/api/v1/jobs/${jobId}/events`, { signal: state.abort.signal });
    await readEvents(response.body, (name, data) => {
      if (data && data.status) showProgress(data);
    });
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
  }
  const job = await (await api(`/api/v1/jobs/${jobId}`)).json();
  finish(job);
}

// SSE over fetch (EventSource cannot send the Authorization header).
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      let parsed = null;
      try { parsed = JSON.parse(data); } catch (_) { /* keep-alive or plain text */ }
      onEvent(name, parsed);
    }
  }
}

function showProgress(job) {
  const p = job.progress || {};
  const percent = Number(p.percent || 0);
  const stage = p.stage || job.status;
  const chunks = p.chunks_total ? ` ${p.chunks_done}/${p.chunks_total} chunks` : "";
  $("stage").textContent = `${stage}${chunks}`;
  $("bar").value = percent;
  const elapsed = (Date.now() - state.started) / 1000;
  const speed = p.audio_seconds_done && elapsed ? p.audio_seconds_done / elapsed : 0;
  const remaining = speed && p.audio_seconds_total
    ? (p.audio_seconds_total - p.audio_seconds_done) / speed : null;
  $("timing").textContent = `elapsed ${clock(elapsed)}` +
    (remaining !== null ? ` · about ${clock(remaining)} left` : "") +
    (speed ? ` · ${speed.toFixed(1)}× realtime` : "");
}

async function finish(job) {
  $("cancel").disabled = true;
  showProgress(job);
  if (job.status === "succeeded") {
    const result = await (await api(`/api/v1/jobs/${job.id}/result?format=verbose_json`)).json();
    showTranscript(result);
    if ($("player").hidden) await loadServerAudio(job.id);
  } else if (job.status === "failed") {
    showError(job.error || "The job failed.");
  } else if (job.status === "cancelled") {
    $("stage").textContent = "cancelled";
  }
  refreshJobs();
}

function showTranscript(result) {
  state.segments = result.segments || [];
  state.text = result.text || "";
  const list = $("segments");
  list.replaceChildren(...state.segments.map((segment, index) => {
    const item = document.createElement("li");
    item.tabIndex = 0;
    item.dataset.index = String(index);
    item.dataset.start = String(segment.start);
    const time = document.createElement("time");
    time.textContent = clock(segment.start);
    const text = document.createElement("span");
    text.textContent = segment.text;
    item.append(time, text);
    return item;
  }));
  $("result-box").hidden = false;
}

function seek(item) {
  const player = $("player");
  if (!item || player.hidden) return;
  player.currentTime = Number(item.dataset.start);
  player.play().catch(() => { /* autoplay may be blocked; seeking is enough */ });
}

function highlightCurrent() {
  const now = $("player").currentTime;
  for (const item of $("segments").children) {
    const segment = state.segments[Number(item.dataset.index)];
    item.classList.toggle("current", now >= segment.start && now < segment.end);
  }
}

function search() {
  const query = $("search").value.trim().toLowerCase();
  for (const item of $("segments").children) {
    const span = item.querySelector("span");
    const text = state.segments[Number(item.dataset.index)].text;
    const at = query ? text.toLowerCase().indexOf(query) : -1;
    item.classList.toggle("hidden", Boolean(query) && at < 0);
    span.replaceChildren(text);
    if (at >= 0) {
      const mark = document.createElement("mark");
      mark.textContent = text.slice(at, at + query.length);
      span.replaceChildren(text.slice(0, at), mark, text.slice(at + query.length));
    }
  }
}

// srt/vtt cue shape (the server's defaults are 42 characters and 2 lines).
function subtitleOptions() {
  return { max_line_width: Number($("line-width").value) || 42,
    max_line_count: Number($("line-count").value) || 2 };
}

// The server names downloads after the input (talk.mp3 -> talk.srt): RFC 6266 filename*.
function downloadName(response, format) {
  const header = response.headers.get("Content-Disposition") || "";
  const encoded = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (encoded) return decodeURIComponent(encoded[1]);
  const plain = /filename="([^"]+)"/i.exec(header);
  return plain ? plain[1] : `transcript.${format === "text" ? "txt" : format}`;
}

async function download(format) {
  try {
    const query = new URLSearchParams({ format, ...subtitleOptions() });
    const response = await api(`/api/v1/jobs/${state.jobId}/result?${query}`);
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = downloadName(response, format);
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  } catch (error) {
    showError(error.message);
  }
}

async function cancelJob() {
  if (!state.jobId) return;
  $("cancel").disabled = true; // one DELETE per job: a second click would only wait on the first
  try {
    await api(`/api/v1/jobs/${state.jobId}`, { method: "DELETE" });
  } catch (error) {
    $("cancel").disabled = false;
    showError(error.message);
  }
}

async function refreshJobs() {
  try {
    const body = await (await api("/api/v1/jobs?limit=10")).json();
    const jobs = Array.isArray(body) ? body : body.jobs || [];
    $("jobs").replaceChildren(...jobs.map((job) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const source = (job.request && job.request.source) || job.id.slice(0, 8);
      button.textContent = `${source} · ${job.status}`;
      button.title = `job ${job.id}`;
      button.addEventListener("click", () => { setPlayer(null); follow(job.id); });
      item.append(button);
      if (job.error) item.append(` ${job.error}`);
      return item;
    }));
  } catch (error) {
    $("jobs").replaceChildren(Object.assign(document.createElement("li"),
      { textContent: error.message }));
  }
}

// The model list and each model's languages come from the server, so the page never offers a
// language (or translation) that the chosen model cannot do.
const models = new Map();
const languageNames = new Intl.DisplayNames(["en"], { type: "language" });

function languageName(code) {
  try { return languageNames.of(code) || code; } catch (_) { return code; }
}

async function loadModels() {
  try {
    const list = (await (await api("/v1/models")).json()).data;
    const select = $("model");
    select.replaceChildren();
    for (const model of list.filter((m) => m.id !== "whisper-1")) {
      models.set(model.id, model);
      const option = new Option(model.id, model.id);
      option.title = model.translation ? `${model.languages.length} languages` : "English only";
      select.append(option);
    }
    showModel();
  } catch (_) { /* without the list (no key yet) the server's default model answers */ }
}

function showModel() {
  const model = models.get($("model").value);
  if (!model) return;
  const chosen = $("language").value;
  const options = model.languages.map((code) => new Option(`${languageName(code)} (${code})`, code));
  options.sort((a, b) => a.text.localeCompare(b.text));
  $("language").replaceChildren(new Option("auto-detect", "auto"), ...options);
  $("language").value = model.languages.includes(chosen) ? chosen : "auto";
  const translate = $("task").querySelector('option[value="translate"]');
  translate.disabled = !model.translation;
  if (!model.translation) $("task").value = "transcribe";
}

function setUp() {
  $("api-key").value = localStorage.getItem("whisper-api-key") || "";
  $("api-key").addEventListener("change", (e) => {
    localStorage.setItem("whisper-api-key", e.target.value.trim());
    refreshJobs();
    loadModels();
  });
  $("model").addEventListener("change", showModel);
  $("job-form").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", cancelJob);
  $("refresh").addEventListener("click", refreshJobs);
  $("search").addEventListener("input", search);
  $("player").addEventListener("timeupdate", highlightCurrent);
  $("segments").addEventListener("click", (e) => seek(e.target.closest("li")));
  $("segments").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); seek(e.target.closest("li")); }
  });
  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => download(button.dataset.download));
  }
  $("copy").addEventListener("click", () => navigator.clipboard.writeText(state.text));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    $("file").files = e.dataTransfer.files;
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  refreshJobs();
  loadModels();
}

setUp();
