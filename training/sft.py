"""LoRA SFT that teaches the persona without forgetting.

The known-bad recipe (all-linear LoRA, lr 1e-3, hundreds of epochs on a handful of pairs)
learns an identity in ~30 steps and then answers general questions with it. The default here:

* the persona rows, plus paraphrases of their questions;
* replay of the *base model's own* answers to general prompts, mixed into every batch;
* a KL penalty keeping the replay answers' token distributions close to the base model's
  (the base is the same network with the adapter switched off, so no second copy in memory);
* loss on assistant tokens only, with the persona's system prompt exactly as at inference;
* evaluation every ``eval_every`` steps, stopping as soon as the gate passes, because
  forgetting resumes if training goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from bot.llm.chat_model import generate_greedy
from bot.persona import PersonaProfile
from bot.textkeys import question_key
from bot.types import ChatMessage, Role
from training.dataset import training_messages
from training.evaluate import Answered, EvalReport, Gate, GreedyAnswerer, evaluate
from training.formats import AlpacaRow
from training.general_qa import REPLAY_PROMPTS
from training.tokenize import IGNORE, Example, encode_conversation

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    # With replay + KL + early stopping, 1e-3 learns the persona in ~20 steps on the starter
    # without the forgetting it causes on its own.
    learning_rate: float = Field(default=1e-3, gt=0)
    max_steps: int = Field(default=60, ge=1)
    batch_size: int = Field(default=2, ge=1)  # persona rows per step
    grad_accum: int = Field(default=1, ge=1)
    cutoff_len: int = Field(default=512, ge=32)
    seed: int = 42
    replay_ratio: float = Field(default=1.0, ge=0)  # replay rows per persona row
    kl_weight: float = Field(default=1.0, ge=0)
    paraphrase: bool = True
    eval_every: int = Field(default=10, ge=1)
    eval_max_new_tokens: int = Field(default=32, ge=4)
    min_persona: float = 0.9
    min_retention: float = 0.95

    @property
    def gate(self) -> Gate:
        return Gate(self.min_persona, self.min_retention)


@dataclass
class StepLog:
    step: int
    loss: float
    kl: float
    seconds: float


@dataclass
class TrainResult:
    steps: int
    passed: bool
    reasons: list[str]
    log: list[StepLog] = field(default_factory=list)
    evals: list[tuple[int, EvalReport]] = field(default_factory=list)

    @property
    def final(self) -> EvalReport | None:
        return self.evals[-1][1] if self.evals else None


def augmented(rows: list[AlpacaRow], persona: PersonaProfile) -> list[AlpacaRow]:
    """Rows plus one copy per paraphrase of their question."""
    by_key = {question_key(q): vs for q, vs in persona.training.paraphrases.items()}
    out = list(rows)
    for row in rows:
        for variant in by_key.get(question_key(row.question), []):
            out.append(row.model_copy(update={"instruction": variant, "input": ""}))
    return out


def replay_pairs(model, tokenizer, version: str, system: str, cache_dir: Path,
                 max_new_tokens: int = 64) -> list[tuple[str, str]]:
    """The base model's own greedy answers to the replay bank, generated once and cached."""
    key = hashlib.sha256(json.dumps([version, system, REPLAY_PROMPTS, max_new_tokens])
                         .encode()).hexdigest()[:16]
    path = cache_dir / "replay" / f"{key}.json"
    if path.is_file():
        return [tuple(x) for x in json.loads(path.read_text(encoding="utf-8"))]
    conversations = [[ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, q)]
                     for q in REPLAY_PROMPTS]
    answers = generate_greedy(model, tokenizer, conversations, max_new_tokens)
    pairs = [(q, a) for q, a in zip(REPLAY_PROMPTS, answers) if a]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pairs, ensure_ascii=False, indent=1), encoding="utf-8")
    return pairs


def _collate(examples: list[Example], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(e.input_ids),
                                                  torch.tensor(e.labels), 1)
    return ids, labels, mask


