"""Silero VAD (the `silero-vad` package's network and weights, MIT): speech probability per chunk.

Streaming use: one `SileroStream` per audio stream scores consecutive 512-sample chunks
(32 ms at 16 kHz) and carries the network's LSTM state and 64-sample context between calls,
as the network was trained to run. The network is the package's ONNX export run with
onnxruntime on one thread: on a 2-core CPU a chunk costs ~70 µs there against ~250 µs for
the package's TorchScript model through torch (docs/vad.md), and the outputs agree to 1e-5.

The package's Python module is not imported, only its data folder is located: importing
it sets torch's global thread count to 1, which would slow every other model in the process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import ModelError, ModelNotFoundError

CHUNK_SAMPLES = 512  # samples per call at 16 kHz (32 ms): the only size the network takes
CONTEXT_SAMPLES = 64  # samples of the previous chunk prepended to each chunk
STATE_SHAPE = (2, 1, 128)  # LSTM (h, c) x batch x units
MODEL_FILE = "silero_vad.onnx"  # in the package's data folder (opset 16, 8 and 16 kHz)
_INSTALL_HINT = "pip install silero-vad onnxruntime, or set vad.engine = webrtc (--vad-engine)"

Float32Array = npt.NDArray[np.float32]


class SileroVad:
    """The loaded network. It keeps no per-stream state, so streams can share it."""

    def __init__(self, *, session: Any) -> None:
        self._session = session

    def stream(self) -> SileroStream:
        return SileroStream(session=self._session)


class SileroStream:
    """Speech probability of consecutive CHUNK_SAMPLES chunks of one stream."""

    chunk_samples = CHUNK_SAMPLES

    def __init__(self, *, session: Any) -> None:
        self._session = session
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._input = np.zeros((1, CONTEXT_SAMPLES + CHUNK_SAMPLES), dtype=np.float32)

    def __call__(self, chunk: Float32Array) -> float:
        if chunk.shape != (CHUNK_SAMPLES,):
            raise ValueError(f"silero-vad takes {CHUNK_SAMPLES} samples, got {chunk.shape}")
        # The input row is [context | chunk]; the context is the previous chunk's tail.
        self._input[0, :CONTEXT_SAMPLES] = self._input[0, -CONTEXT_SAMPLES:]
        self._input[0, CONTEXT_SAMPLES:] = chunk
        out, self._state = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate})
        return float(out[0, 0])


def silero_model_path() -> Path:
    """The ONNX file the `silero-vad` package ships (found without importing the package)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"the silero-vad package is not installed: {_INSTALL_HINT}")
    path = Path(spec.origin).parent / "data" / MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"silero-vad is installed but has no {MODEL_FILE} ({path}): reinstall it "
            f"(pip install --force-reinstall silero-vad)")
    return path


@functools.cache
def load_silero_vad(path: Path | None = None) -> SileroVad:
    """Load the network once per process (the session is shared by every stream)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelNotFoundError(f"silero-vad needs onnxruntime: {_INSTALL_HINT}") from exc
    file = path if path is not None else silero_model_path()
    opts = onnxruntime.SessionOptions()
    # One thread: a chunk is ~0.7 MFLOP, so thread hand-offs would cost more than they save.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no optimizer chatter on stderr
    try:
        session = onnxruntime.InferenceSession(
            str(file), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise ModelError(f"cannot load the silero-vad model {file}: {exc}") from exc
    return SileroVad(session=session)
