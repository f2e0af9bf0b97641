"""Loading tiny checkpoints through the production path, and the errors users see."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from harken.models import loading
from harken.models.captions import CtcCaptioner
from harken.models.errors import DeviceError, ModelNotFoundError, UnsupportedModelError
from harken.models.loading import is_cached, looks_like_path, pull, resolve_device, resolve_dtype

UNKNOWN_ID = "harken-tests/no-such-model-xyz"


@pytest.mark.parametrize("arch", ["hubert", "data2vec-audio", "sew-d"])
def test_tiny_checkpoint_loads_through_from_pretrained(
    arch: str, tiny_ctc_dirs: dict[str, Path]
) -> None:
    captioner = CtcCaptioner.from_pretrained(str(tiny_ctc_dirs[arch]), device="cpu")
    assert captioner.device == torch.device("cpu")
    assert captioner.dtype == torch.float32
    assert not captioner.model.training
    assert captioner.geometry.frame_samples == 320
    assert captioner.geometry.receptive_samples == 400
    # SEW-D has no SDPA attention; the loader falls back to eager for it.
    expected_attn = "eager" if arch == "sew-d" else "sdpa"
    assert captioner.model.config._attn_implementation == expected_attn


@pytest.mark.usefixtures("hub_offline")
def test_unknown_hub_id_offline_names_id_offline_and_local_folder() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        CtcCaptioner.from_pretrained(UNKNOWN_ID, device="cpu")
    message = str(caught.value)
    assert UNKNOWN_ID in message
    assert "offline" in message
    assert "--captions-model /path/to/folder" in message
    assert f"harken models pull {UNKNOWN_ID}" in message


@pytest.mark.parametrize("kind", ["base", "classifier"])
def test_checkpoint_without_ctc_head_is_unsupported(
    kind: str, tiny_non_ctc_dirs: dict[str, Path]
) -> None:
    with pytest.raises(UnsupportedModelError, match="HubertForCTC"):
        CtcCaptioner.from_pretrained(str(tiny_non_ctc_dirs[kind]), device="cpu")


def test_folder_without_weights_is_not_found(
    tiny_ctc_dirs: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_ctc_dirs["hubert"], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"config\.json, the weights"):
        CtcCaptioner.from_pretrained(str(folder), device="cpu")


@pytest.mark.parametrize("given", ["./no-such-folder", "{tmp}/missing", "~/no-such-harken-model",
                                   "../no-such-folder"])
def test_a_missing_folder_is_never_taken_for_a_hub_id(
        given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path is checked as a path: no hub lookup (not even a probe), no `models pull` advice."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network() -> bool:
        raise AssertionError("a path was looked up on the hub")

    monkeypatch.setattr(loading, "hub_reachable", no_network)
    model = given.format(tmp=tmp_path)
    with pytest.raises(ModelNotFoundError) as caught:
        CtcCaptioner.from_pretrained(model, device="cpu")
    message = str(caught.value)
    assert f"the captions model folder {model!r} does not exist" in message
    assert "--captions-model" in message
    assert "models pull" not in message
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        pull(model)
    assert not is_cached(model)


def test_a_file_given_as_the_model_folder_says_so(tmp_path: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a folder"):
        CtcCaptioner.from_pretrained(str(file), device="cpu")


def test_a_keyword_checkpoint_as_the_captions_model_is_the_wrong_head(tmp_path: Path) -> None:
    """It has no tokenizer either; the head is what the user must change, so say that."""
    from tiny_task_models import build_tiny_keyword_model

    folder = build_tiny_keyword_model(tmp_path / "kw")
    with pytest.raises(UnsupportedModelError) as caught:
        CtcCaptioner.from_pretrained(str(folder), device="cpu")
    message = str(caught.value)
    assert "wrong head for the captions task" in message
    assert "ForCTC" in message
    assert "sentencepiece" not in message
    assert "tokenizer" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_gpu_names_cpu_fix(device: str) -> None:
    with pytest.raises(DeviceError, match="--device-type cpu"):
        resolve_device(device)


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="auto"):
        resolve_device("tpu")
    cpu = torch.device("cpu")
    assert resolve_dtype(cpu) == torch.float32
    assert resolve_dtype(cpu, "float16") == torch.float32  # fp16 on CPU falls back
    assert resolve_dtype(cpu, "bf16") == torch.bfloat16
    assert resolve_dtype(torch.device("cuda"), "auto") == torch.float16
    with pytest.raises(ValueError, match="float32"):
        resolve_dtype(cpu, "int8")


@pytest.mark.usefixtures("hub_offline")
def test_is_cached_and_pull_offline(tiny_ctc_dirs: dict[str, Path]) -> None:
    folder = tiny_ctc_dirs["hubert"]
    assert is_cached(str(folder))
    assert pull(str(folder)) == folder
    assert not is_cached(UNKNOWN_ID)
    with pytest.raises(ModelNotFoundError, match="offline"):
        pull(UNKNOWN_ID)


def test_unreachable_hub_fails_fast_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HF_HUB_OFFLINE, but no network either: one quick probe, then the fix, in seconds."""
    import time

    from harken.models import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as err:
        CtcCaptioner.from_pretrained("nobody/no-such-model", device="cpu")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "nobody/no-such-model" in message
    assert "unreachable" in message
    assert "--captions-model /path/to/folder" in message


def test_hub_probe_reports_unreachable_for_a_dead_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    from harken.models import loading

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    loading.hub_reachable.cache_clear()
    try:
        assert loading.hub_reachable() is False
    finally:
        loading.hub_reachable.cache_clear()


@pytest.mark.parametrize(("model_id", "is_path"), [
    ("facebook/hubert-large-ls960-ft", False), ("hubert-large", False), ("a.b-c/d_e.f", False),
    ("./x", True), ("/x", True), ("~/x", True), (".", True), ("x/", True), ("a/b/c", True),
    ("a b", True),
])
def test_what_a_hub_id_cannot_be_is_taken_as_a_folder(model_id: str, is_path: bool) -> None:
    assert looks_like_path(model_id) is is_path