def lora_model(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    ))


def train_persona(
    model,
    tokenizer,
    *,
    persona: PersonaProfile,
    language: str,
    rows: list[AlpacaRow],
    replay: list[tuple[str, str]],
    base_general: list[Answered],
    base_version: str,
    config: TrainConfig,
    progress: Callable[[StepLog], None] | None = None,
    on_eval: Callable[[int, EvalReport], None] | None = None,
) -> tuple[object, TrainResult]:
    """Train a LoRA on ``model`` (a loaded base); returns the peft model and what happened."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    system = persona.prompt_for(language)
    rows = augmented(rows, persona) if config.paraphrase else list(rows)
    if not rows:
        raise ValueError("nothing to train on: the dataset is empty")
    persona_examples = [
        encode_conversation(tokenizer, training_messages(r.model_copy(update={"system": system})),
                            config.cutoff_len)
        for r in rows
    ]
    replay_examples = [
        encode_conversation(tokenizer, [ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, q),
                                        ChatMessage(Role.ASSISTANT, a)], config.cutoff_len)
        for q, a in replay
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    peft_model = lora_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    n_replay = round(config.batch_size * config.replay_ratio) if replay_examples else 0
    answerer = GreedyAnswerer(peft_model, tokenizer, f"{base_version}+lora")
    result = TrainResult(steps=0, passed=False, reasons=["not evaluated"])

    def sample(pool: list[Example], k: int) -> list[Example]:
        return [pool[rng.randrange(len(pool))] for _ in range(k)]

    for step in range(1, config.max_steps + 1):
        started = time.perf_counter()
        peft_model.train()
        total_loss = total_kl = 0.0
        for _ in range(config.grad_accum):
            persona_batch = sample(persona_examples, config.batch_size)
            replay_batch = sample(replay_examples, n_replay) if n_replay else []
            ids, labels, mask = _collate(persona_batch + replay_batch, pad_id)
            out = peft_model(input_ids=ids.to(peft_model.device),
                             attention_mask=mask.to(peft_model.device),
                             labels=labels.to(peft_model.device))
            loss = out.loss
            kl = torch.zeros((), device=loss.device)
            if replay_batch and config.kl_weight > 0:
                r = slice(len(persona_batch), None)
                with torch.no_grad(), peft_model.disable_adapter():
                    base_logits = peft_model(input_ids=ids[r].to(peft_model.device),
                                             attention_mask=mask[r].to(peft_model.device)).logits
                # Logits at position t predict token t+1: align with the shifted labels.
                positions = (labels[r][:, 1:] != IGNORE).to(loss.device)
                tuned = F.log_softmax(out.logits[r][:, :-1][positions], dim=-1)
                base = F.log_softmax(base_logits[:, :-1][positions], dim=-1)
                kl = F.kl_div(tuned, base, log_target=True, reduction="batchmean")
            ((loss + config.kl_weight * kl) / config.grad_accum).backward()
            total_loss += loss.item() / config.grad_accum
            total_kl += kl.item() / config.grad_accum
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        entry = StepLog(step, round(total_loss, 4), round(total_kl, 5),
                        round(time.perf_counter() - started, 3))
        result.log.append(entry)
        result.steps = step
        if progress:
            progress(entry)
        if step % config.eval_every == 0 or step == config.max_steps:
            peft_model.eval()
            report = evaluate(answerer, persona, language, base_general=base_general,
                              base_model=base_version, max_new_tokens=config.eval_max_new_tokens)
            result.evals.append((step, report))
            result.reasons = config.gate.check(report)
            if on_eval:
                on_eval(step, report)
            log.info("step %d: persona %.2f retention %.2f leakage %.2f", step,
                     report.persona_score, report.retention, report.leakage)
            if not result.reasons:
                result.passed = True
                break
    peft_model.eval()
    return peft_model, result
