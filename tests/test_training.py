"""Real LoRA training on the starter: it learns the persona and keeps what the base knew."""

from __future__ import annotations

import json

import pytest

from bot.app import ChatmanApp
from bot.types import ChatKind, ChatRef, Incoming, UserRef
from tests.conftest import MODEL_CACHE, make_settings
from tests.test_cli import chatman
from training.release import train_and_release
from training.sft import TrainConfig


@pytest.fixture
def app(tmp_path):
    application = ChatmanApp.from_settings(make_settings(tmp_path / "data", language="en"))
    application.migrate()
    yield application
    application.close()


async def test_training_teaches_the_persona_without_forgetting(app, tmp_path):
    # Measured on 2 CPU cores: the gate passes at step 20 with these settings (~9 s a step).
    config = TrainConfig(max_steps=20, eval_every=20)
    steps = []
    await app.start(load_models=False)
    release = train_and_release(
        registry=app.registry, curation=app.curation, persona=app.persona, language="en",
        base_model="starter", cache_dir=MODEL_CACHE, data_dir=tmp_path / "data", config=config,
        created_by="test:ada", progress=steps.append,
    )
    output = release.run
    report = output.result.final
    # Identity questions never seen in training are answered in persona...
    unseen = {p.question: p for p in report.probes}
    assert unseen["What is your name?"].correct, unseen["What is your name?"].answer
    assert "Manman" in unseen["Could you introduce yourself?"].answer
    assert report.persona_score >= 0.75
    # ...while what the base model knew is kept, without the persona leaking into it.
    assert report.base_general_score > 0.4
    assert report.retention >= 0.8, [(g.question, g.answer) for g in report.general]
    assert report.leakage <= 0.1
    assert next(g for g in report.general if "Japan" in g.question).correct
    # Training really ran and the loss came down.
    assert [s.step for s in steps] == list(range(1, output.result.steps + 1))
    first, last = steps[0].loss, min(s.loss for s in steps[-5:])
    assert last < first / 2
    saved = json.loads((output.directory / "train_report.json").read_text())
    assert saved["dataset"]["sha256"] == output.dataset_sha256 and saved["dataset"]["rows"] == 4
    assert (output.directory / "adapter" / "adapter_config.json").is_file()
    # A merged copy is written only when the gate passed.
    assert (saved["model_dir"] is not None) == output.result.passed
    assert saved["config"]["kl_weight"] > 0 and saved["config"]["replay_ratio"] > 0
    assert release.plot.read_bytes()[:4] == b"\x89PNG"

    # Registered; when it passed, it is active and the bot switches to it between requests.
    version = app.registry.get(release.version)
    assert version.dataset_sha256 == output.dataset_sha256 and version.steps == output.result.steps
    assert version.metrics["persona_score"] == report.persona_score
    if not output.result.passed:
        assert version.status == "rejected" and version.reasons
        return
    assert version.status == "active" and release.status == "active"
    await app.sync_model()
    assert app.llm.version == release.version
    turn = await app.pipeline.handle(Incoming(ChatRef("test", "c1", ChatKind.PRIVATE),
                                              UserRef("test", "2", "Carol"),
                                              text="Who are you?", want_voice=False))
    assert turn.model_version == release.version and "Manman" in turn.reply, turn.reply


def test_chatman_train_cli_runs_and_reports(tmp_path, tiny_qwen2_dir):
    # The command's plumbing, on the tiny Qwen2 (the starter's real run is the test above).
    result = chatman(tmp_path, "train", "--max-steps", "1", "--eval-every", "1", "--json",
                     CHATMAN_TRAIN_BASE_MODEL=str(tiny_qwen2_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] == 1 and len(report["evals"]) == 1
    assert report["version"] == "manman-v1" and report["status"] == "rejected"
    assert report["plot"].endswith("manman-v1/loss.png")
    listed = json.loads(chatman(tmp_path, "models", "list", "--json").stdout)
    assert [(v["version"], v["status"]) for v in listed["versions"]] == [("manman-v1", "rejected")]
    assert report["gate_passed"] is False and report["gate_reasons"]
    assert report["base_version"] == "tiny-qwen2" and report["base_model"] == str(tiny_qwen2_dir)
    assert report["log"][0]["loss"] > 0

    refused = chatman(tmp_path, "train", "--max-steps", "0")
    assert refused.returncode == 2 and "max_steps" in refused.stderr
