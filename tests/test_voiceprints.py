"""The voiceprint store: round trip, privacy, model guard, concurrency; enrollment refusals."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_speaker_models import voice

from harken.app.clips import clip_vad, require_speech, speech_only
from harken.app.voiceprints import (
    ModelMismatchError,
    UnknownSpeakerError,
    VoiceprintError,
    VoiceprintStore,
)
from harken.engine.vad import VadOptions
from harken.models.audio import SAMPLE_RATE
from harken.models.clustering import l2_normalize
from harken.models.errors import NotEnoughSpeechError

MODEL = "microsoft/unispeech-sat-base-plus-sv"


def unit(seed: int, dim: int = 8) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal(dim))


def test_round_trip_and_incremental_enrollment(tmp_path: Path) -> None:
    store = VoiceprintStore(path=tmp_path / "vp.sqlite")
    a, b, c = unit(1), unit(2), unit(3)
    vp, action = store.enroll(" Ann ", model_id=MODEL, embeddings=np.stack([a, b]),
                              speech_s=12.5)
    assert action == "created"
    assert vp.name == "Ann"
    got = store.get("Ann")
    assert (got.model_id, got.clips, got.speech_s) == (MODEL, 2, 12.5)
    np.testing.assert_allclose(got.embedding, (a + b) / 2, atol=1e-6)
    assert got.embedding.dtype == np.float32
    # A third clip: the voiceprint becomes the mean of all three unit embeddings.
    vp, action = store.enroll("Ann", model_id=MODEL, embeddings=c[None], speech_s=4.0)
    assert action == "updated"
    assert (vp.clips, vp.speech_s, vp.created) == (3, 16.5, got.created)
    np.testing.assert_allclose(store.get("Ann").embedding, (a + b + c) / 3, atol=1e-6)
    vp, action = store.enroll("Ann", model_id=MODEL, embeddings=c[None], speech_s=3.0,
                              replace=True)
    assert (action, vp.clips) == ("replaced", 1)
    store.enroll("Bob", model_id=MODEL, embeddings=a[None], speech_s=2.0)
    assert [v.name for v in store.entries()] == ["Ann", "Bob"]
    store.remove("Ann")
    assert [v.name for v in store.entries()] == ["Bob"]
    with pytest.raises(UnknownSpeakerError, match="speakers list"):
        store.remove("Ann")
    with pytest.raises(UnknownSpeakerError, match="enroll"):
        store.get("Ann")


def test_the_store_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "vp.sqlite"
    VoiceprintStore(path=path).enroll("Ann", model_id=MODEL, embeddings=unit(1)[None],
                                      speech_s=2.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A store found world-readable (copied, restored from a backup...) is tightened.
    os.chmod(path, 0o644)
    VoiceprintStore(path=path).entries()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # So is its folder, at every open (not only when Harken made it).
    os.chmod(path.parent, 0o755)
    VoiceprintStore(path=path).entries()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A shared sticky folder (like /tmp) is left as it is; the file is still private.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o1777)
    VoiceprintStore(path=shared / "vp.sqlite").entries()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "vp.sqlite").stat().st_mode) == 0o600


def test_voiceprints_of_another_model_are_never_compared(tmp_path: Path) -> None:
    store = VoiceprintStore(path=tmp_path / "vp.sqlite")
    store.enroll("Ann", model_id="old/model", embeddings=unit(1, 4)[None], speech_s=2.0)
    store.enroll("Bob", model_id=MODEL, embeddings=unit(2)[None], speech_s=2.0)
    with pytest.raises(ModelMismatchError, match=r"[Rr]e-enroll") as err:
        store.get("Ann", model_id=MODEL)
    assert "old/model" in str(err.value)
    usable, other = store.for_model(MODEL)
    assert ([v.name for v in usable], [v.name for v in other]) == (["Bob"], ["Ann"])
    # Enrolling again with the current model starts Ann's voiceprint afresh.
    vp, action = store.enroll("Ann", model_id=MODEL, embeddings=unit(3)[None], speech_s=2.0)
    assert (action, vp.clips, vp.embedding.shape) == ("replaced", 1, (8,))


@pytest.mark.parametrize("name", ["", "   ", "S2", "a\nb", "x" * 65])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(VoiceprintError, match=r"name|label"):
        VoiceprintStore(path=tmp_path / "vp.sqlite").enroll(
            name, model_id=MODEL, embeddings=unit(1)[None], speech_s=2.0)


ENROLL_MANY = """
import sys
from pathlib import Path
import numpy as np
from harken.app.voiceprints import VoiceprintStore
path, worker, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = VoiceprintStore(path=path)
for i in range(rounds):
    v = np.random.default_rng(worker * 1000 + i).standard_normal(8)
    store.enroll("shared", model_id=sys.argv[4], embeddings=v[None], speech_s=1.0)
    store.enroll(f"own-{worker}-{i}", model_id=sys.argv[4], embeddings=v[None], speech_s=1.0)
"""


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "vp.sqlite"
    rounds = 25
    procs = [subprocess.Popen([sys.executable, "-c", ENROLL_MANY, str(path), str(w),
                               str(rounds), MODEL], stderr=subprocess.PIPE, text=True)
             for w in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = VoiceprintStore(path=path)
    shared = store.get("shared")
    assert shared.clips == 2 * rounds  # every read-modify-write kept the other's update
    assert shared.speech_s == pytest.approx(2 * rounds)
    assert len(store.entries()) == 1 + 2 * rounds
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_enrollment_refuses_silence_and_too_little_speech() -> None:
    # The synthetic voice is a harmonic buzz: speech to webrtcvad, not to silero-vad.
    vad = clip_vad(VadOptions(engine="webrtc"))
    silence = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    with pytest.raises(NotEnoughSpeechError, match="no speech"):
        require_speech(speech_only(silence, vad), what="silence.wav")
    short = np.concatenate([silence, voice(0.4, pitch_hz=150), silence])
    speech = speech_only(short, vad)
    assert 0 < len(speech) < SAMPLE_RATE
    with pytest.raises(NotEnoughSpeechError, match=r"only 0\.\d\d s of speech.*at least 1 s"):
        require_speech(speech, what="short.wav")
    long = np.concatenate([silence, voice(2.0, pitch_hz=150), silence])
    speech = speech_only(long, vad)
    require_speech(speech, what="long.wav")
    # Only the speech is kept (with 0.2 s of margins), not the silence around it.
    assert 2.0 <= len(speech) / SAMPLE_RATE < 2.4
