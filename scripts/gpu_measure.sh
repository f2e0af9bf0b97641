#!/usr/bin/env bash
# Every GPU figure of docs/gpu.md in one device call (a lent CUDA machine, minutes of time).
#
# Carried with the call (ignored by git; `bash scripts/gpu_prepare.sh` makes them):
#   .whl/               wheels of the packages the device image lacks (docs/gpu.md says which)
#   .gpu/speech.wav     16 kHz speech (a copy of ../shared/audio/diarization/pyannote_sample)
#   .gpu/whisper-files/ config, generation config and processor of Whisper base (no weights)
# DRY=1 runs the same steps on the CPU with small sizes, to check the script for free;
# PARTS=streams,single,encode,refine picks steps (default: streams). At most 8 files come back from a call:
# log.txt, smi.csv, four streams_*.json, captions_1.json, micro.jsonl. Each bench streams run is also logged to
# log.txt as it ends, so a step stopped at its time limit keeps the runs it finished.
set -u
OUT=${OUT:-/tmp/harken-gpu-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export TOKENIZERS_PARALLELISM=false
DEV=cuda PY=python3 SECONDS_PER_STREAM=12
WEBRTC_N=${WEBRTC_N:-300,450} BOTH_N=${BOTH_N:-300} THREE_N=${THREE_N:-100,150} MICRO=()
# What the call must carry (scripts/gpu_prepare.sh makes it): fail in one line, not later.
missing=""
[ -f .gpu/speech.wav ] || missing+=" .gpu/speech.wav"
[ "${DRY:-0}" = 1 ] || compgen -G ".whl/*.whl" >/dev/null || missing+=" .whl/*.whl"
[[ ${PARTS:-streams} != *refine* ]] || [ -f .gpu/whisper-files/config.json ] \
    || missing+=" .gpu/whisper-files/config.json"
if [ -n "$missing" ]; then
    echo "gpu_measure: missing$missing; run bash scripts/gpu_prepare.sh here, then carry .whl and .gpu" \
        | tee -a "$LOG" >&2
    exit 2
fi
if [ "${DRY:-0}" = 1 ]; then
    DEV=cpu PY=.venv/bin/python SECONDS_PER_STREAM=10
    WEBRTC_N=2 BOTH_N=2 THREE_N=1 MICRO=(--dry-run)
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    mkdir -p /tmp/pkg/harken
    for root in app engine models; do ln -sfn "$PWD/$root" "/tmp/pkg/harken/$root"; done
    export PYTHONPATH=/tmp/pkg:/tmp/site
    # A missing package fails here in seconds, not inside a timed step.
    python3 -c "import harken.app.cli, harken.app.bench.streams" >>"$OUT/log.txt" 2>&1 \
        || { echo "gpu_measure: harken does not import; see log.txt"; exit 1; }
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
        --format=csv,noheader -l 1 >"$OUT/smi.csv" 2>&1 &
fi
{
    date -u; nproc; lscpu | grep -m1 "Model name"
    [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm \
        --format=csv
} >>"$LOG" 2>&1

step() {  # step NAME LIMIT_S OUTFILE COMMAND...
    local name=$1 limit=$2 file=$3; shift 3
    local t0=$SECONDS
    echo "== $name" >>"$LOG"
    timeout "$limit" "$@" >>"$OUT/$file" 2>>"$LOG"
    echo "== $name: rc=$? in $((SECONDS - t0)) s" | tee -a "$LOG"
}
HARKEN=("$PY" -m harken.app.cli)  # not a function: `timeout` runs programs only
AUDIO=(--audio .gpu/speech.wav)
STREAMS=(bench streams --model hubert-large --device-type "$DEV" --seconds
         "$SECONDS_PER_STREAM" "${AUDIO[@]}" --json)

# Streams only by default: the single-stream, encoder and refine figures were measured on
# 2026-11-29 (docs/gpu.md); a device call has 600 s at most, and these four take ~500.
PARTS=${PARTS:-streams}
if [[ $PARTS == *streams* ]]; then
    # The two targets first (docs/gpu.md "Not measured"): 300 caption streams with the
    # default VAD on a pool (a GPU host has cores to spare), 100 with three tasks; then the
    # ceiling with webrtc alone, and the default VAD on the event loop.
    step streams-both-pool 120 streams_both_pool.json "${HARKEN[@]}" "${STREAMS[@]}" \
        --vad-engine both --vad-threads 4 --streams "$BOTH_N"
    step streams-3tasks 150 streams_3tasks.json "${HARKEN[@]}" "${STREAMS[@]}" \
        --vad-engine webrtc --tasks captions,speakers,keywords --streams "$THREE_N"
    step streams-webrtc 150 streams_webrtc.json "${HARKEN[@]}" "${STREAMS[@]}" \
        --vad-engine webrtc --streams "$WEBRTC_N"
    step streams-both 80 streams_both.json "${HARKEN[@]}" "${STREAMS[@]}" \
        --vad-engine both --streams "$BOTH_N"
fi
if [[ $PARTS == *single* ]]; then
    step captions-1 60 captions_1.json "${HARKEN[@]}" bench captions --model hubert-large \
        --device-type "$DEV" --seconds 20 "${AUDIO[@]}" --json
fi
if [[ $PARTS == *encode* ]]; then
    step encode 100 micro.jsonl "$PY" scripts/gpu_measure.py encode "${AUDIO[@]}" \
        "${MICRO[@]}"
fi
if [[ $PARTS == *refine* ]]; then
    step refine 90 micro.jsonl "$PY" scripts/gpu_measure.py refine "${AUDIO[@]}" \
        "${MICRO[@]}" --whisper-files .gpu/whisper-files --work "$(mktemp -d)"
fi

"$PY" scripts/gpu_summary.py "$OUT"
