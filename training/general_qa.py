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
