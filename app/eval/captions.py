"""`harken eval captions DIR|MANIFEST [--refine-model ID|DIR] [--json]`: WER and CER.

Every audio file with a reference transcript goes through the real streaming path (file
source, VAD, caption stage, refine stage when a refine model is given). Scored, against the
reference, with the normaliser of models/scoring.py (corpus WER/CER: summed edits over summed
reference words/characters):

- `ctc_streaming`: the CTC finals as the live captions print them;
- `ctc_segment`: each VAD segment decoded by the CTC model in one forward pass (what the
  streaming finals approximate with bounded context);
- `refined`: the text that stands after refinement (refined, or the CTC text where the guard
  rejected it or it failed);
- `refine_offline`: the refine model on each whole file (split at its window only), which
  tells whether cutting speech into VAD segments costs the second pass accuracy.

`--captions-model hubert-base|hubert-large` runs that architecture with random weights (no
trained CTC checkpoint needed): its WER is meaningless, but latency and the refined WER are
real, and the guard (which compares with the CTC text) should then be off (`--no-guard`).

Latency (paced runs only): the CTC final and the refined final, seconds after the audio of
the end of speech reached the engine (p50, p95 over segments). Audio is fed in real time by
default, as a live source would; `--fast` feeds it as fast as it decodes (no latency).

Layouts found under DIR (recursively): LibriSpeech `*.trans.txt` (`ID TEXT` lines beside
`ID.flac`), LJ Speech `metadata.csv` (`ID|text|normalised text` beside `ID.wav`; the
normalised text is the reference), and a `NAME.txt` beside `NAME.wav|.flac|.ogg|.mp3`. A
MANIFEST file lists `AUDIO<TAB>REFERENCE` per line (paths relative to the manifest).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harken.app.bench.architectures import RANDOM_CTC_ARCHS, random_ctc
from harken.app.config import HarkenConfig
from harken.app.eval.keywords import read_audio
from harken.app.session import engine_options, thread_budget
from harken.app.tasks.captions import caption_stages
from harken.app.tasks.refine import load_refiner, refine_stages, with_refine_resolved
from harken.engine.events import CaptionFinal, CaptionRefined, Event
from harken.engine.pipeline import Engine
from harken.engine.sources.file import FileSource
from harken.engine.stages.refine import RefineStage
from harken.engine.stages.translation import GenerationWorker
from harken.engine.threads import CoreShare
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.errors import HarkenError
from harken.models.geometry import normalize_window, segment_stats
from harken.models.refine import SpeechRefiner
from harken.models.scoring import ErrorRate, char_errors, normalize_text, word_errors

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
SYSTEMS = ("ctc_streaming", "ctc_segment", "refined", "refine_offline")


@dataclass(frozen=True, slots=True)
class Utterance:
    path: Path
    reference: str


def _audio_beside(folder: Path, stem: str) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / "wavs" / f"{stem}{suffix}"):
            if candidate.is_file():
                return candidate
    return None


def _from_manifest(manifest: Path) -> list[Utterance]:
    if manifest.suffix.lower() in AUDIO_SUFFIXES:
        raise HarkenError(f"{manifest} is an audio file; give a folder of audio files with "
                          "their transcripts, or a manifest of AUDIO<TAB>REFERENCE lines")
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise HarkenError(f"{manifest} is not a readable text manifest ({exc}); give a folder, "
                          "or a UTF-8 file of AUDIO<TAB>REFERENCE lines") from exc
    out: list[Utterance] = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        audio, sep, text = line.partition("\t")
        if not sep:
            raise HarkenError(f"{manifest}:{n}: expected AUDIO<TAB>REFERENCE; fix the line")
        path = (manifest.parent / audio.strip()).resolve()
        if not path.is_file():
            raise HarkenError(f"{manifest}:{n}: audio file {path} does not exist")
        out.append(Utterance(path=path, reference=text.strip()))
    return out


def find_utterances(path: Path) -> list[Utterance]:
    """Audio files with their reference transcripts (see the module docstring)."""
    if path.is_file():
        found = _from_manifest(path)
    elif path.is_dir():
        found = []
        taken: set[Path] = set()
        for trans in sorted(path.rglob("*.trans.txt")):
            for line in trans.read_text(encoding="utf-8").splitlines():
                uid, _, text = line.strip().partition(" ")
                audio = _audio_beside(trans.parent, uid) if uid else None
                if audio is not None and audio not in taken:
                    taken.add(audio)
                    found.append(Utterance(path=audio, reference=text.strip()))
        for meta in sorted(path.rglob("metadata.csv")):
            for line in meta.read_text(encoding="utf-8").splitlines():
                fields = line.split("|")
                audio = _audio_beside(meta.parent, fields[0]) if len(fields) >= 2 else None
                if audio is not None and audio not in taken:
                    taken.add(audio)
                    found.append(Utterance(path=audio, reference=fields[-1].strip()))
        for text_file in sorted(path.rglob("*.txt")):
            if text_file.name.endswith(".trans.txt"):
                continue
            audio = _audio_beside(text_file.parent, text_file.stem)
            if audio is not None and audio not in taken:
                taken.add(audio)
                found.append(Utterance(path=audio,
                                       reference=text_file.read_text(encoding="utf-8").strip()))
        found.sort(key=lambda u: str(u.path))
    else:
        raise HarkenError(f"{path} does not exist; give a folder of audio with transcripts or "
                          "a manifest (AUDIO<TAB>REFERENCE per line)")
    if not found:
        raise HarkenError(f"no audio with a reference transcript under {path}; expected "
                          "LibriSpeech *.trans.txt, LJ Speech metadata.csv or NAME.txt beside "
                          "NAME.wav (or a manifest: AUDIO<TAB>REFERENCE per line)")
    return found


def load_captioner(config: HarkenConfig) -> CtcCaptioner:
    """The configured CTC model; `hubert-base`/`hubert-large` stand for that architecture
    with random weights, for measuring latency and the second pass where no trained CTC
    checkpoint can be downloaded (its own WER is then meaningless: say so)."""
    c = config
    if c.captions.model in RANDOM_CTC_ARCHS:
        return random_ctc(c.captions.model, device=c.compute.device_type, dtype=c.compute.dtype)
    return CtcCaptioner.from_pretrained(c.captions.model, device=c.compute.device_type,
                                        dtype=c.compute.dtype)


@dataclass
class _Finals:
    name: str = "eval"
    finals: list[CaptionFinal] = field(default_factory=list)
    refined: dict[int, CaptionRefined] = field(default_factory=dict)

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            if isinstance(event, CaptionFinal):
                self.finals.append(event)
            elif isinstance(event, CaptionRefined):
                self.refined[event.segment] = event


def segment_decode(captioner: CtcCaptioner, audio: np.ndarray,
                   finals: Sequence[CaptionFinal]) -> str:
    """Each final's segment decoded in one forward pass (the streaming path's reference)."""
    texts: list[str] = []
    for final in finals:
        piece = audio[round(final.start * SAMPLE_RATE): round(final.end * SAMPLE_RATE)]
        if captioner.normalize and len(piece):
            mean, std = segment_stats(piece)
            piece = normalize_window(piece, mean=mean, std=std)
        logprobs = captioner.encode([piece])[0]
        texts.append(captioner.decode(logprobs, start_s=final.start).text)
    return " ".join(t for t in texts if t.strip())


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p95_s": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50_s": round(float(np.percentile(arr, 50)), 3),
            "p95_s": round(float(np.percentile(arr, 95)), 3), "n": len(values)}


def _rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    w = ErrorRate(errors=0, reference=0)
    c = ErrorRate(errors=0, reference=0)
    for ref, hyp in zip(refs, hyps, strict=True):
        w += word_errors(ref, hyp)
        c += char_errors(ref, hyp)
    return {"wer": None if w.rate is None else round(w.rate, 4),
            "cer": None if c.rate is None else round(c.rate, 4),
            "words": w.reference, "word_errors": w.errors}


async def evaluate(config: HarkenConfig, path: Path, *, realtime: bool = True,
                   captioner: CtcCaptioner | None = None,
                   refiner: SpeechRefiner | None = None) -> dict[str, Any]:
    """The report as a dict (the `--json` output)."""
    utterances = find_utterances(path)
    c = config = with_refine_resolved(config)
    if captioner is None:
        captioner = await asyncio.to_thread(load_captioner, c)
    if refiner is None and c.refine.model:
        refiner = await asyncio.to_thread(load_refiner, c)
    rows: list[dict[str, Any]] = []
    final_latency: list[float] = []
    split_latency: list[float] = []
    refine_latency: list[float] = []
    counters: dict[str, int] = {}
    generation: dict[str, Any] = {}
    started = time.perf_counter()
    # The threads `harken run` gives the two workers (engine/threads.py): left to torch,
    # both would take every core and the latency measured would be a run's that never is.
    budget = thread_budget(c, device_type=captioner.device.type)
    share = CoreShare(budget=budget) if budget.lend else None
    async with InferenceWorker(name=str(captioner.device), max_batch=c.compute.max_batch,
                               threads=budget.inference, share=share) as worker, \
            GenerationWorker(name="refine", threads=budget.generation,
                             nice=budget.generation_nice, share=share) as generator:
        for i, utt in enumerate(utterances):
            factories = [caption_stages(config, captioner)]
            if refiner is not None:
                factories.append(refine_stages(config, refiner, captioner, generator))
            sink = _Finals()
            engine = Engine(sources=[FileSource(path=utt.path, stream_id=f"u{i}",
                                                realtime=realtime)],
                            worker=worker, stages=factories,
                            options=engine_options(config, live=realtime))
            sub = engine.subscribe(sink.name)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sink.consume(sub), name="eval-finals")
                await engine.run()
            audio = await read_audio(utt.path)
            row: dict[str, Any] = {
                "file": str(utt.path), "seconds": round(len(audio) / SAMPLE_RATE, 2),
                "reference": utt.reference, "segments": len(sink.finals),
                "ctc_streaming": " ".join(f.text for f in sink.finals if f.text.strip()),
                "ctc_segment": await asyncio.to_thread(segment_decode, captioner, audio,
                                                       sink.finals),
            }
            if refiner is not None:
                row["refined"] = " ".join(
                    r.text for f in sink.finals
                    if (r := sink.refined.get(f.segment)) is not None and r.text.strip())
                row["refine_verdicts"] = [sink.refined[f.segment].reason
                                          for f in sink.finals if f.segment in sink.refined]
                row["refine_offline"] = (await asyncio.to_thread(refiner.refine, audio)).text
            rows.append(row)
            for state in engine.streams.values():
                final_latency += state.final_latency.samples()
                split_latency += state.split_final_latency.samples()
                for refine in (s for s in state.stages if isinstance(s, RefineStage)):
                    refine_latency += refine.latency.samples()
                    for key, value in refine.counters().items():
                        counters[key] = counters.get(key, 0) + value
        generation = {"calls": generator.calls, "busy_s": round(generator.busy_s, 2),
                      "cpu_s": round(generator.cpu_s, 2)}
    refs = [r["reference"] for r in rows]
    systems = {name: _rates(refs, [r[name] for r in rows]) for name in SYSTEMS
               if all(name in r for r in rows)}
    result: dict[str, Any] = {
        "path": str(path), "files": len(rows),
        "audio_s": round(sum(r["seconds"] for r in rows), 2),
        "wall_s": round(time.perf_counter() - started, 2),
        "captions_model": captioner.model_id,
        "refine_model": refiner.model_id if refiner is not None else None,
        "guard": c.refine.guard if refiner is not None else None,
        "realtime": realtime, "normaliser": "models/scoring.py normalize_text",
        "systems": systems, "counters": counters,
        # The two workers' torch threads, and the refine model's time on its thread: wall
        # (busy_s) and CPU (cpu_s, the generation thread's own CPU time) over its calls.
        "threads": {"inference": budget.inference, "generation": budget.generation,
                    "generation_nice": budget.generation_nice, "lend": budget.lend},
        "generation": generation if refiner is not None else None,
        # CTC finals after a pause; a VAD split's are decided up to split_search_s after
        # their split point, so they are apart. Refined finals: every segment.
        "latency": ({"ctc_final": _percentiles(final_latency),
                     "ctc_split_final": _percentiles(split_latency),
                     "refined_final": _percentiles(refine_latency)} if realtime else None),
        "utterances": [{**r, **{f"{k}_norm": normalize_text(r[k]) for k in SYSTEMS if k in r}}
                       for r in rows],
    }
    return result


def print_report(result: dict[str, Any], out: Any = sys.stdout) -> None:
    print(f"{result['files']} files, {result['audio_s']:.1f} s of audio, "
          f"{'real-time' if result['realtime'] else 'as fast as it decodes'}, "
          f"{result['wall_s']:.1f} s wall", file=out)
    print(f"captions model {result['captions_model']}; refine model "
          f"{result['refine_model'] or 'none'}"
          + ("" if result["guard"] is None else f" (guard {'on' if result['guard'] else 'off'})"),
          file=out)
    for name, row in result["systems"].items():
        wer, cer = row["wer"], row["cer"]
        print(f"  {name:<15} WER {'–' if wer is None else f'{wer:6.1%}'}  "
              f"CER {'–' if cer is None else f'{cer:6.1%}'}  ({row['words']} words)", file=out)
    if result["latency"] is not None:
        for name, lat in result["latency"].items():
            if lat["n"]:
                print(f"  latency {name:<14} p50 {lat['p50_s']:.2f} s  p95 {lat['p95_s']:.2f} s "
                      f"({lat['n']} segments)", file=out)
    if result["counters"]:
        print("  " + ", ".join(f"{k} {v}" for k, v in sorted(result["counters"].items())),
              file=out)
