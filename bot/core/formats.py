"""SFT data formats LLaMA-Factory reads: alpaca and sharegpt rows, validated.

Reference: LLaMA-Factory's data/README.md. Alpaca rows carry ``instruction``, ``input``,
``output``, optional ``system`` and ``history`` ([[question, answer], ...]); sharegpt rows a
``conversations`` list of ``{"from": "human"|"gpt", "value": ...}`` turns and optional
``system``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Format = Literal["alpaca", "sharegpt"]


class AlpacaRow(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instruction: str = Field(min_length=1)
    input: str = ""
    output: str = Field(min_length=1)
    system: str | None = None
    history: list[tuple[str, str]] = Field(default_factory=list)

    @property
    def question(self) -> str:
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction


class ShareGptTurn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Literal["human", "gpt"] = Field(alias="from")
    value: str = Field(min_length=1)


class ShareGptRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversations: list[ShareGptTurn] = Field(min_length=2)
    system: str | None = None

    @field_validator("conversations")
    @classmethod
    def _alternates_human_first(cls, turns: list[ShareGptTurn]) -> list[ShareGptTurn]:
        for i, turn in enumerate(turns):
            expected = "human" if i % 2 == 0 else "gpt"
            if turn.from_ != expected:
                raise ValueError(f"turn {i + 1} is from {turn.from_!r}, expected {expected!r}")
        if len(turns) % 2:
            raise ValueError("the last turn must be the assistant's ('gpt')")
        return turns

    def to_alpaca(self) -> AlpacaRow:
        values = [t.value for t in self.conversations]
        history = [(values[i], values[i + 1]) for i in range(0, len(values) - 2, 2)]
        return AlpacaRow(instruction=values[-2], output=values[-1], system=self.system,
                         history=history)

    @classmethod
    def from_alpaca(cls, row: AlpacaRow) -> ShareGptRow:
        turns = []
        for q, a in [*row.history, (row.question, row.output)]:
            turns += [ShareGptTurn(**{"from": "human", "value": q}),
                      ShareGptTurn(**{"from": "gpt", "value": a})]
        return cls(conversations=turns, system=row.system)

    def dump(self) -> dict[str, object]:
        out: dict[str, object] = {"conversations": [t.model_dump(by_alias=True) for t in self.conversations]}
        if self.system is not None:
            out["system"] = self.system
        return out


def dump_alpaca(row: AlpacaRow) -> dict[str, object]:
    out: dict[str, object] = {"instruction": row.instruction, "input": row.input, "output": row.output}
    if row.system is not None:
        out["system"] = row.system
    if row.history:
        out["history"] = [list(h) for h in row.history]
    return out


def dataset_info_entry(name: str, file_name: str, fmt: Format) -> dict[str, dict[str, object]]:
    """The entry LLaMA-Factory's dataset_info.json needs for our files."""
    if fmt == "alpaca":
        return {name: {
            "file_name": file_name,
            "columns": {"prompt": "instruction", "query": "input", "response": "output",
                        "system": "system", "history": "history"},
        }}
    return {name: {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value",
                 "user_tag": "human", "assistant_tag": "gpt"},
    }}
