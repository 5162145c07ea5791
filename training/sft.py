"""LoRA SFT that teaches the persona without forgetting.

The known-bad recipe (all-linear LoRA, lr 1e-3, hundreds of epochs on a handful of pairs)
learns an identity in ~30 steps and then answers general questions with it. The default here:

* the persona rows, plus paraphrases of their questions;
* replay of the *base model's own* answers to general prompts, mixed into every batch;
* a KL penalty keeping the replay answers' token distributions close to the base model's
  (the base is the same network with the adapter switched off, so no second copy in memory);
* loss on assistant tokens only, with the system prompt the version will be served with;
  the vocabulary projection runs on those tokens alone (the rest of the sequence needs no
  logits), which is most of the memory a step takes;
* rows that ask the identity again after two unrelated turns, so it holds in a conversation;
* evaluation every ``eval_every`` steps with the serving decoding, stopping as soon as the
  gate passes, because forgetting resumes if training goes on.
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
from types import ModuleType
from typing import TYPE_CHECKING, Literal, cast

from pydantic import BaseModel, Field

from bot.core.dataset import training_messages
from bot.core.formats import AlpacaRow
from bot.core.persona import PersonaProfile
from bot.core.speech_budget import shape_reply
from bot.core.textkeys import question_key
from bot.core.types import ChatMessage, Role
from bot.infra.llm.chat_model import GenerationSettings, generate_batch, pad_token_id
from training.evaluate import Answered, Decoding, EvalReport, Gate, ModelAnswerer, evaluate
from training.general_qa import replay_prompts
from training.tokenize import IGNORE, Example, encode_conversation

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from bot.infra.llm.chat_model import CausalLM

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
    # Rows per forward pass within a batch: the gradient is the same, the memory a quarter.
    micro_batch: int = Field(default=1, ge=1)
    cutoff_len: int = Field(default=512, ge=32)
    seed: int = 42
    replay_ratio: float = Field(default=1.0, ge=0)  # replay rows per persona row
    kl_weight: float = Field(default=1.0, ge=0)
    paraphrase: bool = True
    # Copies of the identity rows asked after two unrelated turns (replay pairs as history).
    context_rows: bool = True
    # The system prompt in every example, and the one the version is served with: "full" is
    # the persona's system_prompt, "short" its training.short_prompt. Short is the default:
    # the full prompt was ~110 of ~150 tokens per example, and on the starter the short one
    # reached the gate at step 20 instead of 30, 4.2 instead of 5.0 s/step, with the same
    # identity and retention (bench/train.py; README, "Training without forgetting").
    system_prompt: Literal["full", "short"] = "short"
    eval_every: int = Field(default=10, ge=1)
    eval_samples: int = Field(default=3, ge=1, description="Seeded draws per question")
    min_persona: float = Field(default=0.9, ge=0, le=1)
    min_retention: float = Field(default=0.9, ge=0, le=1)
    min_within_budget: float = Field(default=0.8, ge=0, le=1)

    @property
    def gate(self) -> Gate:
        return Gate(self.min_persona, self.min_retention, self.min_within_budget)


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


def augmented(rows: list[AlpacaRow], persona: PersonaProfile,
              context: list[tuple[str, str]] | None = None,
              rng: random.Random | None = None) -> list[AlpacaRow]:
    """Rows plus one copy per paraphrase of their question; with ``context`` (replay pairs),
    each paraphrased row once more after two unrelated turns, as a conversation asks it."""
    by_key = {question_key(q): vs for q, vs in persona.training.paraphrases.items()}
    rng = rng or random.Random(0)
    out = list(rows)
    for row in rows:
        variants = by_key.get(question_key(row.question), [])
        for variant in variants:
            out.append(row.model_copy(update={"instruction": variant, "input": ""}))
        if context and len(context) >= 2 and variants:
            for question in [row.question, *variants]:
                turns = [tuple(x) for x in rng.sample(context, 2)]
                out.append(row.model_copy(update={"instruction": question, "input": "",
                                                  "history": turns}))
    return out


def replay_pairs(model: CausalLM, tokenizer: PreTrainedTokenizerBase, version: str, system: str,
                 cache_dir: Path, persona: PersonaProfile, language: str,
                 progress: Callable[[int, int], None] | None = None,
                 shipped: Path | None = None) -> list[tuple[str, str]]:
    """The base model's own greedy answers to the replay bank, as the bot would say them (cut
    to the speech budget), computed once per base and prompt and cached.

    ``shipped``: a folder holding caches made elsewhere (the starter persona ships its own).
    """
    cap = persona.speech.max_new_tokens(language)
    prompts = replay_prompts(language)
    key = hashlib.sha256(json.dumps([version, system, prompts, cap,
                                     persona.speech.model_dump()]).encode()).hexdigest()[:16]
    name = Path("replay") / f"{key}.json"
    for folder in (cache_dir, shipped):
        if folder is not None and (folder / name).is_file():
            return [tuple(x) for x in json.loads((folder / name).read_text(encoding="utf-8"))]
    conversations = [[ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, q)]
                     for q in prompts]
    answers = generate_batch(model, tokenizer, conversations,
                             GenerationSettings(max_new_tokens=cap, temperature=0.0,
                                                repetition_penalty=1.0), progress=progress)
    pairs = [(q, shape_reply(a.text, persona.speech, language, truncated=a.truncated))
             for q, a in zip(prompts, answers)]
    pairs = [(q, a) for q, a in pairs if a]
    path = cache_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pairs, ensure_ascii=False, indent=1), encoding="utf-8")
    return pairs


def _collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def lora_model(model: torch.nn.Module, config: TrainConfig) -> PeftModel:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    ))


def _lm_parts(peft_model: PeftModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the vocabulary projection of a (peft-wrapped) causal LM."""
    # peft declares the wrapped model a plain Module; it is the PreTrainedModel it was given.
    lm = cast("PreTrainedModel", peft_model.get_base_model())
    head = lm.get_output_embeddings()  # type: ignore[no-untyped-call]  # unannotated upstream
    return getattr(lm, lm.base_model_prefix), head


