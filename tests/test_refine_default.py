"""refine.model = auto: a Whisper on CUDA, none on CPU; an automatic choice never fails a run."""

from __future__ import annotations

import logging

import pytest
import torch

from harken.app.config import HarkenConfig, RefineConfig
from harken.app.session import Session
from harken.app.tasks import refine
from harken.app.tasks.refine import GPU_DEFAULT_MODEL, chosen_model, with_refine_resolved


def test_auto_is_no_refinement_on_cpu_and_explicit_choices_stand() -> None:
    assert HarkenConfig().refine.model == "auto"
    assert chosen_model("auto", device_type="cpu") == ""
    for off in ("", "none", "off", " None "):
        assert chosen_model(off, device_type="cpu") == ""
    assert chosen_model("openai/whisper-base.en", device_type="cpu") == "openai/whisper-base.en"


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose device resolves to CUDA (nothing is loaded on it)."""
    monkeypatch.setattr(refine, "resolve_device", lambda device_type: torch.device("cuda"))


@pytest.mark.usefixtures("cuda")
def test_auto_on_cuda_picks_the_gpu_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refine, "is_cached", lambda model_id: True)
    assert chosen_model("AUTO", device_type="auto") == GPU_DEFAULT_MODEL
    resolved = with_refine_resolved(HarkenConfig())
    assert resolved.refine.model == GPU_DEFAULT_MODEL
    assert with_refine_resolved(resolved) is resolved  # idempotent
    assert chosen_model("none", device_type="auto") == ""


@pytest.mark.usefixtures("cuda")
def test_auto_offline_without_the_weights_turns_refinement_off_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(refine, "is_cached", lambda model_id: False)
    with caplog.at_level(logging.WARNING):
        resolved = with_refine_resolved(HarkenConfig())
    assert resolved.refine.model == ""
    [warning] = [r.getMessage() for r in caplog.records]
    assert "harken models pull" in warning
    assert GPU_DEFAULT_MODEL in warning
    # A model the user named is never dropped: its load error says what to do.
    named = HarkenConfig(refine=RefineConfig(model=GPU_DEFAULT_MODEL))
    assert with_refine_resolved(named).refine.model == GPU_DEFAULT_MODEL


def test_a_session_on_cpu_runs_without_refinement_by_default() -> None:
    session = Session(config=HarkenConfig(), sources=[], sinks=[], live=False)
    assert session.config.refine.model == ""


def test_refine_flags_without_a_refine_model_are_one_line_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from harken.app.cli import main

    sample = str(Path(__file__).resolve().parent.parent / "assets" / "sample.wav")
    assert main(["run", "--input", sample, "--fast", "--refine-language",
                 "de"]) == 2
    err = capsys.readouterr().err
    assert "--refine-language" in err
    assert "--refine-model" in err
    assert err.count("\n") == 1
    assert main(["run", "--input", sample, "--fast", "--hermes",
                 "--site", "den"]) == 2
    err = capsys.readouterr().err
    assert "--site, --hermes" in err
    assert "--mqtt" in err


def test_mqtt_flags_with_satellite_input_publish_to_the_satellites_broker() -> None:
    import argparse

    from harken.app.cli import check_mqtt_flags
    from harken.models.errors import ConfigError

    flags = {"hermes": True, "site": "hub", "ha_discovery": True}
    check_mqtt_flags(argparse.Namespace(
        input="mqtt://127.0.0.1/hermes/audioServer/+/audioFrame", **flags), "")
    with pytest.raises(ConfigError, match="no broker is set"):
        check_mqtt_flags(argparse.Namespace(input=None, **flags), "")
