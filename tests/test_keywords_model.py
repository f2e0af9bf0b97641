"""The keyword spotter through the real loading path (tiny random SEW-D, real label config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import speechlike_audio
from tiny_task_models import build_tiny_keyword_model

from harken.app.bench.architectures import SPEECH_COMMANDS_LABELS
from harken.models.errors import KeywordError, ModelNotFoundError, UnsupportedModelError
from harken.models.keywords import KeywordSpotter, resolve_keywords


@pytest.fixture(scope="module")
def spotter(tmp_path_factory: pytest.TempPathFactory) -> KeywordSpotter:
    folder = build_tiny_keyword_model(tmp_path_factory.mktemp("kw") / "sew-d")
    return KeywordSpotter.from_pretrained(str(folder), device="cpu", precision="fp32")


def test_labels_come_from_the_checkpoint_config(spotter: KeywordSpotter) -> None:
    assert spotter.labels == SPEECH_COMMANDS_LABELS
    # Background classes are scored but are not keywords.
    assert spotter.keywords == SPEECH_COMMANDS_LABELS[:10]
    assert type(spotter.model).__name__ == "SEWDForSequenceClassification"


def test_one_batched_forward_pass_equals_window_by_window(spotter: KeywordSpotter) -> None:
    windows = [speechlike_audio(1.0, seed=i) for i in range(4)]
    batched = spotter.encode(windows)
    single = [spotter.encode([w])[0] for w in windows]
    assert len(batched) == 4
    for b, s in zip(batched, single, strict=True):
        assert b.shape == (len(SPEECH_COMMANDS_LABELS),)
        assert b.dtype == np.float32
        assert b.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(b, s, atol=1e-5)
    # Different audio, different scores: the model does look at the window.
    assert np.abs(batched[0] - batched[1]).max() > 1e-4
    with pytest.raises(ValueError, match="equal lengths"):
        spotter.encode([windows[0], windows[1][:8000]])


def test_requested_keywords_are_checked_against_the_labels() -> None:
    labels = SPEECH_COMMANDS_LABELS
    assert resolve_keywords([], labels) == labels[:10]
    assert resolve_keywords(["Stop", "yes", "stop"], labels) == ("stop", "yes")
    with pytest.raises(KeywordError, match=r"cannot spot 'banana'.*yes, no, up"):
        resolve_keywords(["banana"], labels)
    with pytest.raises(KeywordError, match="background class"):
        resolve_keywords(["_silence_"], labels)


def test_a_classifier_without_label_names_is_refused(
        tiny_non_ctc_dirs: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedModelError, match="no label names"):
        KeywordSpotter.from_pretrained(str(tiny_non_ctc_dirs["classifier"]), device="cpu")


def test_a_ctc_checkpoint_is_not_a_keyword_model(tiny_ctc_dirs: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedModelError, match="SEWDForCTC"):
        KeywordSpotter.from_pretrained(str(tiny_ctc_dirs["sew-d"]), device="cpu")


def test_a_missing_model_names_the_fix(tmp_path: Path, hub_offline: None) -> None:
    with pytest.raises(ModelNotFoundError, match="--keywords-model"):
        KeywordSpotter.from_pretrained(str(tmp_path / "nope"), device="cpu")
