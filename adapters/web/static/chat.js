"use strict";
// The chat page: record (hold the button or Space), upload or type. The turn streams from
// /api/chat/stream: what was heard, the reply as it is written, and each sentence's audio as
// soon as it is voiced; then the whole reply's audio stays on the message for replay.
const log = document.getElementById("log");
const status = document.getElementById("status");
const textInput = document.getElementById("text");
const controls = ["record", "upload", "text", "send", "new", "forget"].map((id) => document.getElementById(id));
const STAGES = { listening: "Listening…", thinking: "Thinking…", speaking: "Speaking…" };
const KEY = "chatman-conversation";
let conversation = localStorage.getItem(KEY) || newConversation();
let sending = false;

function newConversation() {
  // 64 random bits, like the ids the server gives: the id is the only key to a conversation.
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  const id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  localStorage.setItem(KEY, id);
  return id;
}

function add(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  const p = document.createElement("p");
  p.className = "text";
  p.textContent = text;
  li.appendChild(p);
  log.appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function setText(li, text) {
  li.querySelector(".text").textContent = text;
}

function addPlayer(li, url) {
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = url;
  audio.setAttribute("aria-label", "Play the reply");
  li.appendChild(audio);
  return audio;
}

function setBusy(on, stage) {
  sending = on;
  document.body.classList.toggle("busy", on);
  for (const c of controls) c.disabled = on;
  status.textContent = on ? (STAGES[stage] || "Sending…") : "";
  if (!on && document.activeElement === document.body) textInput.focus();
}

// --- audio: one reply plays at a time ---------------------------------------------------
// Sentence clips of the reply being written play in order from one Audio object (not in the
// page); a player in the conversation that starts stops them, and they stop the players.
let clips = [];
let clip = null;

function stopClips() {
  clips.forEach((url) => URL.revokeObjectURL(url));
  clips = [];
  if (clip) {
    clip.pause();
    URL.revokeObjectURL(clip.src);
    clip = null;
  }
}

function pausePlayers(except) {
  for (const a of log.querySelectorAll("audio")) if (a !== except) a.pause();
}

function queueClip(base64, mime) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  clips.push(URL.createObjectURL(new Blob([bytes], { type: mime || "audio/ogg" })));
  if (!clip) playNextClip();
}

function playNextClip() {
  const url = clips.shift();
  if (!url) { clip = null; return; }
  const audio = new Audio(url);
  clip = audio;
  pausePlayers(null);
  const next = () => {
    URL.revokeObjectURL(url);
    if (clip === audio) { clip = null; playNextClip(); }
  };
  audio.onended = next;
  audio.onerror = next;
  // Autoplay refused: the whole reply's player comes with `done`, for the user to press.
  audio.play().catch(() => { if (clip === audio) stopClips(); });
}

// Capture: "play" does not bubble.
document.addEventListener("play", (event) => {
  if (!(event.target instanceof HTMLMediaElement)) return;
  stopClips();
  pausePlayers(event.target);
}, true);

// --- the streamed turn --------------------------------------------------------------------
// Server-sent events from a POST (EventSource can only GET): "event: NAME\ndata: JSON\n\n".
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield [name, JSON.parse(data)];
    }
  }
}

// Sends the form; returns whether the server accepted it (then the input may be cleared).
async function send(form, mine) {
  form.append("conversation_id", conversation);
  const voice = !mine;
  const you = add(voice ? "you transcript voice pending" : "you transcript", voice ? "🎙 Voice message…" : mine);
  setBusy(true, voice ? "listening" : "thinking");
  let bot = null, written = "";
  try {
    const response = await fetch("/api/chat/stream", { method: "POST", body: form, headers: { "X-ChatMan": "1" } });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      you.remove();
      add("error", data.error || "Something went wrong.");
      return false;
    }
    stopClips();
    pausePlayers(null);
    for await (const [name, data] of events(response)) {
      if (name === "stage") {
        status.textContent = STAGES[data.name] || "";
        if (bot) bot.dataset.stage = data.name;
      } else if (name === "heard") {
        setText(you, data.transcript);
        you.classList.remove("pending");
        bot = add("bot reply writing", "");
      } else if (name === "delta") {
        written += data.text;
        setText(bot, written);
        bot.scrollIntoView({ block: "end" });
      } else if (name === "sentence") {
        if (data.audio) queueClip(data.audio, data.mime);
      } else if (name === "done") {
        // The reply as said: the text written, cut to what the persona speaks.
        setText(bot, data.reply);
        bot.classList.remove("writing");
        if (data.audio_url) addPlayer(bot, data.audio_url);
        bot.dataset.exchange = data.exchange_id;
      } else if (name === "error") {
        add("error", data.error || "Something went wrong.");
        if (bot) bot.classList.add("failed");
      }
    }
    return true;
  } catch (err) {
    if (bot) { add("error", "The answer was cut off: " + err); return true; }
    you.remove();
    add("error", "The bot can't be reached: " + err);
    return false;
  } finally {
    setBusy(false);
  }
}

