"""Loading a feature extractor or tokenizer alone, with errors that name the fix.

Keyword and translation checkpoints have no combined processor (AutoProcessor would look for
a CTC tokenizer next to a SEW-D classifier, or return only the tokenizer of a speech
encoder-decoder), so their parts load one by one.
"""

from __future__ import annotations

from typing import Any

from harken.models.errors import ModelNotFoundError, UnsupportedModelError


def load_part(loader: Any, model_id: str, *, part: str, task: str, flag: str) -> Any:
    """`loader.from_pretrained(model_id)` (AutoFeatureExtractor, AutoTokenizer, ...)."""
    try:
        return loader.from_pretrained(model_id)
    except OSError as error:
        raise ModelNotFoundError(
            f"could not load the {part} of the {task} model {model_id!r} ({error}). Fix: run "
            f"`harken models pull {model_id}` while online, or pass a complete local folder "
            f"with {flag} (config.json, the weights, preprocessor_config.json and, for "
            "translation, the tokenizer files)"
        ) from error
    except (ValueError, KeyError, ImportError) as error:
        raise UnsupportedModelError(
            f"the {part} of {model_id!r} cannot be loaded for the {task} task ({error}); a "
            "tokenizer shipped only as a sentencepiece model needs `pip install sentencepiece "
            "protobuf`"
        ) from error
