"""Reply voice notes kept on disk (web console, CLI), so users can play them again.

Files live under ``data_dir/replies/<platform>/`` with random names (a name is the only key to
a reply, so nobody can guess another visitor's). They are written completely before a turn is
stored — a temporary file renamed into place — so a stored turn never points at a truncated
file, and /forget deletes them by the names stored with the user's exchanges.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

NAME = re.compile(r"^[0-9a-f]{32}\.ogg$")


class ReplyAudioStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, platform: str) -> Path:
        return self.root / platform

    def _legacy(self, platform: str) -> Path | None:
        # Before this layout the web console kept its replies in data_dir/web-replies/.
        return self.root.parent / "web-replies" if platform == "web" else None

    def save(self, platform: str, data: bytes) -> str:
        """Write ``data`` under a new name, atomically; returns the name."""
        name = f"{uuid.uuid4().hex}.ogg"
        write_atomically(self.folder(platform) / name, data)
        return name

    def path(self, platform: str, name: str) -> Path | None:
        """The file called ``name``, if the name is one of ours and the file exists."""
        if not NAME.match(name):
            return None
        for folder in (self.folder(platform), self._legacy(platform)):
            if folder is not None and (folder / name).is_file():
                return folder / name
        return None

    def delete(self, platform: str, names: Iterable[str | None]) -> int:
        deleted = 0
        for name in names:
            path = self.path(platform, name) if name else None
            if path is not None:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted

    def forget(self, platform: str, exchange_id: int, reply_message_id: str | None) -> int:
        """Delete the audio of one forgotten exchange; returns how many files went."""
        deleted = self.delete(platform, [reply_message_id])
        if platform == "cli":
            # Before this layout `chatman ask` wrote data_dir/replies/reply-<exchange id>.ogg.
            old = self.root / f"reply-{exchange_id}.ogg"
            if old.is_file():
                old.unlink(missing_ok=True)
                deleted += 1
        return deleted


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds all of ``data`` or does not exist (disk full leaves nothing behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
