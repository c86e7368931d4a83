// EchoForge Studio: plain JavaScript against the API that serves this page. The key stays in sessionStorage and
// travels only in the Authorization header; the events stream is read with fetch() (EventSource cannot send it).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "echoforge.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
  const LIST_EVERY_MS = 3000;
  const studio = { key: sessionStorage.getItem(KEY_STORAGE) || "", watching: null, blobUrls: [], listing: false };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (studio.key) headers.set("Authorization", `Bearer ${studio.key}`);
    const response = await fetch(path, { ...options, headers });
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try { const problem = await response.json(); detail = problem.detail || problem.title || detail; } catch { }
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  const apiJson = async (path, options) => (await api(path, options)).json();
  const short = (id) => id.slice(0, 8);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function say(message) { $("status").textContent = message; }
  function alertUser(error) { $("alert").textContent = error ? String(error.message || error) : ""; }

  function needKey() {
    if (studio.key) return true;
    alertUser("Enter an API key first.");
    $("api-key").focus();
    return false;
  }

  function useKey(key) {
    studio.key = key;
    if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = key;
    alertUser("");
    if (key) { loadVoices(); loadJobs(); } else forgetTenant();
  }

  // Without a key nothing of the tenant's stays on the page: the list, the voices, the player and its blobs.
  function forgetTenant() {
    if (studio.watching) studio.watching.abort();
    studio.watching = null;
    renderJobs([]);
    fillSelect($("voice"), [["", "None: the speaker alone"]], "");
    $("player").removeAttribute("src");
    $("player").querySelectorAll("track").forEach((old) => old.remove());
    $("result").hidden = true;
    $("downloads").replaceChildren();
    studio.blobUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
  }

  // Choices: the speaker ids and formats POST /v1/narrations accepts, read from the OpenAPI schema.
  function resolve(schema, node) {
    const ref = node && node.$ref;
    return ref ? ref.slice(2).split("/").reduce((at, part) => at[part], schema) : node;
  }

  async function loadChoices() {
    let speaker = { minimum: 0, maximum: 99, default: 1 }, format = { enum: ["wav", "flac"], default: "wav" };
    try {
      const schema = await (await fetch("openapi.json")).json();
      const body = resolve(schema, schema.paths["/v1/narrations"].post.requestBody.content["application/json"].schema);
      speaker = resolve(schema, body.properties.speaker_id) || speaker;
      format = resolve(schema, body.properties.output_format) || format;
    } catch { /* the defaults above */ }
    const speakers = [];
    for (let id = speaker.minimum; id <= speaker.maximum; id += 1) speakers.push(String(id));
    fillSelect($("speaker"), speakers.map((id) => [id, `Speaker ${id}`]), String(speaker.default));
    fillSelect($("format"), format.enum.map((name) => [name, name.toUpperCase()]), format.default);
  }

  function fillSelect(select, pairs, chosen) {
    select.replaceChildren(...pairs.map(([value, text]) => new Option(text, value, false, value === chosen)));
  }

  async function loadVoices(chosen) {
    if (!studio.key) return;
    try {
      const page = await apiJson("v1/voices?limit=200");
      const pairs = [["", "None: the speaker alone"],
        ...page.data.map((v) => [v.id, `${v.name || short(v.id)} (${v.seconds.toFixed(1)} s)`])];
      fillSelect($("voice"), pairs, chosen ?? $("voice").value);
    } catch (error) { alertUser(error); }
  }

  async function uploadVoice(event) {
    event.preventDefault();
    if (!needKey()) return;
    const form = new FormData();
    form.append("audio", $("voice-audio").files[0]);
    form.append("transcript", $("voice-transcript").value);
    if ($("voice-name").value.trim()) form.append("name", $("voice-name").value.trim());
    try {
      const voice = await apiJson("v1/voices", { method: "POST", body: form });
      await loadVoices(voice.id);
      event.target.reset();
      alertUser("");
      say(`Voice ${voice.name || short(voice.id)} saved and chosen.`);
    } catch (error) { alertUser(error); }
  }

  async function submitNarration(event) {
    event.preventDefault();
    if (!needKey()) return;
    const body = { text: $("text").value, speaker_id: Number($("speaker").value), output_format: $("format").value };
    if ($("voice").value) body.voice_id = $("voice").value;
    $("submit").disabled = true;
    try {
      const job = await apiJson("v1/narrations", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      alertUser("");
      loadJobs();
      watch(job);
    } catch (error) { alertUser(error); } finally { $("submit").disabled = false; }
  }

  // Server-sent events over fetch: blocks separated by a blank line, "event:" and "data:" lines (CRLF or LF).
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const held = buffer.endsWith("\r") ? "\r" : "";
      let text = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
      let end;
      while ((end = text.indexOf("\n\n")) >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
      }
      buffer = text + held;
    }
  }

  async function watch(job) {
    if (studio.watching) studio.watching.abort();
    const controller = new AbortController();
    studio.watching = controller;
    showProgress(job);
    while (!TERMINAL.has(job.state)) {
      try {
        const response = await api(`v1/narrations/${job.id}/events`, { signal: controller.signal });
        await readEvents(response.body, (kind, record) => { job = record; showProgress(job); });
        if (!TERMINAL.has(job.state)) job = await apiJson(`v1/narrations/${job.id}`, { signal: controller.signal });
      } catch (error) {
        if (controller.signal.aborted) return;
        alertUser(error);
        if (error instanceof ApiError && error.status !== 429 && error.status < 500) return;
        await sleep(2000);
      }
    }
    if (controller.signal.aborted) return;
    studio.watching = null;
    showProgress(job);
    loadJobs();
    if (job.state === "succeeded") await openResult(job);
  }

  function showProgress(job) {
    const progress = job.progress || {};
    const total = progress.chunks_total || 0, done = progress.chunks_done || 0;
    const bar = $("progress");
    bar.max = total || 1;
    bar.value = job.state === "succeeded" ? bar.max : Math.min(done, bar.max);
    $("progress-label").textContent = `Narration ${short(job.id)}`;
    const phase = job.state === "running" && progress.phase ? ` (${progress.phase})` : "";
    const error = job.error ? `: ${job.error.code}, ${job.error.message}` : "";
    const message = `Narration ${short(job.id)} ${job.state}${phase}${error}`;
    if ($("status").textContent !== message) say(message);
    const parts = total ? [`${done} of ${total} chunks`] : [];
    if (progress.eta_s != null && !TERMINAL.has(job.state)) parts.push(`about ${duration(progress.eta_s)} left`);
    if (job.result) parts.push(`${duration(job.result.duration_s)} of audio`);
    $("progress-detail").textContent = parts.join(" · ");
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
    return [h ? `${h} h` : "", m ? `${m} min` : "", h || (m && !rest) ? "" : `${rest} s`].filter(Boolean).join(" ");
  }

  async function blobUrl(path) {
    const url = URL.createObjectURL(await (await api(path)).blob());
    studio.blobUrls.push(url);
    return url;
  }

  // The audio streams from storage by a presigned URL where there is one (a player cannot send the key), else it
  // is fetched with the key as a blob; the captions are fetched with the key and given to a <track> as a blob.
  async function openResult(job) {
    try {
      const previous = studio.blobUrls.splice(0);
      const base = `v1/narrations/${job.id}`;
      const link = await apiJson(`${base}/audio-url`);
      const audio = link.url || await blobUrl(`${base}/audio`), download = link.download_url || audio;
      const vtt = await blobUrl(`${base}/captions.vtt`), srt = await blobUrl(`${base}/captions.srt`);
      const player = $("player");
      player.querySelectorAll("track").forEach((old) => old.remove());
      player.src = audio;
      const track = Object.assign(document.createElement("track"), { kind: "captions", label: "Captions", src: vtt });
      track.addEventListener("cuechange", () => showCue(track.track));
      player.append(track);
      track.track.mode = "hidden";
      $("caption").textContent = "";
      const format = job.result.format;
      showDownloads([[download, `${job.id}.${format}`, `Audio (${format.toUpperCase()})`],
        [vtt, `${job.id}.vtt`, "Captions (WebVTT)"], [srt, `${job.id}.srt`, "Captions (SubRip)"]]);
      $("result-heading").textContent = `Narration ${short(job.id)}: ${duration(job.result.duration_s)}`;
      $("result").hidden = false;
      previous.forEach((url) => URL.revokeObjectURL(url));
      say(`Narration ${short(job.id)} is ready to play.`);
    } catch (error) { alertUser(error); }
  }

  function showCue(textTrack) {
    const cues = Array.from(textTrack.activeCues || []);
    $("caption").textContent = cues.map((cue) => cue.getCueAsHTML().textContent).join(" ");
  }

  function showDownloads(links) {
    $("downloads").replaceChildren(...links.map(([href, filename, text]) => {
      const item = document.createElement("li");
      const anchor = Object.assign(document.createElement("a"), { href, download: filename, textContent: text });
      item.append(anchor);
      return item;
    }));
  }

  async function loadJobs() {
    if (!studio.key || studio.listing) return;
    studio.listing = true;
    try {
      renderJobs((await apiJson("v1/narrations?limit=20")).data);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) useKey("");  // revoked or mistyped: stop asking
      alertUser(error);
    } finally { studio.listing = false; }
  }

  function renderJobs(jobs) {
    const active = document.activeElement;
    const focused = active && active.dataset && active.dataset.action ? [active.dataset.action, active.dataset.job] : null;
    $("jobs").tBodies[0].replaceChildren(...jobs.map(jobRow));
    $("jobs-empty").hidden = jobs.length > 0;
    if (focused) {
      const again = document.querySelector(`button[data-action="${focused[0]}"][data-job="${focused[1]}"]`);
      (again || $("refresh")).focus();
    }
  }

  function jobRow(job) {
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    const progress = job.progress || {};
    const id = Object.assign(document.createElement("th"), { scope: "row" });
    id.append(Object.assign(document.createElement("code"), { textContent: short(job.id), title: job.id }));
    const when = job.created_at ? new Date(job.created_at).toLocaleString() : "";
    const cells = [when, String(job.request.text_chars ?? ""), job.state,
      progress.chunks_total ? `${progress.chunks_done || 0} / ${progress.chunks_total}` : ""];
    row.append(id, ...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
    row.children[3].className = `state state-${job.state}`;
    const actions = document.createElement("td");
    if (job.state === "succeeded") actions.append(actionButton("open", "Play", job));
    if (job.state === "queued" || job.state === "running") actions.append(actionButton("cancel", "Cancel", job));
    if (job.state === "failed" || job.state === "expired") actions.append(actionButton("retry", "Retry", job));
    row.append(actions);
    return row;
  }

  function actionButton(action, text, job) {
    const button = Object.assign(document.createElement("button"), { type: "button", textContent: text });
    button.append(Object.assign(document.createElement("span"), {
      className: "visually-hidden", textContent: ` narration ${short(job.id)}` }));
    Object.assign(button.dataset, { action, job: job.id });
    return button;
  }

  async function onJobAction(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const { action, job: id } = button.dataset;
    try {
      if (action === "open") {
        const job = await apiJson(`v1/narrations/${id}`);
        showProgress(job);
        await openResult(job);
      } else {
        const job = await apiJson(`v1/narrations/${id}/${action}`, { method: "POST" });
        say(`Narration ${short(id)}: ${action === "cancel" ? "cancel requested" : "queued again"}.`);
        if (action === "retry") watch(job);
      }
      alertUser("");
    } catch (error) { alertUser(error); }
    loadJobs();
  }

  async function loadTextFile(event) {
    const file = event.target.files[0];
    if (!file) return;
    $("text").value = await file.text();
    countCharacters();
    say(`Loaded ${file.name}.`);
  }

  function countCharacters() {
    $("text-count").textContent = `${$("text").value.length.toLocaleString()} characters`;
  }

  function start() {
    $("key-form").addEventListener("submit", (event) => { event.preventDefault(); useKey($("api-key").value.trim()); });
    $("forget-key").addEventListener("click", () => useKey(""));
    $("narration-form").addEventListener("submit", submitNarration);
    $("voice-form").addEventListener("submit", uploadVoice);
    $("text-file").addEventListener("change", loadTextFile);
    $("text").addEventListener("input", countCharacters);
    $("refresh").addEventListener("click", loadJobs);
    $("jobs").addEventListener("click", onJobAction);
    setInterval(() => { if (!document.hidden) loadJobs(); }, LIST_EVERY_MS);
    loadChoices();
    useKey(studio.key);
  }

  start();
})();
