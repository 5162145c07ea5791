"""Real LoRA training on the starter: it learns the persona and keeps what the base knew."""

from __future__ import annotations

import json

import pytest

from adapters.app import ChatmanApp
from bot.core.config import Settings
from bot.core.types import ChatKind, ChatRef, Incoming, UserRef
from tests.conftest import MODEL_CACHE, make_settings
from tests.test_cli import chatman
from training.evaluate import Decoding
from training.release import train_and_release
from training.sft import StepLog, TrainConfig


@pytest.fixture
def app(tmp_path):
    application = ChatmanApp.from_settings(make_settings(tmp_path / "data", language="en"))
    application.migrate()
    yield application
    application.close()


async def test_the_default_recipe_passes_the_real_gate(app, tmp_path):
    """What /retrain and the shipped starter do: TrainConfig's defaults and its gate, judged
    with the decoding the bot serves (CHATMAN_LLM_* defaults, not the tests' greedy)."""
    config = TrainConfig()
    served = Settings(_env_file=None)
    decoding = Decoding.serving(served, app.persona, "en", config.eval_samples)
    assert decoding.temperature > 0 and decoding.draws == config.eval_samples
    steps: list[StepLog] = []
    await app.start(load_models=False)
    release = train_and_release(
        registry=app.registry, curation=app.curation, persona=app.persona, language="en",
        base_model="starter", cache_dir=MODEL_CACHE, data_dir=tmp_path / "data", config=config,
        created_by="test:ada", progress=steps.append, decoding=decoding,
    )
    output = release.run
    report = output.result.final
    # The gate decides, with its real thresholds: a failing recipe fails this test.
    assert output.result.passed, release.summary
    assert report is not None  # a run that passed the gate was evaluated
    assert config.gate.check(report) == []
    assert report.decoding["temperature"] == served.llm_temperature
    assert {a.draw for a in report.probes} == set(range(config.eval_samples))
    # Identity questions never seen in training are answered in persona, in every kind.
    assert set(report.scores) >= {"identity", "fact", "consistency", "injection", "retention",
                                  "within_budget", "leakage"}
    assert report.scores["identity"]["mean"] >= 0.9, release.summary
    # Replies are sized for speech: none of what users hear runs past the budget.
    assert report.speech_seconds["max"] <= app.persona.speech.max_seconds + 2
    # Training really ran and the loss came down.
    assert [s.step for s in steps] == list(range(1, output.result.steps + 1))
    first, last = steps[0].loss, min(s.loss for s in steps[-5:])
    assert last < first / 2
    saved = json.loads((output.directory / "train_report.json").read_text())
    assert saved["dataset"]["sha256"] == output.dataset_sha256 and saved["dataset"]["rows"] == 4
    assert saved["decoding"] == report.decoding
    assert (output.directory / "adapter" / "adapter_config.json").is_file()
    assert saved["model_dir"] is not None
    assert release.plot is not None and release.plot.read_bytes()[:4] == b"\x89PNG"

    # Registered and active; the bot switches to it between requests and answers in persona.
    version = app.registry.get(release.version)
    assert version.dataset_sha256 == output.dataset_sha256 and version.steps == output.result.steps
    assert version.metrics["persona_score"] == report.persona_score
    assert version.metrics["decoding"] == report.decoding
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
