"""`harken speakers enroll | list | remove | verify` (docs/speakers.md)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from harken.app import flags
from harken.app.clips import (
    cut,
    read_audio,
    record,
    require_speech,
    session_turns,
    speech_only,
    vad_options,
)
from harken.app.config import HarkenConfig
from harken.app.tasks.speakers import load_embedder, store_of
from harken.app.tasks.thresholds import speaker_model_id, thresholds
from harken.app.voiceprints import check_name
from harken.models.audio import SAMPLE_RATE
from harken.models.clustering import cosine_similarity
from harken.models.errors import HarkenError

EXIT_REJECTED = 1  # `verify`: the voice is not NAME's


def _clips(args: argparse.Namespace, config: HarkenConfig) -> list[tuple[str, np.ndarray]]:
    """(what, speech) per enrollment clip, checked before any model loads."""
    vad = vad_options(config)
    if args.record is not None:
        if args.files or args.from_session:
            raise HarkenError("--record takes no FILE and no --from; enroll files separately")
        print(f"recording {args.record:.0f} s: speak now ...", file=sys.stderr, flush=True)
        raw = [("the recording", record(config, args.record))]
    elif args.from_session is not None:
        if args.speaker is None or len(args.files) != 1:
            raise HarkenError("--from SESSION.jsonl needs --speaker LABEL and the session's "
                              "audio FILE, e.g. `harken speakers enroll Ann talk.wav --from "
                              "talk.jsonl --speaker S2`")
        spans = session_turns(args.from_session, args.speaker)
        raw = [(f"{args.speaker}'s turns in {args.files[0]}",
                cut(read_audio(args.files[0]), spans))]
    else:
        if not args.files:
            raise HarkenError("give the audio FILE(s) to enroll from, or --record SECONDS")
        raw = [(str(path), read_audio(path)) for path in args.files]
    clips = []
    for what, samples in raw:
        speech = speech_only(samples, vad)
        require_speech(speech, what=what)
        clips.append((what, speech))
    return clips


def enroll(args: argparse.Namespace, config: HarkenConfig) -> int:
    name = check_name(args.name)
    clips = _clips(args, config)
    embedder = load_embedder(config)
    embeddings = embedder.embed([speech for _, speech in clips])
    speech_s = sum(len(speech) for _, speech in clips) / SAMPLE_RATE
    store = store_of(config)
    vp, action = store.enroll(name, model_id=embedder.model_id, embeddings=embeddings,
                              speech_s=speech_s, replace=args.replace)
    print(f"{action} {vp.name}: {len(clips)} clip(s) added, {vp.clips} in all, "
          f"{vp.speech_s:.1f} s of speech, model {vp.model_id}")
    print(f"store: {store.path}", file=sys.stderr)
    return 0


def list_speakers(args: argparse.Namespace, config: HarkenConfig) -> int:
    store = store_of(config)
    entries = store.entries() if store.path.exists() else []
    if not entries:
        print(f"nobody is enrolled yet (store: {store.path}); add someone with "
              "`harken speakers enroll NAME FILE...`", file=sys.stderr)
        return 0
    current = speaker_model_id(config)
    print(f"{'name':<20} {'clips':>5} {'speech':>8}  {'updated':<20}  model")
    for vp in entries:
        mark = "" if vp.model_id == current else "  (other model: re-enroll to use)"
        print(f"{vp.name:<20} {vp.clips:>5} {vp.speech_s:>7.1f}s  {vp.updated:<20}  "
              f"{vp.model_id}{mark}")
    return 0


def remove(args: argparse.Namespace, config: HarkenConfig) -> int:
    store_of(config).remove(args.name)
    print(f"removed {args.name.strip()}")
    return 0


def verify(args: argparse.Namespace, config: HarkenConfig) -> int:
    store = store_of(config)
    if not store.path.exists():
        raise HarkenError(f"nobody is enrolled yet (store: {store.path}); enroll "
                          f"{args.name!r} first with `harken speakers enroll`")
    vp = store.get(args.name, model_id=speaker_model_id(config))  # before loading the model
    speech = speech_only(read_audio(args.file), vad_options(config))
    require_speech(speech, what=str(args.file))
    embedder = load_embedder(config)
    score = cosine_similarity(embedder.embed([speech])[0], vp.embedding)
    threshold = thresholds(config)["threshold"].value
    same = score >= threshold
    decision = "same speaker (accept)" if same else "different speaker (reject)"
    print(f"{vp.name}: score {score:.4f}, threshold {threshold:.4f} -> {decision}")
    return 0 if same else EXIT_REJECTED


ACTIONS = {"enroll": enroll, "list": list_speakers, "remove": remove, "verify": verify}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.speakers_command](args, flags.load(args).config)
