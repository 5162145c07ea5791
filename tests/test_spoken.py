"""What ChatTTS is given to say: numbers, dates, money, links and emoji in words."""

from __future__ import annotations

import pytest

from bot.infra.tts.spoken import sentences, spoken


@pytest.mark.parametrize(("text", "language", "said"), [
    ("I have 3,000 readers and 2 cats.", "en", "I have three thousand readers and two cats."),
    ("It costs $12.50 now.", "en", "It costs twelve dollars fifty cents now."),
    ("Prices rose 45% in 2024.", "en", "Prices rose forty-five percent in twenty twenty-four."),
    ("See you on 2024-03-15 at 14:30.", "en",
     "See you on March fifteenth, twenty twenty-four at fourteen thirty."),
    ("Meet at 9:05 or 10:00.", "en", "Meet at nine oh five or ten o'clock."),
    ("The 1st and 22nd.", "en", "The first and twenty-second."),
    ("今天是2024-03-15，14:30开会。", "zh", "今天是二零二四年三月十五日，十四点三十分开会。"),
    ("价格￥1,200，涨了45%，约$20。", "zh", "价格一千二百元，涨了百分之四十五，约二十美元。"),
    ("气温25.5度。", "zh", "气温二十五点五度。"),
    ("我用 ChatTTS 合成了3段语音！", "zh", "我用 ChatTTS 合成了三段语音！"),
    ("Read https://example.com/a?b=1 now 😀🎉", "en", "Read a link now"),
    ("详见 www.example.cn 🙂", "zh", "详见 链接"),
    ("**Bold** and `code` and [docs](http://x.y)", "en", "Bold and code and docs"),
    ("# Plan\n- one\n- two", "en", "Plan\none\ntwo"),
    ("Run this:\n```python\nprint(1)\n```\nDone.", "en", "Run this:\nDone."),
    ("Tom & Jerry = 2 + 2", "en", "Tom and Jerry equals two plus two"),
])
def test_spoken(text, language, said):
    assert spoken(text, language) == said


def test_long_replies_split_at_sentence_boundaries():
    text = "第一句话。第二句话很长，" + "非常长，" * 20 + "终于结束。Short one! Another one."
    pieces = sentences(text, max_chars=40)
    assert all(len(p) <= 40 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert pieces[0].startswith("第一句话。")
    assert pieces[-1].endswith("Another one.")
