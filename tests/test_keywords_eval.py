"""`harken eval keywords`: accuracy per label, confusion matrix, false accepts per hour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import speechlike_audio
from tiny_task_models import build_tiny_keyword_model

from harken.app.cli import main
from harken.app.config import HarkenConfig
from harken.app.eval.keywords import evaluate, fit_window
from harken.models.audio import SAMPLE_RATE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "audio" / "keywords"


@pytest.fixture(scope="module")
def yes_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_keyword_model(tmp_path_factory.mktemp("kw") / "yes", favour="yes")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("commands")
    clips = {"yes": 3, "no": 2, "_silence_": 1, "banana": 1}
    for label, count in clips.items():
        (root / label).mkdir()
        for i in range(count):
            audio = np.zeros(SAMPLE_RATE, np.float32) if label == "_silence_" \
                else speechlike_audio(0.9, seed=i)
            sf.write(str(root / label / f"{i}.wav"), audio, SAMPLE_RATE)
    return root


@pytest.fixture(scope="module")
def negatives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(2)
    parts = []
    for i in range(2):
        parts += [(1e-3 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32),
                  speechlike_audio(0.8, seed=20 + i)]
    parts.append(np.zeros(2 * SAMPLE_RATE, np.float32))
    path = tmp_path_factory.mktemp("neg") / "talk.wav"
    sf.write(str(path), np.concatenate(parts), SAMPLE_RATE, subtype="FLOAT")
    return path


async def test_accuracy_and_confusion_are_counted_per_label(yes_model: Path, dataset: Path,
                                                            negatives: Path) -> None:
    config = HarkenConfig.model_validate({"keywords": {"model": str(yes_model)},
                                          "compute": {"device_type": "cpu"}})
    result = await evaluate(config, dataset, negatives=[negatives])
    # The model says "yes" to everything: exactly the yes clips are right.
    assert result["clips"] == 6
    assert result["ignored_folders"] == ["banana"]
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["per_label"]["yes"] == {"clips": 3, "accuracy": 1.0}
    assert result["per_label"]["no"] == {"clips": 2, "accuracy": 0.0}
    labels = result["labels"]
    matrix = np.array(result["confusion"])
    assert matrix.sum() == 6
    assert matrix[labels.index("no"), labels.index("yes")] == 2
    assert matrix[labels.index("_silence_"), labels.index("yes")] == 1
    # Negatives: two bursts of speech, each fires "yes" once through the streaming path.
    neg = result["negatives"]
    seconds = sf.info(str(negatives)).duration
    assert neg["false_accepts"] == 2
    assert neg["seconds"] == pytest.approx(seconds, abs=0.01)
    assert neg["false_accepts_per_hour"] == pytest.approx(2 / (seconds / 3600), rel=1e-3)
    assert [h["keyword"] for h in neg["hits"]] == ["yes", "yes"]


def test_clips_are_centred_in_the_window() -> None:
    short = np.ones(4000, np.float32)
    fitted = fit_window(short, 16000)
    assert fitted.shape == (16000,)
    assert fitted[6000:10000].all()
    assert not fitted[:6000].any()
    long = np.arange(20000, dtype=np.float32)
    assert fit_window(long, 16000)[0] == 2000


def test_cli_prints_json_and_names_a_bad_folder(yes_model: Path, dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "keywords", str(dataset), "--keywords-model", str(yes_model),
                 "--device-type", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == 6
    assert "negatives" not in result
    assert main(["eval", "keywords", str(tmp_path / "missing"), "--keywords-model",
                 str(yes_model)]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "speech_commands_v2").is_dir(),
                    reason="../shared/audio/keywords (real Speech Commands clips) is absent")
async def test_real_speech_commands_clips(yes_model: Path) -> None:
    folder = SHARED / "speech_commands_v2"
    config = HarkenConfig.model_validate({"keywords": {"model": str(yes_model)},
                                          "compute": {"device_type": "cpu"}})
    result = await evaluate(config, folder)
    wavs = list(folder.glob("*/*.wav"))
    assert result["clips"] == len(wavs)
    assert result["ignored_folders"] == []
    assert sum(map(sum, result["confusion"])) == len(wavs)
    yes_clips = len(list(folder.glob("yes/*.wav")))
    assert result["accuracy"] == pytest.approx(round(yes_clips / len(wavs), 4))
