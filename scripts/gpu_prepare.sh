#!/usr/bin/env bash
# Makes, on this machine, what scripts/gpu_measure.sh carries to a lent device, so that a
# session with a GPU spends its device minutes measuring (docs/gpu.md):
#   .whl/                  wheels (CPython 3.12, manylinux x86_64) of the packages the
#                          device image lacked last time; the image has torch, transformers,
#                          numpy, onnxruntime and scipy
#   .gpu/speech.wav        16 kHz conversation from ../shared/audio (never committed)
#   .gpu/whisper-files/    Whisper base config, generation config and processor, no weights
# Both folders are ignored by git; name them in the device call's `carry`.
# Then `DRY=1 bash scripts/gpu_measure.sh` checks the measurement steps here on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
SHARED=${SHARED:-../shared}
PIP=${PIP:-.venv/bin/pip}
PACKAGES=(
    aiomqtt paho-mqtt
    pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
    soundfile cffi pycparser soxr webrtcvad-wheels silero-vad
    textual rich markdown-it-py mdurl pygments linkify-it-py uc-micro-py mdit-py-plugins
    jiwer rapidfuzz click platformdirs tomlkit
)
rm -rf .whl && mkdir -p .whl .gpu
"$PIP" download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$PY_VERSION" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "${PACKAGES[@]}"
speech="$SHARED/audio/diarization/pyannote_sample/sample.wav"
[ -f "$speech" ] || { echo "gpu_prepare: $speech is missing; read $SHARED/audio/README.md" >&2; exit 2; }
cp "$speech" .gpu/speech.wav
whisper="$SHARED/tools/trained-whisper-base"
mkdir -p .gpu/whisper-files
for f in config.json generation_config.json processor_config.json tokenizer.json \
        tokenizer_config.json; do
    [ -f "$whisper/$f" ] && cp "$whisper/$f" .gpu/whisper-files/
done
du -sh .whl .gpu
echo "gpu_prepare: carry .whl and .gpu (64 MiB at most in all)"
