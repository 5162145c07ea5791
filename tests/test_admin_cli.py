"""`chatman admin` and `chatman dataset` from the shell, as an operator uses them."""

from __future__ import annotations

import json

from tests.test_cli import chatman


def test_operator_curation_cycle(tmp_path):
    added = chatman(tmp_path, "admin", "add", "Favourite", "food?", "|", "Dumplings.", "--as", "ops")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("Added #1: Favourite food? → Dumplings.")

    corrected = chatman(tmp_path, "admin", "correct", "1", "Dumplings, always.", "--as", "ops",
                        "--json")
    payload = json.loads(corrected.stdout)
    assert payload["command"] == "correct" and payload["pairs"][0]["answer"] == "Dumplings, always."
    assert payload["pairs"][0]["decided_by"] == "cli:ops"

    pending = chatman(tmp_path, "admin", "pending")
    assert pending.stdout.strip() == "Nothing is waiting for review."

    figures = json.loads(chatman(tmp_path, "admin", "dataset", "--json").stdout)["data"]
    assert figures["by_status"]["approved"] == 1 and figures["rows"] == 5

    rejected = chatman(tmp_path, "admin", "reject", "1", "--as", "ops")
    assert rejected.stdout.startswith("Rejected #1")
    unknown = chatman(tmp_path, "admin", "launch", "--as", "ops")
    assert unknown.returncode == 2 and "Unknown command /launch" in unknown.stderr
    missing = chatman(tmp_path, "admin", "approve", "42")
    assert missing.returncode == 2 and "There is no pair #42" in missing.stderr
    no_job = chatman(tmp_path, "admin", "canceltrain", "--as", "ops")
    assert no_job.returncode == 2 and "nothing to cancel" in no_job.stderr


def test_dataset_export_and_strict_import(tmp_path):
    out = tmp_path / "export"
    exported = chatman(tmp_path, "dataset", "export", "--persona", "manman", "--format", "sharegpt",
                       "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "wrote 4 rows" in exported.stdout and f"--dataset_dir {out} --dataset manman" in exported.stdout
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["manman"]["formatting"] == "sharegpt"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": ""}\n')
    refused = chatman(tmp_path, "dataset", "import", str(bad), "--persona", "manman")
    assert refused.returncode == 2
    assert "row 2:" in refused.stdout and "Nothing was imported" in refused.stdout
    assert "approved 0" in chatman(tmp_path, "admin", "dataset").stdout

    allowed = chatman(tmp_path, "dataset", "import", str(bad), "--skip-invalid", "--as", "ops")
    assert allowed.returncode == 0 and "1 imported" in allowed.stdout

    unknown = chatman(tmp_path, "dataset", "export", "--persona", "ghost", "--out", str(out))
    assert unknown.returncode == 2 and "no persona 'ghost'" in unknown.stderr

    snap = chatman(tmp_path, "dataset", "snapshot")
    assert snap.returncode == 0 and "rows=5" in snap.stdout and "sha256=" in snap.stdout
