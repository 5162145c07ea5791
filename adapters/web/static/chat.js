"use strict";
// The chat page: record (hold to talk), upload or type; shows transcript, reply and voice.
const log = document.getElementById("log");
const status = document.getElementById("status");
let conversation = sessionStorage.getItem("chatman-conversation");

function add(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  log.appendChild(li);
  li.scrollIntoView();
  return li;
}

async function send(form) {
  if (conversation) form.append("conversation_id", conversation);
  document.body.classList.add("busy");
  status.textContent = "Thinking…";
  try {
    const response = await fetch("/api/chat", { method: "POST", body: form, headers: { "X-ChatMan": "1" } });
    const data = await response.json();
    if (!response.ok) { add("error", data.error || "Something went wrong."); return; }
    conversation = data.conversation_id;
    sessionStorage.setItem("chatman-conversation", conversation);
    add("you transcript", data.transcript);
    const li = add("bot reply", data.reply);
    if (data.audio_url) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.src = data.audio_url;
      li.appendChild(audio);
      audio.play().catch(() => {});
    }
  } catch (err) {
    add("error", "The bot can't be reached: " + err);
  } finally {
    document.body.classList.remove("busy");
    status.textContent = "";
  }
}

document.getElementById("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (!input.value.trim()) return;
  const form = new FormData();
  form.append("text", input.value);
  input.value = "";
  send(form);
});

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("audio", file, file.name);
  event.target.value = "";
  send(form);
});

// Hold to record: MediaRecorder gives WebM/Opus, which the server decodes like any voice note.
const button = document.getElementById("record");
let recorder = null;
let chunks = [];
async function startRecording() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    recorder = new MediaRecorder(stream);
    chunks = [];
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      const form = new FormData();
      form.append("audio", new Blob(chunks, { type: recorder.mimeType }), "voice.webm");
      send(form);
    };
    recorder.start();
    button.classList.add("on");
  } catch (err) {
    add("error", "No microphone: " + err.message);
  }
}
function stopRecording() {
  if (recorder && recorder.state === "recording") recorder.stop();
  button.classList.remove("on");
}
button.addEventListener("pointerdown", startRecording);
button.addEventListener("pointerup", stopRecording);
button.addEventListener("pointerleave", stopRecording);

// The user's /forget: the server deletes this conversation's messages, pairs and reply audio.
document.getElementById("forget").addEventListener("click", async () => {
  if (!conversation) { log.replaceChildren(); return; }
  if (!confirm("Delete this conversation from the bot, including the recordings of its answers?")) return;
  try {
    const response = await fetch("/api/forget", {
      method: "POST", headers: { "X-ChatMan": "1", "Content-Type": "application/json" },
      body: JSON.stringify({ conversation_id: conversation }) });
    const data = await response.json();
    if (!response.ok) { add("error", data.error || "Something went wrong."); return; }
    log.replaceChildren();
    conversation = null;
    sessionStorage.removeItem("chatman-conversation");
    add("notice", data.message);
  } catch (err) {
    add("error", "The bot can't be reached: " + err);
  }
});
