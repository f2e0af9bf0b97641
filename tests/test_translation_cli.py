"""`harken run --keywords ... --translate ...` end to end through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import build_tiny_ctc
from tiny_task_models import build_tiny_keyword_model, build_tiny_translation_model

from harken.app.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample.wav"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"captions": build_tiny_ctc("hubert", root / "ctc"),
            "keywords": build_tiny_keyword_model(root / "kw", favour="yes"),
            "translation": build_tiny_translation_model(root / "s2t")}


def _model_flags(models: dict[str, Path]) -> list[str]:
    return ["--captions-model", str(models["captions"]), "--keywords-model",
            str(models["keywords"]), "--translation-model", str(models["translation"]),
            "--device-type", "cpu"]


def test_run_emits_keywords_and_translations_and_writes_per_language_subtitles(
        models: dict[str, Path], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update({"HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": "/nonexistent",
                "HARKEN_TRANSLATION__MAX_NEW_TOKENS": "6"})
    proc = subprocess.run(
        [sys.executable, "-m", "harken.app.cli", "run", "--input", str(SAMPLE), "--fast",
         "--jsonl", "--keywords", "yes,stop:0.9", "--translate", "de,fr", "--out",
         str(tmp_path), "--format", "srt,jsonl", *_model_flags(models)],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    finals = [e for e in events if e["type"] == "caption_final"]
    keywords = [e for e in events if e["type"] == "keyword"]
    translations = [e for e in events if e["type"] == "translation"]
    assert finals
    assert keywords
    assert {k["keyword"] for k in keywords} == {"yes"}
    for k in keywords:
        assert set(k) >= {"keyword", "score", "start", "end", "segment", "stream", "model"}
        assert 0 <= k["start"] < k["end"]
    # Files: every segment, in both languages, with its caption's segment id and times.
    for lang in ("de", "fr"):
        mine = [t for t in translations if t["lang"] == lang]
        assert [(t["segment"], t["start"], t["end"]) for t in mine] == \
            [(f["segment"], f["start"], f["end"]) for f in finals]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sample.de.srt", "sample.fr.srt", "sample.jsonl", "sample.srt"]
    assert events[-1]["type"] == "stats"
    assert events[-1]["counters"]["translation_segments"] == len(finals)
    assert events[-1]["counters"]["keyword_hits"] == len(keywords)


def test_an_unsupported_language_lists_the_supported_ones(
        models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--input", str(SAMPLE), "--fast", "--jsonl", "--translate", "de,xx",
                 *_model_flags(models)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot translate into 'xx'" in err
    assert "de, en, es" in err


def test_an_unknown_keyword_lists_the_model_keywords(
        models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--input", str(SAMPLE), "--fast", "--jsonl", "--keywords", "banana",
                 *_model_flags(models)])
    assert code == 2
    assert "cannot spot 'banana'" in capsys.readouterr().err


def test_config_show_reports_task_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--json", "--keywords", "no,stop:0.95", "--translate",
                 "de"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["keywords.enabled"] == {"value": True, "from": "flag --keywords"}
    assert shown["keywords.words"]["value"] == ["no", "stop"]
    assert shown["keywords.thresholds.stop"]["value"] == 0.95
    assert shown["translation.languages"] == {"value": ["de"], "from": "flag --translate"}


def test_transcribe_loads_task_models_once_and_lists_every_file_written(
        models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from harken.app.tasks import translation

    loads: list[str] = []
    real = translation.load_translator

    def counting(model: str, device_type: str, dtype: str, precision: str) -> object:
        loads.append(model)
        return real(model, device_type, dtype, precision)

    monkeypatch.setattr("harken.app.tasks.translation.load_translator", counting)
    monkeypatch.setenv("HARKEN_TRANSLATION__MAX_NEW_TOKENS", "4")
    second = tmp_path / "again.wav"
    second.write_bytes(SAMPLE.read_bytes())
    out = tmp_path / "out"
    code = main(["transcribe", str(SAMPLE), str(second), "--out", str(out), "--format",
                 "srt,jsonl", "--translate", "de", "--no-progress", *_model_flags(models)])
    assert code == 0
    assert loads == [str(models["translation"])]  # once, for both files
    listed = sorted(Path(line).name for line in capsys.readouterr().out.split())
    assert listed == sorted(p.name for p in out.iterdir()) == [
        "again.de.srt", "again.jsonl", "again.srt", "sample.de.srt", "sample.jsonl",
        "sample.srt"]
