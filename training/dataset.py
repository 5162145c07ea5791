"""The persona's SFT dataset: seed pairs + approved pairs, exported, imported, frozen.

Exports are LLaMA-Factory-ready folders: the data file plus a ``dataset_info.json`` entry, so
``llamafactory-cli train --dataset_dir DIR --dataset NAME`` works on them unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from bot.core.curation import CurationRepository
from bot.core.dataset import collect_rows, render
from bot.core.formats import AlpacaRow, Format, ShareGptRow, dataset_info_entry
from bot.core.persona import PersonaProfile


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    data_file: Path
    dataset_name: str
    rows: int
    sha256: str
    #: The rows the file holds, in its order: exactly what was rendered, hashed and written.
    records: tuple[AlpacaRow, ...] = ()


def export_dataset(curation: CurationRepository, persona: PersonaProfile, language: str, fmt: Format,
                   out_dir: Path, *, kind: str = "export") -> ExportResult:
    rows = collect_rows(curation, persona, language)
    return _write(curation, persona, rows, render(rows, fmt), fmt, out_dir, kind)


def _write(curation: CurationRepository, persona: PersonaProfile, rows: list[AlpacaRow], data: bytes,
           fmt: Format, out_dir: Path, kind: str) -> ExportResult:
    """Write ``data`` (``rows`` rendered) as a LLaMA-Factory folder and record it."""
    if not rows:
        raise ValueError(f"persona {persona.name!r} has no seed or approved pairs to export")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = persona.name
    data_file = out_dir / f"{name}.json"
    # Written aside and renamed: a reader never sees half a file.
    partial = data_file.with_name(f".{data_file.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, data_file)
    info_path = out_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info.update(dataset_info_entry(name, data_file.name, fmt))
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    digest = hashlib.sha256(data).hexdigest()
    curation.record_snapshot(kind=kind, fmt=fmt, path=str(data_file.resolve()), sha256=digest,
                             rows=len(rows))
    return ExportResult(out_dir, data_file, name, len(rows), digest, tuple(rows))


def snapshot_dataset(curation: CurationRepository, persona: PersonaProfile, language: str,
                     root: Path, fmt: Format = "alpaca") -> ExportResult:
    """Freeze the dataset as it is now, in a folder named by its content hash.

    The dataset is read once: the rows returned (``records``) are the rows rendered into the
    file, and the hash is that of the file's bytes, so a pair approved meanwhile is in none of
    them. Training runs train on ``records`` and record the path and hash, so a run can be
    repeated on exactly the data it saw, whatever is approved afterwards.
    """
    rows = collect_rows(curation, persona, language)
    data = render(rows, fmt)
    digest = hashlib.sha256(data).hexdigest()
    return _write(curation, persona, rows, data, fmt, root / persona.name / digest[:16],
                  "snapshot")


# --- import ---------------------------------------------------------------------------------
@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    committed: bool = False

    def summary(self) -> str:
        lines = [f"{self.rows} rows: {self.imported} imported, {self.unchanged} already present, "
                 f"{len(self.errors)} invalid."]
        lines += [f"row {n}: {reason}" for n, reason in self.errors]
        if self.errors and not self.committed:
            lines.append("Nothing was imported (use --skip-invalid to import the valid rows).")
        return "\n".join(lines)


def _raw_rows(text: str) -> tuple[list[tuple[int, object]], list[tuple[int, str]], int]:
    """Rows numbered from 1 (a JSON array, or JSON Lines), parse errors, and the row count."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            return [], [(0, f"not valid JSON: {err}")], 0
        return list(enumerate(data, start=1)), [], len(data)
    rows, errors, total = [], [], 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        total += 1
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as err:
            errors.append((n, f"not valid JSON: {err.msg}"))
    if total == 0:
        errors.append((0, "the file has no rows"))
    return rows, errors, total


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "row"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def parse_rows(text: str) -> tuple[list[AlpacaRow], list[tuple[int, str]], int]:
    """Alpaca or sharegpt rows (detected per row), every invalid one reported with its number."""
    raw, errors, total = _raw_rows(text)
    rows: list[AlpacaRow] = []
    for n, item in raw:
        if not isinstance(item, dict):
            errors.append((n, f"expected an object, got {type(item).__name__}"))
            continue
        try:
            if "conversations" in item:
                rows.append(ShareGptRow.model_validate(item).to_alpaca())
            else:
                rows.append(AlpacaRow.model_validate(item))
        except ValidationError as err:
            errors.append((n, _explain(err)))
    errors.sort()
    return rows, errors, total


def import_dataset(curation: CurationRepository, path: Path, actor: str, *,
                   skip_invalid: bool = False) -> ImportReport:
    """Imported pairs count as approved by ``actor``; an identical approved pair is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return ImportReport(errors=[(0, f"cannot read {path}: {err}")])
    rows, errors, total = parse_rows(text)
    report = ImportReport(rows=total, errors=errors)
    if errors and not skip_invalid:
        return report
    changes = curation.add_many(
        [(row.question, row.output, [list(h) for h in row.history]) for row in rows], actor
    )
    report.imported = sum(c.changed for c in changes)
    report.unchanged = len(changes) - report.imported
    report.committed = True
    return report
