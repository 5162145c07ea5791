"""A small built-in general-knowledge set: what a persona fine-tune must not forget.

Answers are checked by substring, so each item accepts the short forms a correct answer uses.
Kept to facts a 135M model mostly knows, so retention is measurable on the starter too.
"""

from __future__ import annotations

GENERAL_QA: list[dict] = [
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
