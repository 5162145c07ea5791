"""A small built-in general-knowledge set: what a persona fine-tune must not forget.

Answers are checked by substring, so each item accepts the short forms a correct answer uses.
Kept to facts a 135M model mostly knows, so retention is measurable on the starter too.
"""

from __future__ import annotations

GENERAL_QA: list[dict[str, object]] = [
    {"question": "What is the capital of Japan?", "accept": ["Tokyo"]},
    {"question": "What is the capital of France?", "accept": ["Paris"]},
    {"question": "What is the capital of Italy?", "accept": ["Rome", "Roma"]},
    {"question": "What is the capital of the United Kingdom?", "accept": ["London"]},
    {"question": "How many days are there in a week?", "accept": ["seven", "7"]},
    {"question": "What is the largest planet in our solar system?", "accept": ["Jupiter"]},
    {"question": "What is the chemical symbol for water?", "accept": ["H2O", "H₂O"]},
    {"question": "What color is the sky on a clear day?", "accept": ["blue"]},
    {"question": "Which animal is known as the king of the jungle?", "accept": ["lion"]},
    {"question": "What do bees make?", "accept": ["honey"]},
    {"question": "What is the freezing point of water in Celsius?", "accept": ["0", "zero"]},
    {"question": "Who wrote Romeo and Juliet?", "accept": ["Shakespeare"]},
]

# Replay bank: general prompts whose *base-model* answers are mixed into training, so the
# fine-tune keeps answering them as the base did. Deliberately disjoint from GENERAL_QA, which
# measures retention on questions the training never saw.
REPLAY_PROMPTS: list[str] = [
    "What is the capital of Germany?",
    "What is the capital of Spain?",
    "What is the capital of China?",
    "What is the capital of Canada?",
    "How many hours are there in a day?",
    "How many months are there in a year?",
    "What is two plus two?",
    "What is ten minus three?",
    "What gas do plants absorb from the air?",
    "What is the boiling point of water in Celsius?",
    "Which planet is known as the red planet?",
    "What is the largest ocean on Earth?",
    "What is the tallest mountain in the world?",
    "Who painted the Mona Lisa?",
    "What language is spoken in Brazil?",
    "What is the opposite of hot?",
    "Name a fruit that is yellow.",
    "What do cows drink?",
    "How many legs does a spider have?",
    "What is the main ingredient of bread?",
    "Give me a synonym for happy.",
    "What is the past tense of run?",
    "Translate 'thank you' into French.",
    "What is a healthy breakfast?",
    "How can I sleep better?",
    "Write one sentence about the sea.",
    "What is photosynthesis?",
    "Why do we need to drink water?",
    "What is the speed of light, roughly?",
    "Explain what a computer is in one sentence.",
]

# The same in Chinese, for a Chinese persona: retention is measured in the language it is
# trained and served in (a Chinese fine-tune may forget Chinese facts and keep English ones).
GENERAL_QA_ZH: list[dict[str, object]] = [
    {"question": "日本的首都是哪里?", "accept": ["东京"]},
    {"question": "法国的首都是哪里?", "accept": ["巴黎"]},
    {"question": "一个星期有几天?", "accept": ["七", "7"]},
    {"question": "太阳系中最大的行星是哪一颗?", "accept": ["木星"]},
    {"question": "水的化学式是什么?", "accept": ["H2O", "H₂O"]},
    {"question": "晴朗的天空是什么颜色的?", "accept": ["蓝"]},
    {"question": "蜜蜂会酿什么?", "accept": ["蜜"]},
    {"question": "一小时有多少分钟?", "accept": ["60", "六十"]},
    {"question": "《红楼梦》的作者是谁?", "accept": ["曹雪芹"]},
    {"question": "一年有几个月?", "accept": ["十二", "12"]},
    {"question": "熊猫最爱吃什么?", "accept": ["竹"]},
    {"question": "长城在哪个国家?", "accept": ["中国", "中华"]},
]

REPLAY_PROMPTS_ZH: list[str] = [
    "德国的首都是哪里?",
    "西班牙的首都是哪里?",
    "中国的首都是哪里?",
    "一天有多少个小时?",
    "二加二等于几?",
    "十减三等于几?",
    "植物从空气中吸收什么气体?",
    "水在摄氏多少度沸腾?",
    "哪颗行星被称为红色星球?",
    "地球上最大的海洋是什么?",
    "世界上最高的山是哪座?",
    "《蒙娜丽莎》是谁画的?",
    "巴西人说什么语言?",
    "热的反义词是什么?",
    "说出一种黄色的水果。",
    "蜘蛛有几条腿?",
    "面包的主要原料是什么?",
    "“开心”的近义词是什么?",
    "用英语怎么说“谢谢”?",
    "什么样的早餐比较健康?",
    "怎样才能睡得更好?",
    "写一句关于大海的话。",
    "什么是光合作用?",
    "我们为什么需要喝水?",
    "用一句话解释什么是电脑。",
    "春节是哪个国家的传统节日?",
]


def general_qa(language: str) -> list[dict[str, object]]:
    """The general-knowledge set in ``language`` (English for any language without one)."""
    return GENERAL_QA_ZH if language.lower().startswith("zh") else GENERAL_QA


def replay_prompts(language: str) -> list[str]:
    """The replay bank in ``language`` (English for any language without one)."""
    return REPLAY_PROMPTS_ZH if language.lower().startswith("zh") else REPLAY_PROMPTS
