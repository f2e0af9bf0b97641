"""Device and dtype resolution, and from_pretrained with errors that name the fix.

Every task model loads through here so that hub ids, local folders, the Hugging Face cache and
HF_HUB_OFFLINE behave the same way everywhere.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import torch

from harken.models.errors import DeviceError, ModelError, ModelNotFoundError, UnsupportedModelError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
PRECISION_CHOICES = ("auto", "fp32", "int8")
# Linear layers under a module path with one of these parts are quantised: the transformer
# stacks (encoder, decoder, the decoder's output projection), where nearly all the Linear
# compute is. Task heads stay float: some use their weights directly (the x-vector TDNN runs
# its Linear's weight as a conv kernel, XVectorEmbedder.pool reads the head's projection).
_QUANTISED_PARTS = frozenset({"encoder", "decoder", "lm_head"})
_DTYPE_ALIASES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# Exception class names (anywhere in the cause chain) that mean "could not reach the hub".
_OFFLINE_ERROR_NAMES = frozenset(
    {
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "ConnectError",
        "ConnectTimeout",
        "ConnectionError",
        "ReadTimeout",
        "ProxyError",
    }
)


def resolve_device(device_type: str = "auto") -> torch.device:
    """Map a --device-type value to a torch.device; "auto" picks CUDA when it is usable."""
    choice = device_type.strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device_type!r} was requested but CUDA is not available on this "
                "machine (no NVIDIA GPU, driver, or CUDA build of torch); "
                "use --device-type cpu (or --device-type auto)"
            )
        try:
            device = torch.device(choice)
        except RuntimeError as error:
            raise DeviceError(
                f"invalid device {device_type!r}; use one of {', '.join(DEVICE_CHOICES)}"
            ) from error
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device {device_type!r} does not exist: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}; use --device-type cuda:0"
            )
        return device
    raise DeviceError(
        f"unknown device type {device_type!r}; use one of {', '.join(DEVICE_CHOICES)}"
    )


def explain_dtype(device: torch.device, dtype: str = "auto") -> tuple[torch.dtype, str | None]:
    """The dtype to run on `device`, and why it differs from the request (None if it does not)."""
    choice = dtype.strip().lower()
    if choice == "auto":
        # Half precision halves memory and roughly doubles GPU throughput for these encoders;
        # on CPU, float16 matmuls are slow or unsupported, so stay in float32.
        return (torch.float16 if device.type == "cuda" else torch.float32), None
    if choice not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    resolved = _DTYPE_ALIASES[choice]
    if resolved is torch.float16 and device.type == "cpu":
        return torch.float32, "float16 is slow or unsupported on CPU, using float32 instead"
    return resolved, None


def resolve_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """auto: float16 on CUDA, float32 on CPU; float16 on CPU falls back to float32 (logged)."""
    resolved, reason = explain_dtype(device, dtype)
    if reason is not None:
        log.warning("dtype %s on %s: %s", dtype, device, reason)
    return resolved


def resolve_precision(device: torch.device, precision: str = "auto", *,
                      dtype: torch.dtype = torch.float32) -> str:
    """"int8" (dynamic int8 Linear layers) or "fp32" (no quantisation: the float dtype).

    auto: int8 for float32 models on CPU, where it runs the speech encoders about 2-3x
    faster; never on CUDA, where torch's dynamic int8 kernels do not run (half precision is
    the GPU's fast path), nor for a model the user asked to run in bfloat16.
    """
    choice = precision.strip().lower()
    if choice not in PRECISION_CHOICES:
        raise ValueError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
    if choice == "auto":
        return "int8" if device.type == "cpu" and dtype == torch.float32 else "fp32"
    if choice == "int8" and device.type != "cpu":
        raise DeviceError(
            f"--precision int8 runs on CPU only (dynamic int8 kernels), not on {device}; use "
            "--precision fp32 (half precision with --dtype float16 is the GPU's fast path) or "
            "--device-type cpu"
        )
    if choice == "int8" and dtype != torch.float32:
        raise DeviceError(
            f"--precision int8 quantises float32 models, not {str(dtype).replace('torch.', '')}"
            "; use --dtype float32 (or auto) with it, or --precision fp32"
        )
    return choice


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation (int8 weights, activations quantised per call) of the Linear
    layers of the model's transformer stacks, in place; returns the model.

    torch.ao.quantization.quantize_dynamic is deprecated in favour of torchao, but measured
    on torch 2.13 CPU it is faster (HuBERT base, 3 s window: 2.6x vs torchao's 1.2-1.7x;
    docs/cpu.md), and torchao on the path slows transformers down even when unused.
    """
    from torch.ao.quantization import quantize_dynamic

    names = {name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear)
             and _QUANTISED_PARTS.intersection(name.split("."))}
    if not names:
        return model
    with warnings.catch_warnings():
        # The deprecation notices of torch.ao and of quantized tensors, once per model.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(  # type: ignore[no-untyped-call]
            model, names, dtype=torch.qint8, inplace=True)
    return model


