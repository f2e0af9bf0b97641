#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Harken uses, where this machine allows it:
#   libportaudio2  microphone capture (sounddevice)     libsndfile1  audio files (soundfile)
#   mosquitto(-clients)  MQTT broker (--mqtt embedded, tests), mosquitto_sub/_pub for the README
#   espeak-ng, sox  test audio, assets/
#   tmux, openssl  terminal and TLS certificates for the TUI and MQTT tests
# Elsewhere it prints what to install and carries on: file input works without PortAudio.
set -u
pkgs="libportaudio2 libsndfile1 mosquitto mosquitto-clients espeak-ng sox tmux openssl"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: install these system packages yourself:$missing (macOS: brew install portaudio mosquitto espeak-ng sox)" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "note: not root and no password-less sudo; run: sudo apt-get install$missing" >&2
    exit 0
  fi
fi
echo "installing system packages:$missing" >&2
$sudo apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null \
  || echo "note: apt-get could not install:$missing (the tests that need them will skip and say why)" >&2
exit 0
