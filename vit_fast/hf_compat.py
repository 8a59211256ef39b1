"""A drop-in for Hugging Face code: the fast model behind HF's own call signature and output classes.

`vit_fast.from_hf(hf_model_or_dir, hf_outputs=True)` returns an `HFDropIn`, whose
`forward(pixel_values=..., output_hidden_states=..., output_attentions=..., interpolate_pos_encoding=...)` returns
what the source class returns (`ImageClassifierOutput`, `BaseModelOutputWithPooling`, `CLIPVisionModelOutput`,
`DeiTForImageClassificationWithTeacherOutput`), so `outputs.logits` / `outputs.pooler_output` code runs
unchanged. It subclasses `transformers.PreTrainedModel` only so that `transformers.pipeline` accepts it, and is
registered with `AutoModelForImageClassification` so that the image-classification pipeline knows its class; the
weights live in the wrapped `VisionTransformer` (`.vit_fast`).
"""
from __future__ import annotations

import torch
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

# source class name -> the kind of output it returns
_CLASSIFIERS = ("ViTForImageClassification", "Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification",
                "DeiTForImageClassification")
_TEACHER = "DeiTForImageClassificationWithTeacher"
_PROJECTION = "CLIPVisionModelWithProjection"
_BASE = ("ViTModel", "CLIPVisionModel", "Dinov2Model", "Dinov2WithRegistersModel", "SiglipVisionModel", "DeiTModel")
SUPPORTED = _CLASSIFIERS + (_TEACHER, _PROJECTION) + _BASE
# model types whose HF embeddings refuse other sizes unless interpolate_pos_encoding=True (DINOv2 always resamples)
_STRICT_SIZE = ("vit", "clip_vision_model", "siglip_vision_model", "deit")


class HFDropInConfig(transformers.PretrainedConfig):
    """The key HFDropIn is registered under with transformers' image-classification auto class (below), so that
    `transformers.pipeline("image-classification", model=drop_in)` counts it among the supported models (the
    pipeline checks the model's class name against that registry). A drop-in holds its source's own config, never
    one of these; no checkpoint names this model_type, so no `Auto*.from_pretrained` ever picks HFDropIn."""
    model_type = "vit_fast_drop_in"


class HFDropIn(transformers.PreTrainedModel):
    config_class = HFDropInConfig  # the registry's key; instances hold the source's config (see __init__)
    main_input_name = "pixel_values"
    base_model_prefix = "vit_fast"
    input_modalities = ("image",)
    _supports_sdpa = True  # attention runs in vit-fast; this only keeps transformers' init checks quiet

    def __init__(self, config, model, source_class: str):
        if source_class not in SUPPORTED:
            raise ValueError(f"no Hugging Face output mapping for {source_class!r}; supported: {', '.join(SUPPORTED)}")
        super().__init__(config)
        self.vit_fast = model
        self.source_class = source_class

    @property
    def num_labels(self) -> int:
        return self.vit_fast.config.num_classes

    def _init_weights(self, module):  # the weights come loaded; nothing to initialize
        pass

    def forward(self, pixel_values: torch.Tensor = None, output_hidden_states: bool | None = None,
                interpolate_pos_encoding: bool | None = None, return_dict: bool | None = None,
                output_attentions: bool | None = None, labels=None, **kwargs):
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        if labels is not None:
            raise ValueError("labels (training loss) are not supported: vit-fast is an inference runtime")
        given = sorted(k for k, v in kwargs.items() if v is not None)  # HF's head_mask=None, bool_masked_pos=None
        if given:
            raise ValueError(f"unexpected arguments {given}: the drop-in takes pixel_values, output_hidden_states, "
                             "output_attentions, interpolate_pos_encoding and return_dict")
        # unset flags follow the config, as in HF's own forward
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        self._check_size(pixel_values, interpolate_pos_encoding)
        model, attentions = self.vit_fast, None
        if output_attentions:  # the fused kernels never form the weights: the eager path, as HF falls back to
            states, weights = model._eager_with_weights(pixel_values)
            attentions = tuple(weights)
        elif output_hidden_states:
            states = model.hidden_states(pixel_values)
        if output_attentions or output_hidden_states:
            tokens = model.norm(states[-1])
            hidden = tuple(states) if output_hidden_states else None
        else:
            tokens, hidden = model.forward_features(pixel_values), None
        out = self._outputs(tokens, hidden, attentions)
        return out if return_dict is not False else out.to_tuple()

    def to_hf(self) -> transformers.PreTrainedModel:
        """The source class (`source_class`, built from this drop-in's config) holding the fast model's weights, in
        fp32 on the CPU."""
        from .loading.hf_export import into_class

        return into_class(self.vit_fast, self.config, self.source_class)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """A checkpoint of the source class (config.json + weights under HF's names), as the source model's own
        save_pretrained writes it: transformers' `from_pretrained` and `vit_fast.load` both read it back. The
        keyword arguments go to transformers' save_pretrained."""
        self.to_hf().save_pretrained(save_directory, **kwargs)

    def _check_size(self, pixel_values, interpolate: bool | None) -> None:
        if interpolate or self.config.model_type not in _STRICT_SIZE:
            return
        h, w = pixel_values.shape[-2:]
        native = self.vit_fast.config.img_size
        if (h, w) != native:
            raise ValueError(f"input image size ({h}*{w}) doesn't match model ({native[0]}*{native[1]}); pass "
                             "interpolate_pos_encoding=True to resample the position embeddings")

    def _outputs(self, tokens, hidden, attentions=None):
        model, kind = self.vit_fast, self.source_class
        extra = dict(hidden_states=hidden, attentions=attentions)
        if kind == _TEACHER:
            from transformers.models.deit.modeling_deit import DeiTForImageClassificationWithTeacherOutput

            cls_logits, dist_logits = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
            return DeiTForImageClassificationWithTeacherOutput(
                logits=(cls_logits + dist_logits) / 2, cls_logits=cls_logits, distillation_logits=dist_logits,
                **extra)
        if kind in _CLASSIFIERS:
            return ImageClassifierOutput(logits=model.forward_head(tokens), **extra)
        pooled = model.forward_head(tokens, pre_logits=True)
        if kind == _PROJECTION:
            from transformers.models.clip.modeling_clip import CLIPVisionModelOutput

            return CLIPVisionModelOutput(image_embeds=model.head(pooled), last_hidden_state=tokens, **extra)
        # ViTModel / DeiTModel built without their pooler return none; the other towers always pool
        has_pooler = bool(model.config.representation_size) or self.config.model_type not in ("vit", "deit")
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=pooled if has_pooler else None,
                                          **extra)


# the documented way to make a custom class known to transformers' auto classes (and so to the pipeline's check)
transformers.AutoModelForImageClassification.register(HFDropInConfig, HFDropIn, exist_ok=True)
