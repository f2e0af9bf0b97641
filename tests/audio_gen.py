"""Generated test audio: espeak-ng speech, tones, noise, silence (16 kHz float32 unless told)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

SR = 16_000  # Hz
Audio = npt.NDArray[np.float32]

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
SPEECH_THRESHOLD = 0.01  # abs amplitude: where espeak's output counts as started/ended


def espeak(text: str, workdir: Path, *, name: str = "speech") -> Audio:
    """Synthesize `text` with espeak-ng and resample it to 16 kHz mono float32."""
    wav = workdir / f"{name}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=60)
    data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return np.asarray(soxr.resample(mono, rate, SR), dtype=np.float32)


def trim(x: Audio, threshold: float = SPEECH_THRESHOLD) -> Audio:
    """Cut espeak's leading/trailing near-silence so the speech extent is known exactly."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    return x[loud[0] : loud[-1] + 1].copy()


def silence(seconds: float) -> Audio:
    return np.zeros(round(seconds * SR), dtype=np.float32)


def noise(seconds: float, amplitude: float, *, seed: int = 0) -> Audio:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(round(seconds * SR))).astype(np.float32)


def tone(seconds: float, freq: float, amplitude: float, *, rate: int = SR) -> Audio:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x: Audio, rate: int = SR) -> float:
    """Frequency (Hz) of the strongest FFT bin, Hann-windowed."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)
