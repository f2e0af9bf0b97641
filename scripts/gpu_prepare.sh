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
# A Whisper base folder built by $SHARED/tools/trained-whisper-base/build.sh (its README):
# only its config and processor files travel, for the refine step's full-size random model.
WHISPER=${WHISPER:-$HOME/.cache/harken-dev/whisper-base}
PACKAGES=(
    aiomqtt paho-mqtt
    pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
    soundfile cffi pycparser soxr webrtcvad-wheels silero-vad
    textual rich markdown-it-py mdurl pygments linkify-it-py uc-micro-py mdit-py-plugins
    jiwer rapidfuzz click platformdirs tomlkit
)
WHISPER_FILES=(config.json generation_config.json processor_config.json tokenizer.json
               tokenizer_config.json)
fail() { echo "gpu_prepare: $*" >&2; exit 2; }
# Every input is checked before anything is removed or downloaded.
speech="$SHARED/audio/diarization/pyannote_sample/sample.wav"
[ -f "$speech" ] || fail "$speech is missing; set SHARED to the shared folder (its audio/README.md)"
for f in "${WHISPER_FILES[@]}"; do
    [ -f "$WHISPER/$f" ] || fail "$WHISPER/$f is missing; build the folder with $SHARED/tools/trained-whisper-base/build.sh (its README), or set WHISPER to one"
done
[ -x "$PIP" ] || fail "$PIP not found; run make setup first, or set PIP"
rm -rf .whl .gpu && mkdir -p .whl .gpu/whisper-files
"$PIP" download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$PY_VERSION" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "${PACKAGES[@]}" || fail "pip download failed (is the package registry reachable?)"
cp "$speech" .gpu/speech.wav
for f in "${WHISPER_FILES[@]}"; do cp "$WHISPER/$f" .gpu/whisper-files/; done
du -sh .whl .gpu
echo "gpu_prepare: carry .whl and .gpu (64 MiB at most in all)"
