"""SFT datasets: LLaMA-Factory layout, lossless round trips, strict imports, snapshots."""

from __future__ import annotations

import json

import pytest

from adapters.app import ChatmanApp
from bot.core.types import ChatKind, ChatMessage, ChatRef, Role, Turn, UserRef
from bot.services.admin import Actor
from tests.conftest import make_settings
from training.dataset import export_dataset, import_dataset, snapshot_dataset

OPS = "cli:ops"
# The keys LLaMA-Factory's data/README.md documents for a dataset_info.json entry.
INFO_KEYS = {"hf_hub_url", "ms_hub_url", "script_url", "file_name", "file_sha1", "subset",
             "folder", "ranking", "formatting", "columns", "tags", "split", "num_samples"}
COLUMN_KEYS = {"prompt", "query", "response", "history", "messages", "system", "tools"}
TAG_KEYS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag",
            "function_tag", "system_tag"}


def fresh_app(tmp_path, name: str, **overrides) -> ChatmanApp:
    app = ChatmanApp.from_settings(make_settings(tmp_path / name, **overrides))
    app.migrate()
    return app


@pytest.fixture
def app(tmp_path):
    application = fresh_app(tmp_path, "main")
    yield application
    application.close()


def with_conversation(app: ChatmanApp) -> None:
    """Two approved pairs from a real conversation (the second with history) and one added."""
    chat, user = ChatRef("telegram", "1", ChatKind.PRIVATE), UserRef("telegram", "7", "Eve")
    first = Turn(transcript="I'm planning a trip to Japan.", language="en",
                 reply="How exciting! When are you going?", voice=None, audio_duration_s=None,
                 model_version="v1", persona="manman")
    app.store.record_turn(chat, user, "1", first, "text")
    second = Turn(transcript="What should I see in Tokyo?", language="en",
                  reply="Start with Asakusa and the Sumida river at dusk.", voice=None,
                  audio_duration_s=None, model_version="v1", persona="manman",
                  context=[ChatMessage(Role.USER, first.transcript),
                           ChatMessage(Role.ASSISTANT, first.reply)])
    app.store.record_turn(chat, user, "2", second, "text")
    for pair in app.curation.pending(1, 10)[0]:
        app.curation.approve(pair.id, OPS)
    app.curation.add("Who are you?", "I'm Manman, and I curate good articles.", OPS)


def test_alpaca_export_follows_llama_factory_layout(app, tmp_path):
    with_conversation(app)
    result = export_dataset(app.curation, app.persona, app.language, "alpaca", tmp_path / "out")
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    entry = info["manman"]
    assert set(entry) <= INFO_KEYS and set(entry["columns"]) <= COLUMN_KEYS
    assert entry.get("formatting", "alpaca") == "alpaca"
    assert (tmp_path / "out" / entry["file_name"]) == result.data_file

    rows = json.loads(result.data_file.read_text())
    assert isinstance(rows, list) and len(rows) == result.rows == 6
    for row in rows:
        assert isinstance(row["instruction"], str) and row["instruction"]
        assert isinstance(row["input"], str) and isinstance(row["output"], str) and row["output"]
        assert row["system"] == app.persona.prompt_for("en")
        for turn in row.get("history", []):
            assert isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
    by_q = {r["instruction"]: r for r in rows}
    # The approved "Who are you?" replaced the seed pair with the same question.
    assert by_q["Who are you?"]["output"] == "I'm Manman, and I curate good articles."
    assert by_q["What should I see in Tokyo?"]["history"] == [
        ["I'm planning a trip to Japan.", "How exciting! When are you going?"]]
    assert "Which company do you work for?" in by_q  # untouched seed


