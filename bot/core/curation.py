"""Curating question/answer pairs: the records callers see and the repository they call.

Approve, correct, reject, add, forget — each one transaction with its audit entries, so every
adapter and the CLI get identical semantics. Permissions are checked by the caller
(:mod:`bot.services.admin`). The SQL implementation is
:class:`bot.infra.storage.curation.SqlCuration`; callers type against
:class:`CurationRepository` so nothing outside storage holds a database session or an ORM row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class PairStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    # An approved pair whose question was approved again later: newest approval wins.
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class PairView:
    id: int
    status: str
    source: str
    question: str
    answer: str
    history: list[list[str]]
    asked_by: str | None
    model_version: str | None
    created_at: datetime
    decided_by: str | None

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["created_at"] = self.created_at.isoformat()
        return d


@dataclass(frozen=True)
class Change:
    """The outcome of one curation action."""

    pair: PairView
    changed: bool
    superseded: list[int]


FORGET_COUNTS = ("exchanges", "pairs_deleted", "pairs_anonymised", "history_redacted",
                 "audit_redacted")
# What a forgotten user's question/answer becomes in the audit log: the entry stays (who
# approved what, when), the words go.
FORGOTTEN_TEXT = "[forgotten]"


@dataclass(frozen=True)
class ForgottenExchange:
    """A deleted exchange, for the adapter that stored its reply audio (named after it)."""

    id: int
    platform: str
    chat_id: str
    reply_message_id: str | None


@dataclass(frozen=True)
class Forgotten:
    """What /forget removed: counts per kind (see FORGET_COUNTS) and the deleted exchanges."""

    counts: dict[str, int]
    exchanges: list[ForgottenExchange]


@dataclass(frozen=True)
class AuditView:
    """One audit log entry: who changed what, when, with the values before and after."""

    id: int
    at: datetime
    actor: str
    action: str
    pair_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True)
class SnapshotView:
    """A recorded dataset file (an export, or a snapshot frozen for training)."""

    id: int
    persona: str
    kind: str  # export | snapshot
    format: str
    path: str
    sha256: str
    rows: int
    created_at: datetime


@runtime_checkable
class CurationRepository(Protocol):
    """One persona's pairs, audit log and dataset snapshots."""

    persona: str

    # --- finding pairs ---
    def find_by_reply(self, platform: str, chat_id: str, reply_message_id: str) -> int | None:
        """The pair whose bot answer is message ``reply_message_id`` in that chat."""

    def get(self, pair_id: int) -> PairView | None: ...

    def pending(self, page: int, per_page: int) -> tuple[list[PairView], int]:
        """One page of pending pairs, oldest first, and how many are pending in all."""

    def approved(self) -> list[PairView]:
        """Approved pairs, oldest approval first (the dataset's order)."""

    # --- changing pairs ---
    def approve(self, pair_id: int, actor: str, *, answer: str | None = None,
                question: str | None = None) -> Change | None:
        """Approve as is, or with a corrected answer (and question). None: no such pair."""

    def reject(self, pair_id: int, actor: str) -> Change | None: ...

    def add(self, question: str, answer: str, actor: str, *, source: str = "admin",
            history: list[list[str]] | None = None) -> Change:
        """A pair written (or imported) by an admin; the same approved pair again is a no-op."""

    def add_many(self, pairs: list[tuple[str, str, list[list[str]]]], actor: str,
                 source: str = "import") -> list[Change]:
        """Several pairs in one transaction: all of them land, or none (an import)."""

    def forget_user(self, platform: str, user_id: str) -> Forgotten:
        """Remove a user's words: messages, unapproved pairs, audit values, others' history."""

    # --- figures ---
    def counts_by_status(self) -> dict[str, int]:
        """Pairs of this persona per status, every status present (0 when none)."""

    def approved_per_persona(self) -> dict[str, int]: ...

    def audit_log(self, pair_id: int | None = None) -> list[AuditView]: ...

    # --- dataset snapshots ---
    def record_snapshot(self, *, kind: str, fmt: str, path: str, sha256: str,
                        rows: int) -> SnapshotView:
        """Record a dataset file just written for this persona (kind: export | snapshot)."""

    def last_snapshots(self) -> dict[str, SnapshotView]:
        """The newest recorded file per kind (export, snapshot), where there is one."""
