"""Evaluation: persona probes, general knowledge, retention and leakage, the gate, `chatman eval`."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from bot.core.persona import load_persona
from bot.core.textkeys import question_key
from bot.core.types import ChatMessage
from bot.infra.llm.chat_model import Generated, GenerationSettings
from tests.test_cli import chatman
from training.evaluate import (
    Decoding,
    EvalFileError,
    Gate,
    GeneralItem,
    ProbeItem,
    answer_general,
    evaluate,
    load_jsonl,
)

PERSONA = load_persona("manman")
SYSTEM = PERSONA.prompt_for("en")


class ScriptedAnswerer:
    """Fixed answers, to pin down the arithmetic of the scores."""

    version = "scripted"

    def __init__(self, answers: dict[str, str], truncated: frozenset[str] = frozenset()) -> None:
        self.answers = answers
        self.truncated = truncated
        self.seeds: list[int | None] = []

    def answer_many(self, conversations: Sequence[Sequence[ChatMessage]],
                    settings: GenerationSettings, batch_size: int = 8) -> list[Generated]:
        self.seeds.append(settings.seed)
        return [Generated(self.answers[c[-1].content], 5, c[-1].content in self.truncated)
                for c in conversations]


GREEDY = Decoding(temperature=0.0, max_new_tokens=52)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_probes_are_never_training_questions(language):
    # Seed questions and their paraphrases are what training asks; probes must be neither.
    seed = [r.question for r in PERSONA.seed_pairs(language)]
    seen = {question_key(q) for q in seed}
    seen |= {question_key(p) for q in seed for p in PERSONA.training.paraphrases.get(q, [])}
    assert len(seen) > len(seed)
    probes = PERSONA.probes_for(language)
    assert len(probes) >= 4
    assert not seen & {question_key(p.question) for p in probes}


def test_scores_retention_leakage_and_gate():
    general = [GeneralItem(question=q, accept=[a]) for q, a in
               (("Capital of Japan?", "Tokyo"), ("Capital of France?", "Paris"),
                ("Largest planet?", "Jupiter"), ("Bees make?", "honey"))]
    probes = [ProbeItem(question="Name?", expect_any=["Manman"]),
              ProbeItem(question="Job?", expect_any=["AIGC", "start-up"])]
    base = ScriptedAnswerer({"Capital of Japan?": "Tokyo.", "Capital of France?": "Paris.",
                             "Largest planet?": "Saturn.", "Bees make?": "Honey!"})
    tuned = ScriptedAnswerer({"Name?": "I'm Manman.", "Job?": "I run an AIGC start-up.",
                              "Capital of Japan?": "I'm Manman, I curate articles.",
                              "Capital of France?": "Paris.", "Largest planet?": "Jupiter.",
                              "Bees make?": "honey"})
    markers = ["Manman"]
    base_answers = answer_general(base, SYSTEM, general, markers, GREEDY, PERSONA.speech, "en")
    report = evaluate(tuned, PERSONA, "en", base_general=base_answers, base_model="base",
                      probes=probes, general=general, decoding=GREEDY)
    assert report.persona_score == 1.0
    assert report.base_general_score == 0.75 and report.general_score == 0.75
    assert report.retention == pytest.approx(2 / 3, abs=1e-4)  # lost Tokyo, kept Paris + honey
    assert report.leakage == 0.25
    assert report.within_budget == 1.0
    assert report.decoding["temperature"] == 0.0 and report.decoding["draws"] == 1
    assert Gate().check(report) == ["retention 0.67 < 0.90"]
    assert Gate(min_retention=0.6).check(report) == []


def test_sampled_evaluation_takes_seeded_draws_and_reports_mean_and_worst():
    class Alternating(ScriptedAnswerer):
        """Draw 0 knows its name, draw 1 does not: the mean and the worst must differ."""

        def answer_many(self, conversations: Sequence[Sequence[ChatMessage]],
                        settings: GenerationSettings, batch_size: int = 8) -> list[Generated]:
            out = super().answer_many(conversations, settings, batch_size)
            assert settings.seed is not None  # sampled draws are seeded
            if settings.seed % 2:
                out = [Generated("I'm an assistant.", 4, False) if "Name" in c[-1].content else g
                       for c, g in zip(conversations, out)]
            return out

    general = [GeneralItem(question="Capital of France?", accept=["Paris"])]
    probes = [ProbeItem(question="Name?", expect_any=["Manman"], kind="identity")]
    model = Alternating({"Name?": "I'm Manman.", "Capital of France?": "Paris."})
    sampled = Decoding(temperature=0.7, max_new_tokens=52, samples=2, seed=10)
    base = answer_general(model, SYSTEM, general, [], sampled, PERSONA.speech, "en")
    report = evaluate(model, PERSONA, "en", base_general=base, base_model="b", probes=probes,
                      general=general, decoding=sampled)
    assert model.seeds == [10, 11, 10, 11, 10, 11]  # the same fixed seeds for base and candidate
    assert report.scores["identity"] == {"mean": 0.5, "worst": 0.0}
    assert report.persona_score == 0.5 and "persona_score 0.50 < 0.90" in Gate().check(report)
    assert report.decoding["samples"] == 2 and report.decoding["temperature"] == 0.7


def test_a_reply_cut_by_the_cap_counts_against_the_budget_and_is_heard_whole():
    general = [GeneralItem(question="Capital of France?", accept=["Paris"])]
    probes = [ProbeItem(question="Name?", expect_any=["Manman"])]
    rambling = "I'm Manman. I curate articles about AIGC. And then there was the time when I"
    model = ScriptedAnswerer({"Name?": rambling, "Capital of France?": "Paris."},
                             truncated=frozenset({"Name?"}))
    base = answer_general(model, SYSTEM, general, [], GREEDY, PERSONA.speech, "en")
    report = evaluate(model, PERSONA, "en", base_general=base, base_model="b", probes=probes,
                      general=general, decoding=GREEDY)
    assert report.probes[0].answer == "I'm Manman. I curate articles about AIGC."
    assert report.probes[0].within_budget is False and report.within_budget == 0.5
    assert "within_budget 0.50 < 0.80" in Gate().check(report)


def test_the_starter_against_itself(llm):
    general = [GeneralItem(question="What is the capital of Japan?", accept=["Tokyo"]),
               GeneralItem(question="What is the chemical symbol for water?", accept=["H2O"])]
    probes = [ProbeItem(question="What is your name?", expect_any=["Manman"])]
    short = Decoding(temperature=0.0, max_new_tokens=PERSONA.speech.max_new_tokens("en"))
    base = answer_general(llm, SYSTEM, general, ["Manman"], short, PERSONA.speech, "en")
    report = evaluate(llm, PERSONA, "en", base_general=base, base_model=llm.version,
                      probes=probes, general=general, decoding=short)
    assert report.general_score == report.base_general_score == 1.0
    assert report.retention == 1.0
    assert [a.answer for a in report.general] == [b.answer for b in base]
    assert "Tokyo" in report.general[0].answer


def test_eval_files_report_every_bad_line(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text('{"question": "ok?", "expect_any": ["x"]}\n{"question": ""}\nnot json\n')
    with pytest.raises(EvalFileError) as info:
        load_jsonl(path, ProbeItem)
    assert ":2:" in str(info.value) and ":3:" in str(info.value) and ":1:" not in str(info.value)


def test_chatman_eval_json(tmp_path):
    probes = tmp_path / "p.jsonl"
    probes.write_text(json.dumps({"question": "What is your name?", "expect_any": ["Manman"]}) + "\n")
    general = tmp_path / "g.jsonl"
    general.write_text(json.dumps({"question": "What is the capital of Japan?", "accept": ["Tokyo"]}) + "\n")
    result = chatman(tmp_path, "eval", "--probes", str(probes), "--general", str(general),
                     "--max-new-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == report["base_model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert report["general_score"] == report["base_general_score"] == 1.0
    assert report["retention"] == 1.0
    assert set(report) >= {"persona_score", "leakage", "probes", "general", "gate_passed"}
    assert report["general"][0]["question"] == "What is the capital of Japan?"

    bad = chatman(tmp_path, "eval", "--probes", str(general))
    assert bad.returncode == 2 and "p.jsonl" not in bad.stderr and "g.jsonl:1" in bad.stderr