def test_chinese_seed_pairs_ship_exactly(tmp_path):
    app = fresh_app(tmp_path, "zh", language="zh")
    try:
        result = export_dataset(app.curation, app.persona, "zh", "alpaca", tmp_path / "zh-out")
        rows = json.loads(result.data_file.read_text())
        assert [(r["instruction"], r["output"]) for r in rows] == [
            ("你是谁?", "我叫慢慢,是一个搬运工,专门搬运一些优质文章发表到公众号。"),
            ("你在哪个公司?", "我目前自主创业,方向为AIGC和LLM,以及提供付费咨询服务。"),
            ("请教下公众号怎么做流量?", "要坚持写作,有自己的主线,不要被外部的声音干扰,不要轻易换方向,"
             "努力提升内容的质量。对更多人有帮助的内容,总会得到其应有的回报的。"),
            ("ChatMan 是什么?", "ChatMan 是我开发的一款语音聊天机器人,可以通过语音和LLM对话,"
             "目前还不能做到完全实时,不过我会继续优化,让它变得更有用。"),
        ]
        assert rows[0]["system"].startswith("你是慢慢")
    finally:
        app.close()


def test_sharegpt_export_follows_llama_factory_layout(app, tmp_path):
    with_conversation(app)
    result = export_dataset(app.curation, app.persona, app.language, "sharegpt", tmp_path / "sg")
    entry = json.loads((tmp_path / "sg" / "dataset_info.json").read_text())["manman"]
    assert entry["formatting"] == "sharegpt"
    assert set(entry["columns"]) <= COLUMN_KEYS and set(entry["tags"]) <= TAG_KEYS
    tags = entry["tags"]
    rows = json.loads(result.data_file.read_text())
    for row in rows:
        turns = row[entry["columns"]["messages"]]
        roles = [t[tags["role_tag"]] for t in turns]
        assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(turns) // 2)
    tokyo = next(r for r in rows if r["conversations"][-2]["value"] == "What should I see in Tokyo?")
    assert len(tokyo["conversations"]) == 4


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
def test_export_import_export_is_lossless(app, tmp_path, fmt):
    with_conversation(app)
    first = export_dataset(app.curation, app.persona, app.language, fmt, tmp_path / "a")
    other = fresh_app(tmp_path, "other")
    try:
        report = import_dataset(other.curation, first.data_file, OPS)
        assert report.errors == [] and report.imported == first.rows
        second = export_dataset(other.curation, other.persona, other.language, fmt, tmp_path / "b")
        assert second.data_file.read_bytes() == first.data_file.read_bytes()
        # Importing the same file again changes nothing.
        again = import_dataset(other.curation, first.data_file, OPS)
        assert (again.imported, again.unchanged) == (0, first.rows)
        assert other.curation.counts_by_status()["approved"] == first.rows
    finally:
        other.close()


def test_jsonl_import_of_both_formats(app, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps({"instruction": "Favourite colour?", "input": "", "output": "Green."}),
        "",
        json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                      {"from": "gpt", "value": "Hello!"},
                                      {"from": "human", "value": "Tea or coffee?"},
                                      {"from": "gpt", "value": "Tea."}]}),
    ]))
    report = import_dataset(app.curation, path, OPS)
    assert (report.rows, report.imported, report.errors) == (2, 2, [])
    tea = next(p for p in app.curation.approved() if p.question == "Tea or coffee?")
    assert tea.history == [["Hi", "Hello!"]] and tea.source == "import"
    assert tea.decided_by == OPS


