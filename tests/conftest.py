"""Shared fixtures. Tests never touch the network: the hub is forced offline for the session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub read it

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ctc_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random CTC checkpoints (hubert, data2vec-audio, sew-d) saved with save_pretrained."""
    from tiny_models import CTC_ARCHS, build_tiny_ctc

    root = tmp_path_factory.mktemp("tiny_ctc")
    return {arch: build_tiny_ctc(arch, root / arch) for arch in CTC_ARCHS}


@pytest.fixture(scope="session")
def tiny_non_ctc_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HuBERT checkpoints without a CTC head: "base" (HubertModel) and "classifier"."""
    from tiny_models import build_tiny_non_ctc

    root = tmp_path_factory.mktemp("tiny_non_ctc")
    return {kind: build_tiny_non_ctc(kind, root / kind) for kind in ("base", "classifier")}


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure HF_HUB_OFFLINE is set for this test even if another test changed it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def long_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """assets/sample.wav four times (~35 s): a live run still speaking when a test stops it."""
    import numpy as np
    import soundfile as sf

    root = Path(__file__).resolve().parent.parent
    audio, rate = sf.read(str(root / "assets" / "sample.wav"), dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    sf.write(str(path), np.tile(audio, 4), rate)
    return path
