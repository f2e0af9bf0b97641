#!/usr/bin/env bash
# Regenerates assets/sample.wav (16 kHz mono, 16-bit) and assets/sample.txt with espeak-ng and
# sox (Debian: apt-get install espeak-ng sox). Two sentences with a pause between them, so the
# voice activity detector sees two segments.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
one="The quick brown fox jumps over the lazy dog."
two="Harken turns speech into live captions."
espeak-ng -v en-us -s 150 -w "$tmp/1.wav" "$one"
espeak-ng -v en-us -s 150 -w "$tmp/2.wav" "$two"
sox -n -r 22050 -c 1 "$tmp/silence.wav" trim 0 1.2
sox -n -r 22050 -c 1 "$tmp/lead.wav" trim 0 0.5
sox "$tmp/lead.wav" "$tmp/1.wav" "$tmp/silence.wav" "$tmp/2.wav" "$tmp/lead.wav" \
    -r 16000 -c 1 -b 16 sample.wav
printf '%s\n%s\n' "$one" "$two" > sample.txt
