"""The words for every :class:`~bot.core.messages.Message` code, in English and Chinese.

``word(message, language)`` renders a message in the persona's language (``zh-CN`` counts as
``zh``), falling back to English for a language or code without words of its own. It never
raises: a missing or broken entry is logged and shown as plainly as it can be.

Templates are ``str.format`` strings over the message's parameters; a parameter that is a
message is rendered in the same language first, a list of messages becomes one line each.
Voice-bot users read these: keep them short, and the Chinese natural rather than literal.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping

from bot.core.messages import TEXT, Message, Param

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "en"
#: How text splits into a pair (typed routes, Discord options and the web console's JSON, take
#: each field as it is and split nothing).
_PAIR_RULE = 'the first " | " (a bar with spaces around it) splits them'
_PAIR_RULE_ZH = "第一个 \" | \"（两边带空格的竖线）把两者分开"
_SAME = "was already trained on exactly this dataset with these settings"
_SAME_ZH = "已经用完全相同的数据集和设置训练过"

EN: dict[str, str] = {
    TEXT: "{text}",
    "lines": "{lines}",
    "suffix.dash": " — {text}",
    # --- errors ---------------------------------------------------------------------
    "error.generic": "Sorry, something went wrong with that message.",
    "error.internal": "Sorry, something went wrong on my side. Please try again.",
    "input.empty": "That message was empty — send me a voice note or some text.",
    "audio.empty": "That audio file was empty.",
    "audio.unsupported": ("I couldn't read that file as audio. Send a voice note or an audio "
                          "file (OGG/Opus, MP3, M4A, WAV, WebM or FLAC)."),
    "audio.too_slow": ("That file took too long to decode. Send a voice note or a plain audio "
                       "file (OGG/Opus, MP3, M4A/AAC, WAV, WebM or FLAC)."),
    "audio.too_large": "That file is too big ({size_mb:.1f} MB); I accept up to {limit_mb:.0f} MB.",
    "audio.too_long": ("That recording is too long ({seconds:.0f} s); please keep it under "
                       "{max_seconds:.0f} seconds."),
    "audio.too_long_at_least": ("That recording is too long (over {seconds:.0f} s); please keep "
                                "it under {max_seconds:.0f} seconds."),
    "text.too_long": ("That message is too long for me ({length} characters); please keep it "
                      "under {limit}."),
    "busy.chat": "I'm still working on your earlier messages here. Please try again in a minute.",
    "busy.server": "I'm answering a lot of people right now. Please try again in a minute.",
    "llm.unavailable": ("I can't answer right now: my language engine isn't responding. "
                        "Please try again in a minute."),
    "speech.none": "I couldn't hear anything — could you say it again?",
    "reply.fallback": "Sorry, I don't have an answer to that right now.",
    "admin.only": "Only admins can do that.",
    # --- commands as text -----------------------------------------------------------
    "command.unknown": "Unknown command /{name}. Commands: {known}.",
    "usage.bare": "Usage: /{name}",
    "usage.id": "Usage: /{name} [ID]",
    "usage.answerall": "Usage: /answerall on|off",
    "usage.activate": "Usage: /activate VERSION (see /models)",
    "usage.add": f"Usage: /add <question> | <answer> — {_PAIR_RULE}; the answer may contain more.",
    "usage.correct": (
        "Usage: /correct ID <better answer>, or /correct <better answer> as a reply to my "
        "answer (then all of the text is the answer). To fix the question too, write "
        f"<question> | <answer>: {_PAIR_RULE}. To keep the question and have \" | \" in the "
        'answer, start with "| ", e.g. /correct 12 | Run ls | grep foo.'),
    "usage.pending": "Usage: /pending [page number]",
    "usage.retrain": ("Usage: /retrain [max steps]. Leave the number out: the defaults pass the "
                      "evaluation gate on the starter model in about 30 steps, and training "
                      "stops as soon as the gate passes."),
    "usage.canceltrain": "Usage: /canceltrain [job number] (see /trainstatus)",
    # --- curation -------------------------------------------------------------------
    "pair.missing": "There is no pair #{id}.",
    "pair.not_an_answer": "That message isn't one of my answers, so there is nothing to curate.",
    "pair.which": ("Which pair? Reply to one of my answers with /{name}, or give its ID "
                   "(see /pending)."),
    "pair.unchanged": "Pair #{id} was already {status}; nothing changed.",
    "pair.approved": "Approved #{id}: {question} → {answer}{replaces}",
    "pair.corrected": "Corrected and approved #{id}: {question} → {answer}{replaces}",
    "pair.rejected": "Rejected #{id}: {question} → {answer}{replaces}",
    "pair.added": "Added #{id}: {question} → {answer}{replaces}",
    "pair.replaces": " (replaces earlier {ids})",
    "correct.empty": "The corrected answer needs some text.",
    "add.empty": "Both the question and the answer need some text.",
    "status.pending": "pending",
    "status.approved": "approved",
    "status.rejected": "rejected",
    "status.superseded": "superseded",
    "pending.none": "Nothing is waiting for review.",
    "pending.empty_page": "Page {page} is empty; there are {pages} page(s).",
    "pending.title": "Pending pairs: {total} (page {page}/{pages}, oldest first)",
    "pending.pair": "#{id}\n  Q: {question}\n  A: {answer}",
    "pending.pair_by": "#{id} — {asked_by}\n  Q: {question}\n  A: {answer}",
    "pending.question": "Q: {question}",
    "pending.answer": "A: {answer}",
    "pending.hint": "Reply /approve ID, /correct ID <answer> or /reject ID.",
    "dataset.summary": ("Dataset for {persona} ({language}): {rows} rows ({seed} seed, "
                        "{approved} approved), {tokens} tokens."),
    "dataset.by_status": ("By status: pending {pending}, approved {approved}, rejected "
                          "{rejected}, superseded {superseded}"),
    "dataset.per_persona": "Approved per persona: {counts}",
    "dataset.none": "none",
    "dataset.last_export": "Last export: {rows} rows, sha256 {sha256}, {at} → {path}",
    "dataset.last_snapshot": "Last snapshot: {rows} rows, sha256 {sha256}, {at} → {path}",
    "persona.info": ("Persona: {display_name} ({name}, {language}). Answering model: {model}. "
                     "Training base: {base_model}."),
    # --- training and model versions -------------------------------------------------
    "retrain.queued": (
        "Queued training job #{id} for {persona}{steps}. It stops as soon as the evaluation "
        "gate passes; the current model keeps answering meanwhile and is replaced only if the "
        "new one passes.{few}{behind}{where}"),
    "retrain.steps": " (at most {steps} steps)",
    "retrain.few_steps": (" Note: {steps} steps rarely pass the gate; the defaults need about 30 "
                          "(/retrain without a number)."),
    "retrain.behind": " It waits for job #{id} ({describe}).",
    "retrain.progress_here": " Progress and the loss plot will come here.",
    "retrain.runner_elsewhere": (" A running bot picks it up; `chatman train` trains in this "
                                 "shell instead."),
    "retrain.trained.active": f"{{version}} {_SAME}; it is answering now.",
    "retrain.trained.retired": (f"{{version}} {_SAME} (retired); /activate {{version}} to use "
                                "it again."),
    "retrain.trained.rejected": (f"{{version}} {_SAME} (rejected: {{why}}). Add or correct pairs "
                                 "first, or change the steps (/retrain STEPS)."),
    "retrain.trained.ready": f"{{version}} {_SAME} and is ready; /activate {{version}} to use it.",
    "retrain.trained.evaluating": (f"{{version}} {_SAME} and is being evaluated ({{status}}); "
                                   "/trainstatus follows it."),
    "retrain.gate_not_passed": "gate not passed",
    "canceltrain.cancelled": "Training job #{id} cancelled; {answering} keeps answering.",
    "canceltrain.unconfirmed": (
        "Asked training job #{id} to stop, but no job runner has confirmed yet (is the bot "
        "running?); /trainstatus shows when it has stopped, and {answering} keeps answering "
        "meanwhile."),
    "canceltrain.finished": ("Training job #{id} finished before it could be stopped "
                             "({describe}); {answering} is answering."),
    "model.base": "the base model ({model})",
    "model.base_short": "the base model",
    "trainstatus.answering": "Answering: {model} — {metrics}",
    "trainstatus.answering_base": "Answering: {model} (base model, no trained version)",
    "trainstatus.job": "Job {describe}",
    "trainstatus.no_job": "No training job is queued or running.",
    "trainstatus.last": "Last finished: job {describe}",
    "metrics": ("persona {persona_score:.2f}, retention {retention:.2f}, "
                "leakage {leakage:.2f}"),
    "metrics.none": "not evaluated",
    "models.none": "No trained versions yet; {model} answers. Use /retrain.",
    "models.title": "Model versions",
    "models.version": "{version} {status}{metrics}{reasons}",
    "model_status.candidate": "candidate",
    "model_status.active": "active",
    "model_status.rejected": "rejected",
    "model_status.retired": "retired",
    "model_status.failed": "failed",
    "activate.done": "{version} is now active{was}; switching between requests.",
    "activate.was": " (was {previous})",
    "rollback.done": "Rolled back from {from_version} to {to}; switching between requests.",
    "notice.loss_curve": "Loss curve",
    # --- chat settings and users ----------------------------------------------------
    "answerall.group_only": ("Use /answerall in the group or channel it should apply to; in "
                             "private chats I answer every voice note anyway."),
    "answerall.on": "I'll answer every voice note here now.",
    "answerall.off": "I'll answer voice notes here only when mentioned or replied to.",
    "forget.done": ("Done: I deleted {exchanges} of your messages and {pairs} unreviewed pairs. "
                    "Answers already approved for training stay, with your name removed."),
    "help.intro": ("Hi, I'm {name}. Send me a voice note and I answer with one; text gets a "
                   "text answer. In groups, mention me or reply to me."),
    "help.forget": "/forget deletes what you said to me.",
    "help.admin": ("Admin: {commands}. Reply to one of my answers with /approve or /correct "
                   "<better answer> to curate it."),
    # --- the Telegram command menu (at most 256 characters each) -----------------------
    "menu.start": "What this bot does",
    "menu.help": "How to talk to me",
    "menu.forget": "Delete what you said to me",
    "menu.approve": "Approve a pair (reply to my answer, or ID)",
    "menu.correct": "Approve with a better answer",
    "menu.reject": "Keep a pair out of training",
    "menu.pending": "Pairs waiting for review",
    "menu.add": "Add a pair: question | answer",
    "menu.dataset": "Dataset statistics",
    "menu.persona": "Persona and answering model",
    "menu.retrain": "Train a new version [max steps]",
    "menu.trainstatus": "Training progress and queue",
    "menu.canceltrain": "Cancel or stop a training job [job id]",
    "menu.models": "Model versions",
    "menu.activate": "Switch to a version",
    "menu.rollback": "Back to the previous version",
    "menu.answerall": "on/off: answer every voice note here",
    # --- training jobs and model versions refused (registry and job queue) -------------
    "job.already_queued": ("Training job #{id} is already waiting to run; it will train on the "
                           "dataset as it is when it starts. /trainstatus shows the queue."),
    "job.already_training": ("Training job #{id} is already training on exactly this dataset "
                             "and these settings; /trainstatus follows it."),
    "job.nothing_to_cancel": "No training job is queued or running; nothing to cancel.",
    "job.which": "Jobs {first} and {second} are open; say which, e.g. /canceltrain {id}.",
    "job.ref": "#{id} ({status})",
    "job.missing": "There is no training job #{id}.",
    "job.finished": "Training job #{id} has already finished ({status}); nothing to cancel.",
    "version.missing": "There is no model version '{version}' for {persona} (see /models).",
    "version.already_active": "{version} is already the active model.",
    "version.no_model": (
        "{version} has no merged model to load (status {status}); only versions that passed "
        "the evaluation gate are exported. From a shell, `chatman models activate {version} "
        "--force` merges its adapter and activates it."),
    "version.not_usable": "{version} is {status} ({reasons}); activate it anyway with --force.",
    "version.no_reason": "no reason recorded",
    "rollback.nothing": ("Nothing to roll back: no trained version is active, the base model "
                         "answers."),
    # --- training notices (the admin who asked is told as the job goes) ----------------
    "progress.line": "step {step}/{total} ({percent}%){loss}{eta}",
    "progress.loss": ", loss {loss:.3f}",
    "progress.eta": ", at most {duration} left",
    "duration.min_s": "{min} min {s:02d} s",
    "duration.s": "{s} s",
    "notice.started": "Training job #{id} started for {persona}.",
    "notice.plan": ("Training {version}: up to {steps} steps; it stops as soon as the evaluation "
                    "gate passes."),
    "notice.progress": "Training {version}: {progress}",
    "notice.eval": ("Evaluation at step {step}: persona {persona:.2f}, retention "
                    "{retention:.2f}, leakage {leakage:.2f} — {verdict}."),
    "notice.gate_passed": "gate passed",
    "notice.continuing": "continuing",
    "notice.keeps_answering": "The current model keeps answering.",
    "notice.now_answering": "Now answering with {version}.",
    "notice.not_loaded": ("{version} could not be loaded ({problem}); the previous model keeps "
                          "answering."),
    "notice.failed": ("Training job #{id} failed: {reason}. The current model keeps "
                      "answering."),
    "notice.cancelled": ("Training job #{id} was cancelled by {by}. The current model keeps "
                         "answering."),
    # --- one line about a training job (/trainstatus, /retrain, /canceltrain) ----------
    "job.line": "#{id} {status}{version}{detail}",
    "job.version": " ({version})",
    "job.detail": ": {text}",
    "job.stopping": ": stopping, cancelled by {by}",
    "job.requested_by": ", requested by {by}",
    "job_status.queued": "queued",
    "job_status.running": "running",
    "job_status.succeeded": "succeeded",
    "job_status.rejected": "rejected",
    "job_status.failed": "failed",
    "job_status.cancelled": "cancelled",
}

ZH: dict[str, str] = {
    TEXT: "{text}",
    "lines": "{lines}",
    "suffix.dash": " — {text}",
    # --- errors ---------------------------------------------------------------------
    "error.generic": "抱歉，这条消息处理出了点问题。",
    "error.internal": "抱歉，我这边出了点问题，请再试一次。",
    "input.empty": "这条消息是空的——发条语音或文字给我吧。",
    "audio.empty": "这个音频文件是空的。",
    "audio.unsupported": ("这个文件我读不出声音。请发语音消息，或 OGG/Opus、MP3、M4A、WAV、"
                          "WebM、FLAC 格式的音频文件。"),
    "audio.too_slow": ("这个文件解码太久了。请发语音消息，或普通的音频文件（OGG/Opus、MP3、"
                       "M4A/AAC、WAV、WebM 或 FLAC）。"),
    "audio.too_large": "文件太大了（{size_mb:.1f} MB），最大只能收 {limit_mb:.0f} MB。",
    "audio.too_long": "录音太长了（{seconds:.0f} 秒），请控制在 {max_seconds:.0f} 秒以内。",
    "audio.too_long_at_least": ("录音太长了（超过 {seconds:.0f} 秒），请控制在 "
                                "{max_seconds:.0f} 秒以内。"),
    "text.too_long": "消息太长了（{length} 个字），请控制在 {limit} 个字以内。",
    "busy.chat": "我还在处理你之前发的消息，请过一分钟再试。",
    "busy.server": "现在找我聊天的人太多了，请过一分钟再试。",
    "llm.unavailable": "我现在没法回答：语言引擎没有响应。请过一分钟再试。",
    "speech.none": "我什么都没听到，能再说一遍吗？",
    "reply.fallback": "抱歉，这个问题我现在答不上来。",
    "admin.only": "只有管理员才能这么做。",
    # --- commands as text -----------------------------------------------------------
    "command.unknown": "没有 /{name} 这个命令。可用的命令：{known}。",
    "usage.bare": "用法：/{name}",
    "usage.id": "用法：/{name} [编号]",
    "usage.answerall": "用法：/answerall on|off",
    "usage.activate": "用法：/activate 版本名（见 /models）",
    "usage.add": f"用法：/add <问题> | <回答>——{_PAIR_RULE_ZH}，回答里还可以有竖线。",
    "usage.correct": (
        "用法：/correct 编号 <更好的回答>，或者回复我的某条回答发 /correct <更好的回答>"
        "（这时整段文字都是回答）。要连问题一起改，就写 <问题> | <回答>："
        f"{_PAIR_RULE_ZH}。想保留问题、回答里又要有 \" | \"，就以 \"| \" 开头，"
        "例如 /correct 12 | Run ls | grep foo。"),
    "usage.pending": "用法：/pending [页码]",
    "usage.retrain": ("用法：/retrain [最多步数]。不写数字就用默认设置：在入门模型上大约 30 步"
                      "就能通过评估关卡，一通过就停止训练。"),
    "usage.canceltrain": "用法：/canceltrain [任务编号]（见 /trainstatus）",
    # --- curation -------------------------------------------------------------------
    "pair.missing": "没有编号为 #{id} 的问答对。",
    "pair.not_an_answer": "那条消息不是我的回答，没有可以审核的内容。",
    "pair.which": "要处理哪一条？请回复我的某条回答发 /{name}，或者写上编号（见 /pending）。",
    "pair.unchanged": "问答对 #{id} 本来就是「{status}」，没有改动。",
    "pair.approved": "已通过 #{id}：{question} → {answer}{replaces}",
    "pair.corrected": "已修改并通过 #{id}：{question} → {answer}{replaces}",
    "pair.rejected": "已拒绝 #{id}：{question} → {answer}{replaces}",
    "pair.added": "已添加 #{id}：{question} → {answer}{replaces}",
    "pair.replaces": "（替换了之前的 {ids}）",
    "correct.empty": "修改后的回答不能为空。",
    "add.empty": "问题和回答都不能为空。",
    "status.pending": "待审核",
    "status.approved": "已通过",
    "status.rejected": "已拒绝",
    "status.superseded": "已被替换",
    "pending.none": "没有等待审核的内容。",
    "pending.empty_page": "第 {page} 页是空的，一共只有 {pages} 页。",
    "pending.title": "待审核的问答对：{total} 条（第 {page}/{pages} 页，最早的在前）",
    "pending.pair": "#{id}\n  问：{question}\n  答：{answer}",
    "pending.pair_by": "#{id} — {asked_by}\n  问：{question}\n  答：{answer}",
    "pending.question": "问：{question}",
    "pending.answer": "答：{answer}",
    "pending.hint": "回复 /approve 编号、/correct 编号 <回答> 或 /reject 编号。",
    "dataset.summary": ("{persona}（{language}）的数据集：{rows} 条（种子 {seed} 条，已通过 "
                        "{approved} 条），共 {tokens} 个 token。"),
    "dataset.by_status": ("按状态：待审核 {pending}，已通过 {approved}，已拒绝 {rejected}，"
                          "已被替换 {superseded}"),
    "dataset.per_persona": "各人设已通过：{counts}",
    "dataset.none": "无",
    "dataset.last_export": "最近一次导出：{rows} 条，sha256 {sha256}，{at} → {path}",
    "dataset.last_snapshot": "最近一次快照：{rows} 条，sha256 {sha256}，{at} → {path}",
    "persona.info": ("人设：{display_name}（{name}，{language}）。回答模型：{model}。"
                     "训练基座：{base_model}。"),
    # --- training and model versions -------------------------------------------------
    "retrain.queued": (
        "已为 {persona} 排上训练任务 #{id}{steps}。一通过评估关卡就会停止；这期间当前模型照常"
        "回答，新模型通过关卡才会替换它。{few}{behind}{where}"),
    "retrain.steps": "（最多 {steps} 步）",
    "retrain.few_steps": "注意：{steps} 步很少能通过关卡，默认设置大约要 30 步（/retrain 不带数字）。",
    "retrain.behind": "它会等任务 #{id}（{describe}）结束后再开始。",
    "retrain.progress_here": "训练进度和损失曲线会发到这里。",
    "retrain.runner_elsewhere": "运行中的机器人会接手；也可以用 `chatman train` 在这个终端里训练。",
    "retrain.trained.active": f"{{version}} {_SAME_ZH}，现在正在回答。",
    "retrain.trained.retired": f"{{version}} {_SAME_ZH}（已退役）；发 /activate {{version}} 可重新启用。",
    "retrain.trained.rejected": (f"{{version}} {_SAME_ZH}（未通过：{{why}}）。请先添加或修改问答对，"
                                 "或者换个步数（/retrain 步数）。"),
    "retrain.trained.ready": f"{{version}} {_SAME_ZH}，已经可以用了；发 /activate {{version}} 启用。",
    "retrain.trained.evaluating": (f"{{version}} {_SAME_ZH}，正在评估（{{status}}）；"
                                   "/trainstatus 可以看进展。"),
    "retrain.gate_not_passed": "没有通过评估关卡",
    "canceltrain.cancelled": "训练任务 #{id} 已取消，继续由 {answering} 回答。",
    "canceltrain.unconfirmed": (
        "已请求停止训练任务 #{id}，但还没有任务执行器确认（机器人在运行吗？）；停下后 "
        "/trainstatus 会显示，这期间仍由 {answering} 回答。"),
    "canceltrain.finished": "训练任务 #{id} 在停下之前就结束了（{describe}）；现在由 {answering} 回答。",
    "model.base": "基础模型（{model}）",
    "model.base_short": "基础模型",
    "trainstatus.answering": "正在回答：{model} — {metrics}",
    "trainstatus.answering_base": "正在回答：{model}（基础模型，还没有训练过的版本）",
    "trainstatus.job": "任务 {describe}",
    "trainstatus.no_job": "没有排队中或进行中的训练任务。",
    "trainstatus.last": "最近完成：任务 {describe}",
    "metrics": "人设 {persona_score:.2f}，保留 {retention:.2f}，泄露 {leakage:.2f}",
    "metrics.none": "未评估",
    "models.none": "还没有训练好的版本，现在由 {model} 回答。发 /retrain 开始训练。",
    "models.title": "模型版本",
    "models.version": "{version} {status}{metrics}{reasons}",
    "model_status.candidate": "候选",
    "model_status.active": "使用中",
    "model_status.rejected": "未通过",
    "model_status.retired": "已退役",
    "model_status.failed": "失败",
    "activate.done": "{version} 已启用{was}，会在两次请求之间切换。",
    "activate.was": "（之前是 {previous}）",
    "rollback.done": "已从 {from_version} 回退到 {to}，会在两次请求之间切换。",
    "notice.loss_curve": "损失曲线",
    # --- chat settings and users ----------------------------------------------------
    "answerall.group_only": "请在要生效的群组或频道里发 /answerall；私聊里我本来就会回复每条语音。",
    "answerall.on": "好的，这里的每条语音我都会回复。",
    "answerall.off": "好的，这里只有 @我 或回复我的语音，我才会回复。",
    "forget.done": ("好了：我删除了你的 {exchanges} 条消息和 {pairs} 条未审核的问答对。已通过、"
                    "用于训练的回答会保留，但去掉了你的名字。"),
    "help.intro": ("你好，我是{name}。发语音给我，我就用语音回你；发文字，我就用文字回你。"
                   "在群里请 @我 或回复我。"),
    "help.forget": "/forget 会删除你对我说过的话。",
    "help.admin": "管理员命令：{commands}。回复我的某条回答发 /approve 或 /correct <更好的回答> 来审核它。",
    # --- the Telegram command menu (at most 256 characters each) -----------------------
    "menu.start": "这个机器人能做什么",
    "menu.help": "怎么和我聊天",
    "menu.forget": "删除你对我说过的话",
    "menu.approve": "通过一条问答（回复我的回答，或写编号）",
    "menu.correct": "用更好的回答通过",
    "menu.reject": "不让这条问答进入训练",
    "menu.pending": "等待审核的问答",
    "menu.add": "添加问答：问题 | 回答",
    "menu.dataset": "数据集统计",
    "menu.persona": "人设和回答模型",
    "menu.retrain": "训练新版本 [最多步数]",
    "menu.trainstatus": "训练进度和队列",
    "menu.canceltrain": "取消或停止训练任务 [任务编号]",
    "menu.models": "模型版本",
    "menu.activate": "切换到某个版本",
    "menu.rollback": "回到上一个版本",
    "menu.answerall": "on/off：回复这里的每条语音",
    # --- training jobs and model versions refused (registry and job queue) -------------
    "job.already_queued": ("训练任务 #{id} 已经在排队；开始时会用那时的数据集训练。"
                           "/trainstatus 可以查看队列。"),
    "job.already_training": "训练任务 #{id} 正在用完全相同的数据集和设置训练；/trainstatus 可以查看进度。",
    "job.nothing_to_cancel": "现在没有排队或正在进行的训练任务，不需要取消。",
    "job.which": "有两个未结束的任务：{first}和 {second}；请说明取消哪一个，例如 /canceltrain {id}。",
    "job.ref": "#{id}（{status}）",
    "job.missing": "没有训练任务 #{id}。",
    "job.finished": "训练任务 #{id} 已经结束（{status}），不需要取消。",
    "version.missing": "{persona} 没有模型版本“{version}”（见 /models）。",
    "version.already_active": "{version} 已经是当前使用的模型。",
    "version.no_model": (
        "{version} 没有可加载的合并模型（状态：{status}）；只有通过评估门槛的版本才会导出。"
        "可以在命令行运行 `chatman models activate {version} --force`，合并它的适配器并启用。"),
    "version.not_usable": "{version} 的状态是 {status}（{reasons}）；如果仍要启用，请加 --force。",
    "version.no_reason": "没有记录原因",
    "rollback.nothing": "没有可以回滚的：当前没有启用训练版本，由基础模型回答。",
    # --- training notices (the admin who asked is told as the job goes) ----------------
    "progress.line": "第 {step}/{total} 步（{percent}%）{loss}{eta}",
    "progress.loss": "，loss {loss:.3f}",
    "progress.eta": "，最多还需 {duration}",
    "duration.min_s": "{min} 分 {s:02d} 秒",
    "duration.s": "{s} 秒",
    "notice.started": "训练任务 #{id} 开始了，训练的是 {persona}。",
    "notice.plan": "正在训练 {version}：最多 {steps} 步，一通过评估门槛就停。",
    "notice.progress": "正在训练 {version}：{progress}",
    "notice.eval": ("第 {step} 步评估：人设 {persona:.2f}，常识保持 {retention:.2f}，"
                    "提示词泄漏 {leakage:.2f}——{verdict}。"),
    "notice.gate_passed": "通过门槛",
    "notice.continuing": "继续训练",
    "notice.keeps_answering": "当前模型继续回答。",
    "notice.now_answering": "现在由 {version} 回答。",
    "notice.not_loaded": "{version} 加载失败（{problem}）；之前的模型继续回答。",
    "notice.failed": "训练任务 #{id} 失败：{reason}。当前模型继续回答。",
    "notice.cancelled": "训练任务 #{id} 已被 {by} 取消。当前模型继续回答。",
    # --- one line about a training job (/trainstatus, /retrain, /canceltrain) ----------
    "job.line": "#{id} {status}{version}{detail}",
    "job.version": "（{version}）",
    "job.detail": "：{text}",
    "job.stopping": "：正在停止，{by} 取消了它",
    "job.requested_by": "，由 {by} 发起",
    "job_status.queued": "排队中",
    "job_status.running": "进行中",
    "job_status.succeeded": "已完成",
    "job_status.rejected": "未通过",
    "job_status.failed": "失败",
    "job_status.cancelled": "已取消",
}

CATALOG: dict[str, dict[str, str]] = {"en": EN, "zh": ZH}


def language_of(language: str | None) -> str:
    """The catalog for ``language``: ``zh-CN``, ``zh_TW`` and ``ZH`` are ``zh``; unknown
    languages get English."""
    base = (language or DEFAULT_LANGUAGE).replace("_", "-").split("-", 1)[0].lower()
    return base if base in CATALOG else DEFAULT_LANGUAGE


def word(message: Message, language: str | None = DEFAULT_LANGUAGE) -> str:
    """``message`` in words, in ``language`` (English where that has none)."""
    lang = language_of(language)
    params = {k: _value(v, lang) for k, v in message.params.items()}
    for name in dict.fromkeys((lang, DEFAULT_LANGUAGE)):
        template = CATALOG[name].get(message.code)
        if template is None:
            continue
        try:
            return template.format_map(params)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            log.error("wording: %s (%s) does not fit %s: %r", message.code, lang, sorted(params),
                      exc)
    log.error("wording: no words for %s", message.code)
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{message.code} ({shown})" if shown else message.code


def _value(value: Param, lang: str) -> object:
    if isinstance(value, Message):
        return word(value, lang)
    if isinstance(value, list):
        return "\n".join(word(v, lang) if isinstance(v, Message) else str(v) for v in value)
    return value


def fields(template: str) -> set[str]:
    """The parameter names a template uses (tests check every language uses the same)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def codes() -> Mapping[str, str]:
    """Every code with its English words."""
    return EN