def _trained_logits(body: torch.nn.Module, head: torch.nn.Module, ids: torch.Tensor,
                    mask: torch.Tensor, labels: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only where a label is trained (a tenth of the positions, and of the memory: the
    vocabulary is 49k wide); returned with their targets and the row each comes from."""
    hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = labels[:, 1:] != IGNORE  # position t predicts token t+1
    rows = keep.nonzero()[:, 0]
    return head(hidden[:, :-1][keep]).float(), labels[:, 1:][keep], rows


def _accumulate(peft_model: PeftModel, body: torch.nn.Module, head: torch.nn.Module,
                persona_batch: list[Example], replay_batch: list[Example], pad_id: int,
                device: torch.device, config: TrainConfig, F: ModuleType,
                torch: ModuleType) -> tuple[float, float]:
    """Gradients of one batch, ``micro_batch`` examples at a time.

    The loss is the mean over every trained token of the batch and the KL the mean over every
    replay position, exactly as one big forward would give; only the activations held at once
    shrink (they are most of a step's memory: ~75 MB per layer for 4 rows of 250 tokens).
    """
    examples = [(e, False) for e in persona_batch] + [(e, True) for e in replay_batch]
    n_tokens = sum(e.trained_tokens for e, _ in examples) or 1
    n_replay = sum(e.trained_tokens for e in replay_batch) or 1
    loss_sum = kl_sum = 0.0
    for i in range(0, len(examples), config.micro_batch):
        chunk = examples[i : i + config.micro_batch]
        ids, labels, mask = (t.to(device) for t in _collate([e for e, _ in chunk], pad_id))
        logits, targets, from_row = _trained_logits(body, head, ids, mask, labels)
        loss = F.cross_entropy(logits, targets, reduction="sum") / config.grad_accum
        total = loss / n_tokens
        replay_rows = [j for j, (_, is_replay) in enumerate(chunk) if is_replay]
        kl = torch.zeros((), device=loss.device)
        if replay_rows and config.kl_weight > 0:
            r = torch.tensor(replay_rows, device=ids.device)
            with torch.no_grad(), peft_model.disable_adapter():
                base_logits, _, _ = _trained_logits(body, head, ids[r], mask[r], labels[r])
            replay_rows_of = from_row[torch.isin(from_row, r)]
            # Keep the base's words but not its length: the end-of-turn position (where the
            # base, trained on longer answers, would go on) is left to the loss, which teaches
            # stopping where the speech budget cut the replay answer.
            words = torch.ones_like(replay_rows_of, dtype=torch.bool)
            words[:-1] = replay_rows_of[1:] == replay_rows_of[:-1]
            words[-1] = False
            tuned = F.log_softmax(logits[torch.isin(from_row, r)][words], dim=-1)
            kl = F.kl_div(tuned, F.log_softmax(base_logits[words], dim=-1), log_target=True,
                          reduction="sum") / config.grad_accum
            total = total + config.kl_weight * kl / n_replay
        total.backward()
        loss_sum += loss.item() / n_tokens
        kl_sum += kl.item() / n_replay
        del logits, loss, kl, total
    return loss_sum * config.grad_accum, kl_sum * config.grad_accum


def train_persona(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    persona: PersonaProfile,
    language: str,
    rows: list[AlpacaRow],
    replay: list[tuple[str, str]],
    base_general: list[Answered],
    base_version: str,
    config: TrainConfig,
    decoding: Decoding | None = None,
    progress: Callable[[StepLog], None] | None = None,
    on_eval: Callable[[int, EvalReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[PeftModel, TrainResult]:
    """Train a LoRA on ``model`` (a loaded base); returns the peft model and what happened."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    system = persona.prompt_for(language, config.system_prompt)
    decoding = decoding or Decoding(max_new_tokens=persona.speech.max_new_tokens(language),
                                    samples=config.eval_samples)
    if config.paraphrase:
        rows = augmented(rows, persona, replay if config.context_rows else None, rng)
    if not rows:
        raise ValueError("nothing to train on: the dataset is empty")
    persona_examples = [
        encode_conversation(tokenizer, training_messages(r.model_copy(update={
            "system": persona.prompt_for(persona.language_of(r.output, language),
                                         config.system_prompt)})), config.cutoff_len)
        for r in rows
    ]
    replay_examples = [
        encode_conversation(tokenizer, [ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, q),
                                        ChatMessage(Role.ASSISTANT, a)], config.cutoff_len)
        for q, a in replay
    ]
    pad_id = pad_token_id(tokenizer)
    peft_model = lora_model(model, config)
    body, head = _lm_parts(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    n_replay = round(config.batch_size * config.replay_ratio) if replay_examples else 0
    answerer = ModelAnswerer(peft_model, tokenizer, f"{base_version}+lora")
    result = TrainResult(steps=0, passed=False, reasons=["not evaluated"])
    device = peft_model.device

    def sample(pool: list[Example], k: int) -> list[Example]:
        return [pool[rng.randrange(len(pool))] for _ in range(k)]

    for step in range(1, config.max_steps + 1):
        if should_stop is not None and should_stop():
            result.reasons = ["cancelled"]
            break
        started = time.perf_counter()
        peft_model.train()
        total_loss = total_kl = 0.0
        for _ in range(config.grad_accum):
            persona_batch = sample(persona_examples, config.batch_size)
            replay_batch = sample(replay_examples, n_replay) if n_replay else []
            loss, kl = _accumulate(peft_model, body, head, persona_batch, replay_batch, pad_id,
                                   device, config, F, torch)
            total_loss += loss / config.grad_accum
            total_kl += kl / config.grad_accum
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
                              base_model=base_version, decoding=decoding, system=system)
            result.evals.append((step, report))
            result.reasons = config.gate.check(report)
            if on_eval:
                on_eval(step, report)
            log.info("step %d: persona %.2f retention %.2f leakage %.2f within budget %.2f",
                     step, report.persona_score, report.retention, report.leakage,
                     report.within_budget)
            if not result.reasons:
                result.passed = True
                break
    peft_model.eval()
    return peft_model, result
