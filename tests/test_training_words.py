"""Refusals from the model registry and the job queue are codes too: a Chinese persona's admin
reads them in Chinese (the text route as Telegram renders it). No models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.app import ChatmanApp
from adapters.telegram import render_result
from bot.core.commands import Actor
from bot.core.errors import UserFacingError
from bot.core.wording import word
from tests.conftest import make_settings

ADMIN = Actor("telegram", "1", "Ada")


@pytest.fixture
def zh_app(tmp_path) -> Iterator[ChatmanApp]:
    application = ChatmanApp.from_settings(make_settings(tmp_path / "d", language="zh",
                                                         admin_ids="telegram:1"))
    application.migrate()
    yield application
    application.close()


def said(app: ChatmanApp, text: str) -> tuple[str, str]:
    """(what the admin reads, the English kept for logs)."""
    try:
        result = app.admin.execute(ADMIN, text)
    except UserFacingError as err:
        return word(err.message, app.language), err.user_message
    return render_result(result, app.language), result.message


def test_registry_and_job_refusals_are_worded_in_the_personas_language(zh_app):
    assert said(zh_app, "/rollback") == (
        "没有可以回滚的：当前没有启用训练版本，由基础模型回答。",
        "Nothing to roll back: no trained version is active, the base model answers.")
    assert said(zh_app, "/activate manman-v9") == (
        "manman 没有模型版本“manman-v9”（见 /models）。",
        "There is no model version 'manman-v9' for manman (see /models).")
    assert said(zh_app, "/canceltrain") == (
        "现在没有排队或正在进行的训练任务，不需要取消。",
        "No training job is queued or running; nothing to cancel.")
    assert said(zh_app, "/canceltrain 42") == ("没有训练任务 #42。", "There is no training job #42.")


def test_training_notices_reach_the_web_console_in_the_personas_language(zh_app):
    import asyncio

    from starlette.testclient import TestClient

    from adapters.web.server import create_api
    from bot.core.jobs import Notice, progress_message
    from bot.core.messages import Message
    from bot.core.types import ChatRef

    token = "test-admin-token-123"
    progress = Message("notice.progress", {"version": "manman-v2", "progress": progress_message(
        {"step": 3, "max_steps": 20, "loss": 0.91234, "eta_s": 425})})
    with TestClient(create_api(zh_app, token)) as web:
        asyncio.run(zh_app.notify(ChatRef("web", "admin"), Notice(4, progress)))
        status = web.get("/api/admin/trainstatus",
                         headers={"X-ChatMan": "1", "Authorization": f"Bearer {token}"})
    assert status.status_code == 200, status.text
    [notice] = status.json()["notices"]
    assert notice["text"] == "正在训练 manman-v2：第 3/20 步（15%），loss 0.912，最多还需 7 分 05 秒"
    assert notice["code"] == "notice.progress" and notice["params"]["version"] == "manman-v2"
    assert Notice(4, progress).text == ("Training manman-v2: step 3/20 (15%), loss 0.912, at most "
                                        "7 min 05 s left")


def test_trainstatus_describes_jobs_in_the_personas_language(zh_app):
    from bot.core.jobs import JobStatus

    queued, _ = zh_app.jobs.enqueue("telegram:1", None, 60, None)
    assert said(zh_app, "/trainstatus")[0].splitlines()[1] == "任务 #1 排队中，由 telegram:1 发起"
    zh_app.jobs.claim_next("test")
    zh_app.jobs.update(queued.id, model_version="manman-v1",
                       progress={"step": 3, "max_steps": 20, "loss": 0.5, "eta_s": 61})
    words, english = said(zh_app, "/trainstatus")
    assert words.splitlines()[1] == ("任务 #1 进行中（manman-v1）：第 3/20 步（15%），loss 0.500，"
                                     "最多还需 1 分 01 秒")
    assert english.splitlines()[1] == ("Job #1 running (manman-v1): step 3/20 (15%), loss 0.500, "
                                       "at most 1 min 01 s left")
    assert zh_app.jobs.get(queued.id).status == JobStatus.RUNNING