def precision_of(model: Any) -> str:
    """"int8" when `model` has dynamically quantised Linear layers, else its float dtype."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if any(isinstance(m, DynamicLinear) for m in model.modules()):
        return "int8"
    param = next(iter(model.parameters()), None)
    return "fp32" if param is None else str(param.dtype).replace("torch.", "")


def apply_precision(model: Any, *, device: torch.device, dtype: torch.dtype,
                    precision: str) -> Any:
    """`model` quantised when `precision` resolves to int8 (a float32 model on CPU)."""
    if resolve_precision(device, precision, dtype=dtype) != "int8":
        return model
    return quantize_int8(model)


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network access."""
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


HUB_PROBE_TIMEOUT_S = 4.0  # s; an unreachable hub otherwise costs minutes of retries per file


@functools.cache
def hub_reachable() -> bool:
    """One quick request to the hub (proxies from the environment apply). Cached per process."""
    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError, ValueError):
        return False


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # `name` or `owner/name`


def looks_like_path(model_id: str) -> bool:
    """True for a model given as a folder path (`./x`, `../x`, `/x`, `~/x`, `.`, `x/`,
    `a/b/c`): anything a hub id (`name` or `owner/name`) cannot be."""
    text = model_id.strip()
    return text in (".", "..") or text.startswith(("/", "./", "../", "~", "\\")) \
        or os.path.isabs(text) or _HUB_ID.fullmatch(text) is None


def check_folder(model_id: str, task: str) -> None:
    """A model given as a path must be an existing folder: it is never looked up on the hub."""
    if looks_like_path(model_id) and not Path(model_id).expanduser().is_dir():
        what = "is a file, not a folder" if Path(model_id).expanduser().exists() \
            else "does not exist"
        raise ModelNotFoundError(
            f"the {task} model folder {model_id!r} {what}; fix the path given with "
            f"--{task}-model (or {_config_key(task)} in the config): it must be a folder "
            "with config.json, the weights and the preprocessor files, or give a Hugging Face "
            "Hub id (owner/name)"
        )


def _config_key(task: str) -> str:
    """The config key of a task's model, for messages (config sections in app/config.py)."""
    return {"speaker": "speakers.model",
            "diarization": "speakers.diarization_model"}.get(task, f"{task}.model")


def _source_kwargs(model_id: str, task: str) -> dict[str, Any]:
    """from_pretrained options for where the files can come from.

    A path that is no folder fails at once. A local folder or HF_HUB_OFFLINE needs nothing.
    Otherwise, when the hub cannot be reached, a cached model loads from the cache alone, and
    an uncached one fails at once with the fix, instead of huggingface_hub retrying every
    file for minutes.
    """
    check_folder(model_id, task)
    if Path(model_id).expanduser().exists() or hub_offline() or hub_reachable():
        return {}
    if is_cached(model_id):
        log.info("the Hugging Face Hub is unreachable; loading %s from the cache", model_id)
        return {"local_files_only": True}
    raise ModelNotFoundError(
        f"could not load the {task} model {model_id!r}: the machine is offline (the Hugging "
        "Face Hub is unreachable) and it is not in the HF cache. Fix: run `harken models pull "
        f"{model_id}` while online, or pass a local folder with --{task}-model "
        "/path/to/folder (containing config.json, the weights and the preprocessor files)"
    )