document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = textInput.value;
  if (!text.trim() || sending) return;
  const form = new FormData();
  form.append("text", text);
  // Cleared only once accepted: typed words survive a server that can't be reached.
  if (await send(form, text) && textInput.value === text) textInput.value = "";
});

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file || sending) return;
  const form = new FormData();
  form.append("audio", file, file.name);
  event.target.value = "";
  send(form, null);
});

// --- hold to talk: the button, or Space while not typing ----------------------------------
// MediaRecorder gives WebM/Opus, which the server decodes like any voice note.
const button = document.getElementById("record");
let recorder = null;
let holding = false;
async function startRecording() {
  if (holding || sending) return;
  holding = true;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    const rec = new MediaRecorder(stream);
    rec.ondataavailable = (e) => chunks.push(e.data);
    rec.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      const form = new FormData();
      form.append("audio", new Blob(chunks, { type: rec.mimeType }), "voice.webm");
      send(form, null);
    };
    recorder = rec;
    rec.start();
    button.classList.add("on");
    button.setAttribute("aria-pressed", "true");
    if (!holding) stopRecording(); // let go while the microphone was being opened
  } catch (err) {
    holding = false;
    add("error", "No microphone: " + err.message);
  }
}
function stopRecording() {
  holding = false;
  if (recorder && recorder.state === "recording") recorder.stop();
  recorder = null;
  button.classList.remove("on");
  button.setAttribute("aria-pressed", "false");
}
button.addEventListener("pointerdown", startRecording);
button.addEventListener("pointerup", stopRecording);
button.addEventListener("pointerleave", () => { if (holding) stopRecording(); });

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable ||
    ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}
document.addEventListener("keydown", (event) => {
  if (event.code !== "Space" || typing(event.target)) return;
  event.preventDefault(); // no scrolling, no "click" of a focused button
  if (!event.repeat) startRecording();
});
document.addEventListener("keyup", (event) => {
  if (event.code !== "Space" || typing(event.target)) return;
  event.preventDefault();
  if (holding) stopRecording();
});

// --- the conversation: restored after a reload, a new one, or forgotten ------------------
async function restore() {
  try {
    const response = await fetch("/api/conversation/" + encodeURIComponent(conversation));
    if (!response.ok) return;
    const data = await response.json();
    if (data.conversation_id !== conversation || log.children.length) return;
    for (const turn of data.turns) {
      add(turn.input_kind === "voice" ? "you transcript voice" : "you transcript", turn.transcript);
      const bot = add("bot reply", turn.reply);
      if (turn.audio_url) addPlayer(bot, turn.audio_url);
      bot.dataset.exchange = turn.exchange_id;
    }
  } catch (err) {
    add("error", "The bot can't be reached: " + err);
  }
}

document.getElementById("new").addEventListener("click", () => {
  stopClips();
  log.replaceChildren();
  conversation = newConversation();
  textInput.focus();
});

// The user's /forget: the server deletes this conversation's messages, pairs and reply audio.
document.getElementById("forget").addEventListener("click", async () => {
  if (!log.querySelector(".you")) { log.replaceChildren(); return; }
  if (!confirm("Delete this conversation from the bot, including the recordings of its answers?")) return;
  try {
    const response = await fetch("/api/forget", {
      method: "POST", headers: { "X-ChatMan": "1", "Content-Type": "application/json" },
      body: JSON.stringify({ conversation_id: conversation }) });
    const data = await response.json();
    if (!response.ok) { add("error", data.error || "Something went wrong."); return; }
    stopClips();
    log.replaceChildren();
    conversation = newConversation();
    add("notice", data.message);
  } catch (err) {
    add("error", "The bot can't be reached: " + err);
  }
});

restore();