def test_malformed_import_reports_every_bad_row_and_imports_nothing(app, tmp_path):
    rows = [
        {"instruction": "Good one?", "output": "Yes."},                  # 1 ok
        {"instruction": "No answer"},                                    # 2 missing output
        {"instruction": 42, "output": "wrong type"},                     # 3 wrong type
        {"instruction": "   ", "output": "empty instruction"},           # 4 empty
        "just a string",                                                  # 5 not an object
        {"conversations": [{"from": "gpt", "value": "starts wrong"},
                           {"from": "human", "value": "x"}]},           # 6 bad sharegpt
        {"instruction": "Q", "output": "A", "history": [["only one"]]},  # 7 bad history
        {"instruction": "Q2", "output": "A2", "surprise": 1},            # 8 unknown field
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    report = import_dataset(app.curation, path, OPS)
    assert [n for n, _ in report.errors] == [2, 3, 4, 5, 6, 7, 8]
    reasons = dict(report.errors)
    assert "output" in reasons[2] and "Field required" in reasons[2]
    assert "instruction" in reasons[3]
    assert "at least 1 character" in reasons[4]
    assert "expected an object" in reasons[5]
    assert "expected 'human'" in reasons[6]
    assert "history" in reasons[7]
    assert "surprise" in reasons[8]
    assert report.imported == 0 and not report.committed
    assert app.curation.counts_by_status()["approved"] == 0
    assert "Nothing was imported" in report.summary()

    skipped = import_dataset(app.curation, path, OPS, skip_invalid=True)
    assert skipped.imported == 1 and skipped.committed
    assert [p.question for p in app.curation.approved()] == ["Good one?"]


def test_broken_json_and_broken_jsonl_lines(app, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},')
    report = import_dataset(app.curation, broken, OPS)
    assert report.errors[0][0] == 0 and "not valid JSON" in report.errors[0][1]

    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"instruction": "a", "output": "b"}\n{oops\n{"instruction": "c", "output": "d"}\n')
    report = import_dataset(app.curation, lines, OPS)
    assert report.errors == [(2, report.errors[0][1])] and "not valid JSON" in report.errors[0][1]
    assert report.rows == 3 and report.imported == 0
    assert app.curation.counts_by_status()["approved"] == 0

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "no rows" in import_dataset(app.curation, empty, OPS).errors[0][1]
    assert "cannot read" in import_dataset(app.curation, tmp_path / "nope.json", OPS).errors[0][1]


def test_snapshots_are_content_addressed_and_recorded(app, tmp_path):
    root = tmp_path / "snaps"
    one = snapshot_dataset(app.curation, app.persona, app.language, root)
    same = snapshot_dataset(app.curation, app.persona, app.language, root)
    assert one.sha256 == same.sha256 and one.data_file == same.data_file
    assert one.directory.name == one.sha256[:16]
    app.curation.add("New question?", "New answer.", OPS)
    changed = snapshot_dataset(app.curation, app.persona, app.language, root)
    assert changed.sha256 != one.sha256 and changed.rows == one.rows + 1
    assert one.data_file.read_bytes() != changed.data_file.read_bytes()
    last = app.curation.last_snapshots()["snapshot"]
    assert (last.sha256, last.rows) == (changed.sha256, changed.rows)
    figures = app.admin.execute(Actor("cli", "ops", "ops", granted_admin=True), "dataset").data
    assert figures["last_snapshot"]["sha256"] == changed.sha256


def test_a_snapshot_reads_the_dataset_once(app, tmp_path):
    """An approval landing right after the dataset is read is in none of the snapshot's hash,
    file or rows: the folder name, the recorded hash and the rows are those of the bytes."""
    import hashlib

    from bot.core.formats import dump_alpaca
    from tests.test_job_lifecycle import approvals_racing_each_read

    landed = approvals_racing_each_read(app.curation)
    snap = snapshot_dataset(app.curation, app.persona, app.language, tmp_path / "snaps")
    written = snap.data_file.read_bytes()
    assert landed, "no approval raced the snapshot"
    assert snap.sha256 == hashlib.sha256(written).hexdigest()
    assert snap.directory.name == snap.sha256[:16]
    assert [dump_alpaca(r) for r in snap.records] == json.loads(written)
    assert snap.rows == len(snap.records)
    assert not {r.instruction for r in snap.records} & set(landed)
    last = app.curation.last_snapshots()["snapshot"]
    assert (last.sha256, last.rows) == (snap.sha256, snap.rows)