def _looks_unreachable(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ in _OFFLINE_ERROR_NAMES:
            return True
        text = str(current).lower()
        if "couldn't connect" in text or "offline mode" in text or "cannot reach" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _not_found_message(model_id: str, task: str, error: BaseException) -> str:
    if Path(model_id).expanduser().exists():
        where = (
            f"the folder {model_id!r} is not a complete checkpoint ({error}); it must contain "
            "config.json, the weights (model.safetensors or pytorch_model.bin) and the "
            "preprocessor files (preprocessor_config.json, and vocab.json for captions)"
        )
        return f"could not load the {task} model: {where}"
    if hub_offline():
        state = "the machine is offline (HF_HUB_OFFLINE is set) and it is not in the HF cache"
    elif _looks_unreachable(error):
        state = "the machine is offline (the Hugging Face Hub is unreachable) and it is not cached"
    else:
        state = f"the Hugging Face Hub has no such model or it could not be fetched ({error})"
    return (
        f"could not load the {task} model {model_id!r}: {state}. "
        f"Fix: run `harken models pull {model_id}` while online, or pass a local folder with "
        f"--{task}-model /path/to/folder (containing config.json, the weights and the "
        "preprocessor files)"
    )


def _concrete_class(model_cls: Any, config: Any) -> Any:
    """The architecture class an Auto* class picks for `config` (model_cls itself otherwise)."""
    mapping = getattr(model_cls, "_model_mapping", None)
    if mapping is None:
        return model_cls
    try:
        return mapping[type(config)]
    except KeyError:
        return None


def _load_config(model_id: str, task: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, **_source_kwargs(model_id, task))
    except OSError as error:
        raise ModelNotFoundError(_not_found_message(model_id, task, error)) from error
    except (ValueError, KeyError) as error:
        raise UnsupportedModelError(
            f"{model_id!r} is not a checkpoint this version of transformers understands "
            f"({error}); choose a supported {task} model"
        ) from error


def check_head(model_cls: Any, model_id: str, *, task: str) -> Any:
    """The architecture class `model_cls` picks for the checkpoint, from its config alone.

    Task loaders call it before the preprocessing parts, so that a checkpoint of another
    task (a keyword classifier given as the captions model) is reported as the wrong head,
    not as a missing tokenizer. Raises ModelNotFoundError or UnsupportedModelError.
    """
    config = _load_config(model_id, task)
    concrete = _concrete_class(model_cls, config)
    expected = getattr(model_cls, "__name__", str(model_cls))
    if concrete is None:
        raise UnsupportedModelError(
            f"{model_id!r} is a {config.model_type!r} checkpoint, which has no {expected} "
            f"variant; choose a {task} model of a supported architecture"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and concrete.__name__ not in architectures:
        raise UnsupportedModelError(
            f"{model_id!r} is a {'/'.join(architectures)} checkpoint: the wrong head for the "
            f"{task} task, which needs a {concrete.__name__} head; choose a {task} checkpoint "
            "(one fine-tuned with that head)"
        )
    return concrete


def load_pretrained(
    model_cls: Any,
    model_id: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    task: str,
    precision: str = "auto",
    **kwargs: Any,
) -> Any:
    """from_pretrained with SDPA attention (eager where the architecture has none), in eval mode,
    quantised to int8 when `precision` says so (resolve_precision: auto = int8 on CPU).

    Raises ModelNotFoundError (missing, offline and not cached) or UnsupportedModelError
    (the checkpoint's head or architecture does not fit `model_cls`).
    """
    concrete = check_head(model_cls, model_id, task=task)
    attn = "sdpa" if getattr(concrete, "_supports_sdpa", False) else "eager"
    try:
        model, info = model_cls.from_pretrained(
            model_id, dtype=dtype, attn_implementation=attn, output_loading_info=True,
            **_source_kwargs(model_id, task), **kwargs
        )
    except OSError as error:
        raise ModelNotFoundError(_not_found_message(model_id, task, error)) from error
    except ValueError as error:
        raise UnsupportedModelError(
            f"could not load {model_id!r} as a {task} model ({error})"
        ) from error
    # Weights of the task head that the checkpoint lacks would be random: refuse them.
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    missing_head = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if missing_head:
        raise UnsupportedModelError(
            f"{model_id!r} has no trained {task} head (missing {', '.join(missing_head[:4])}); "
            f"choose a {task} checkpoint fine-tuned for {concrete.__name__}"
        )
    return apply_precision(model.to(device).eval(), device=device, dtype=dtype,
                           precision=precision)


def load_processor(model_id: str, *, task: str) -> Any:
    """AutoProcessor (tokenizer + feature extractor), or the feature extractor alone."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    source = _source_kwargs(model_id, task)
    try:
        return AutoProcessor.from_pretrained(model_id, **source)  # type: ignore[no-untyped-call]
    except (OSError, TypeError) as error:  # TypeError: a processor class with no tokenizer
        # Checkpoints without a tokenizer (speaker, keyword models) only have a feature
        # extractor; fall back to it before reporting a missing model.
        try:
            return AutoFeatureExtractor.from_pretrained(  # type: ignore[no-untyped-call]
                model_id, **source
            )
        except (OSError, ValueError):
            raise ModelNotFoundError(_not_found_message(model_id, task, error)) from error
    except (ValueError, KeyError) as error:
        raise UnsupportedModelError(
            f"{model_id!r} has no usable preprocessor for the {task} task ({error}); its folder "
            "needs preprocessor_config.json (and the tokenizer files for captions)"
        ) from error


def load_part(loader: Any, model_id: str, *, part: str, task: str) -> Any:
    """One preprocessing part alone (`loader` = AutoFeatureExtractor, AutoTokenizer, ...),
    from the same places and with the same errors as the model. For checkpoints with no
    combined processor: speaker and keyword models have no tokenizer, and a speech
    encoder-decoder's AutoProcessor is only its tokenizer."""
    source = _source_kwargs(model_id, task)
    try:
        return loader.from_pretrained(model_id, **source)
    except OSError as error:
        raise ModelNotFoundError(_not_found_message(model_id, task, error)) from error
    except (ValueError, KeyError, ImportError) as error:
        raise UnsupportedModelError(
            f"the {part} of {model_id!r} cannot be loaded for the {task} task ({error}); its "
            "folder needs preprocessor_config.json (and the tokenizer files for captions and "
            "translation); a tokenizer shipped only as a sentencepiece model needs "
            "`pip install sentencepiece protobuf`"
        ) from error


def is_cached(model_id: str) -> bool:
    """True when `model_id` is a local folder with config.json or its config is in the HF cache."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return (folder / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repo id (HFValidationError subclasses ValueError)
        return False
    return isinstance(found, str)


def pull(model_id: str) -> Path:
    """Download (or find) a checkpoint into the HF cache and return its folder."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return folder
    if looks_like_path(model_id):
        raise ModelNotFoundError(
            f"cannot pull {model_id!r}: there is no such folder, and a path is never looked up "
            "on the Hugging Face Hub; fix the path, or give a hub id (owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if hub_offline():
        raise ModelNotFoundError(
            f"cannot pull {model_id!r}: the machine is offline (HF_HUB_OFFLINE is set); "
            "unset HF_HUB_OFFLINE and retry while online, or copy the checkpoint folder here"
        )
    try:
        return Path(snapshot_download(model_id))
    except GatedRepoError as error:
        raise ModelError(
            f"{model_id!r} is gated: accept its licence on huggingface.co and log in with "
            "`hf auth login`, then retry"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"{model_id!r} does not exist on the Hugging Face Hub (or is private); check the id"
        ) from error
    except (OSError, ValueError) as error:
        state = "the Hugging Face Hub is unreachable" if _looks_unreachable(error) else str(error)
        raise ModelNotFoundError(
            f"cannot pull {model_id!r}: {state}; retry while online, or copy the checkpoint "
            "folder here and pass its path"
        ) from error


def use_threads(threads: int) -> None:
    """torch intra-op threads for the CALLING thread (OpenMP and MKL keep the count per
    thread), so that an executor thread runs with its own budget (engine/threads.py)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    # A thread takes the process-wide count at its first parallel op, even after setting its
    # own: make that first read happen now, so that the setting below is the one that stays.
    torch.get_num_threads()
    torch.set_num_threads(threads)


def thread_count() -> int:
    """torch intra-op threads of the calling thread."""
    return int(torch.get_num_threads())
