"""Replies sized for speech: the persona's budget, the token cap it implies, the cut."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from bot.core.persona import load_persona
from bot.core.ports import ChatModel, SpeechSynthesizer
from bot.core.speech_budget import (
    SentenceStream,
    SpeechBudget,
    ends_sentence,
    shape_reply,
    split_sentences,
)
from bot.core.streaming import ReplyStream
from bot.core.types import ChatMessage, LlmReply, Pcm

BUDGET = SpeechBudget(max_sentences=3, max_seconds=12)


@pytest.mark.parametrize(("text", "cut"), [
    # Ran into the token cap mid-sentence: back to the last complete sentence.
    ("I'm Manman. I curate articles. That's my home base, I traveled all around the",
     "I'm Manman. I curate articles."),
    ("It costs 3.5 dollars. And then I went to the", "It costs 3.5 dollars."),
    ('He said "hi." Then he left the', 'He said "hi."'),
    ("我叫慢慢。我喜欢分享好文章！今天我们来聊", "我叫慢慢。我喜欢分享好文章！"),
    # No complete sentence at all: up to the last clause, closed; never mid-word.
    ("I went to the store, and then I bought a", "I went to the store."),
    ("Onetwothree fourfive sixseven", "Onetwothree fourfive…"),
])
def test_a_reply_cut_at_the_cap_ends_on_a_sentence(text, cut):
    language = "zh" if "慢" in text else "en"
    shaped = shape_reply(text, BUDGET, language, truncated=True)
    assert shaped == cut
    assert text.startswith(shaped.rstrip(".…。")) or shaped.endswith("…")


def test_a_reply_the_model_ended_keeps_its_last_words():
    assert shape_reply("Sure thing, see you", BUDGET, "en", truncated=False) == "Sure thing, see you"


def test_at_most_the_budgets_sentences_and_seconds():
    five = "One. Two. Three. Four. Five."
    assert shape_reply(five, BUDGET, "en", truncated=False) == "One. Two. Three."
    long = " ".join(["This sentence has exactly ten words in it, you see."] * 3)
    # Ten words ≈ 3.8 s at 2.6 words/s: three of them fit 12 s; a 6 s budget keeps one.
    assert shape_reply(long, BUDGET, "en", truncated=False) == long
    short = SpeechBudget(max_sentences=3, max_seconds=6)
    assert shape_reply(long, short, "en", truncated=False) == split_sentences(long)[0]
    # A single over-long sentence is still said: silence is worse.
    assert shape_reply(long.split(".")[0] + ".", SpeechBudget(max_seconds=1), "en",
                       truncated=False).startswith("This sentence")


def test_seconds_and_token_cap_follow_the_persona():
    persona = load_persona("manman")
    assert persona.speech.max_seconds == 12 and persona.speech.max_sentences == 3
    assert BUDGET.seconds("one two three four five six seven eight nine ten eleven twelve "
                          "thirteen") == pytest.approx(5.0, abs=0.01)
    assert BUDGET.seconds("我叫慢慢。") == pytest.approx(4 / 4.5, abs=0.01)
    # 12 s of English at 4 tokens/s, plus the stop.
    assert persona.speech.max_new_tokens("en") == 52
    assert persona.speech.max_new_tokens("zh") > persona.speech.max_new_tokens("en")
    assert ends_sentence("Done.") and not ends_sentence("Not done")


class HeardText:
    """The real Piper voice, remembering what it was asked to say."""

    def __init__(self, tts: SpeechSynthesizer) -> None:
        self.tts = tts
        self.said: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tts, name)

    def synthesize(self, text: str, language: str) -> Pcm:
        self.said.append(text)
        return self.tts.synthesize(text, language)


class RawReplies:
    """The real starter LLM, remembering what it generated before the cut."""

    def __init__(self, llm: ChatModel) -> None:
        self.llm = llm
        self.raw: list[LlmReply] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    def stream(self, prompt: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        inner, raw = self.llm.stream(prompt, max_new_tokens), self.raw

        class Recorded:
            def __iter__(self) -> Iterator[str]:
                yield from inner
                raw.append(inner.reply)

            def stop(self) -> None:
                inner.stop()

            def close(self) -> None:
                inner.close()

            @property
            def reply(self) -> LlmReply:
                return inner.reply

        return Recorded()


async def test_a_reply_cut_by_the_cap_ends_on_a_sentence_and_the_voice_says_the_same(
        tmp_path, asr, llm, tts):
    from adapters.app import ChatmanApp
    from bot.core.types import ChatKind, ChatRef, Incoming, UserRef
    from tests.conftest import make_settings

    # The cap each reply is asked with (CHATMAN_LLM_MAX_NEW_TOKENS, else its language's budget).
    model, voice = RawReplies(llm), HeardText(tts)
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data", llm_max_new_tokens=30),
                                   asr=asr, llm=model, tts=voice)
    app.migrate()
    try:
        turn = await app.pipeline.handle(Incoming(
            ChatRef("test", "c1", ChatKind.PRIVATE), UserRef("test", "carol", "Carol"),
            text="Tell me a long story about a dragon and a knight.", want_voice=True))
    finally:
        app.close()
    raw = model.raw[-1]
    assert raw.truncated and raw.new_tokens == 30  # it ran into the cap...
    assert turn.reply != raw.text and raw.text.startswith(turn.reply)
    assert ends_sentence(turn.reply), turn.reply  # ...and was cut back to a whole sentence
    # The voice note says exactly what the text shows, sentence by sentence.
    assert " ".join(voice.said) == turn.reply
    assert turn.voice is not None and turn.voice.data[:4] == b"OggS"


def test_the_seed_answers_teach_short_spoken_replies():
    # English only: the Chinese seed pairs are the persona's own words, kept verbatim
    # (test_dataset pins them); two of them run ~13 s and are heard without their last
    # sentence.
    persona, language = load_persona("manman"), "en"
    for row in persona.seed_pairs(language):
        seconds = persona.speech.seconds(row.output, language)
        assert 1 <= seconds <= persona.speech.max_seconds, (row.output, seconds)
        assert persona.speech.fits(row.output, language), row.output


STREAMED = [
    "Hello there. I am Manman! It costs 3.5 dollars. Really? Yes... ok",
    "One. Two. Three. Four.",
    "你好！我是慢慢。今天天气很好，我们去散步吧？好的",
    'e.g.x is fine. "Quoted." Then more',
    "No stop at all here",
    "A very long first sentence that goes on and on, with clauses, and more clauses, and it",
    "Wait... what?! (Really.) Yes. And then a sentence long enough to run past twelve seconds "
    "of speech by far: words words words words words words words words words words words.",
    "",
    "“你好！”他说。再见",
]


@pytest.mark.parametrize("budget", [BUDGET, SpeechBudget(max_sentences=1),
                                    SpeechBudget(max_seconds=2),
                                    SpeechBudget(max_sentences=10, max_seconds=100)])
@pytest.mark.parametrize("truncated", [False, True])
def test_sentences_streamed_in_any_pieces_make_the_reply_shape_reply_makes(budget, truncated):
    """The voice is made sentence by sentence as the model writes; what it says must be the
    reply the whole text would have been cut to, wherever the model's pieces happen to end."""
    rng = random.Random(7)
    for text in STREAMED:
        for language in ("en", "zh"):
            for _ in range(15):
                stream, said, at = SentenceStream(budget, language), [], 0
                while at < len(text):
                    step = rng.randint(1, 6)
                    said += stream.feed(text[at:at + step])
                    at += step
                said += stream.finish(truncated=truncated)
                joined = ("" if language == "zh" else " ").join(said)
                assert joined == shape_reply(text, budget, language, truncated=truncated)
                assert joined == stream.text


def test_a_sentence_is_final_only_once_what_follows_cannot_change_it():
    stream = SentenceStream(SpeechBudget(max_sentences=5, max_seconds=60), "en")
    assert stream.feed("It costs 3.") == []  # "3.5" may follow
    assert stream.feed("5 dollars.") == []
    assert stream.feed(" Then") == ["It costs 3.5 dollars."]
    assert stream.feed(" we left! ") == ["Then we left!"]  # whitespace after the mark: final


def test_a_full_budget_says_so_and_takes_nothing_more():
    stream = SentenceStream(SpeechBudget(max_sentences=2), "en")
    assert stream.feed("One. Two. ") == ["One.", "Two."]
    assert stream.full
    assert stream.feed("Three. Four. ") == []
    assert stream.finish(truncated=False) == []
