"""The captions task built from the configuration: the CTC model and one CaptionStage per
stream."""

from __future__ import annotations

from harken.app.config import HarkenConfig
from harken.engine.stages.base import Stage, StageContext, StageFactory
from harken.engine.stages.captions import CaptionStage
from harken.models.captions import CtcCaptioner
from harken.models.streaming import StreamingOptions


def load_captioner(model: str, device_type: str, dtype: str,
                   precision: str = "auto") -> CtcCaptioner:
    return CtcCaptioner.from_pretrained(model, device=device_type, dtype=dtype,
                                        precision=precision)


def streaming_options(config: HarkenConfig) -> StreamingOptions:
    c = config.captions
    return StreamingOptions(hop_s=c.hop_s, left_context_s=c.left_context_s,
                            right_context_s=c.right_context_s)


def caption_stages(config: HarkenConfig, captioner: CtcCaptioner) -> StageFactory:
    options = streaming_options(config)

    def make(ctx: StageContext) -> Stage:
        return CaptionStage(stream=ctx.stream, captioner=captioner, worker=ctx.worker,
                            options=options, live=ctx.live, arrivals=ctx.arrivals,
                            finals=ctx.finals)

    return make
