"""Whole-model check of `vit-fast validate`: the candidate (Triton kernels, or PyTorch's sdpa without a GPU, or an
FP8 model) and PyTorch's own path in the same dtype, both against the fp32 eager model, image by image.

Per image: relative error of the logits and of the pooled embedding, cosine similarity of the embeddings, top-1
agreement (same arg-max) and top-5 agreement (overlap of the two top-5 sets, 0..1), all against fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..numerics import rel_err_rows

METRICS = ("logits_rel_err", "embedding_rel_err", "embedding_cosine", "top1", "top5")


@torch.no_grad()
def outputs(model: torch.nn.Module, pixels: torch.Tensor):
    """(fp32 logits or None for a headless model, fp32 pooled embeddings) for a uint8 batch. The logits come from
    `model(x)`, the path `predict` runs (with [CLS] pooling the Triton backend prunes the last block to the [CLS]
    query there), the embeddings from `forward_features` + the pre-logits head, as `return_embeddings` does."""
    if model.config.embedding_head:  # CLIP's projection: model(x) is the embedding (image_embeds), as predict serves
        return None, model(pixels).float()
    logits = model(pixels).float() if model.config.num_classes else None
    emb = model.forward_head(model.forward_features(pixels), pre_logits=True)
    return logits, emb.float()


def per_image(logits, emb, ref_logits, ref_emb) -> dict:
    """Per-image metrics (CPU float64 tensors of length B) of one output pair against the fp32 reference."""
    out = {"embedding_rel_err": rel_err_rows(emb, ref_emb),
           "embedding_cosine": F.cosine_similarity(emb.double(), ref_emb.double(), dim=-1)}
    if ref_logits is not None:
        out["logits_rel_err"] = rel_err_rows(logits, ref_logits)
        out["top1"] = (logits.argmax(-1) == ref_logits.argmax(-1)).double()
        k = min(5, ref_logits.shape[-1])
        a, b = logits.topk(k, dim=-1).indices, ref_logits.topk(k, dim=-1).indices
        out["top5"] = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).double().mean(-1)
    return {key: value.cpu() for key, value in out.items()}


@dataclass
class Comparison:
    """Accumulates per-image metrics of the candidate and of PyTorch's own path over batches."""

    names: list = field(default_factory=list)
    candidate: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)

    def add(self, names, reference, candidate, baseline) -> None:
        self.names.extend(names)
        for store, out in ((self.candidate, candidate), (self.baseline, baseline)):
            for key, value in per_image(*out, *reference).items():
                store.setdefault(key, []).append(value)

    def _cat(self, store) -> dict:
        return {key: torch.cat(values) for key, values in store.items()}

    def summary(self) -> dict:
        """{metric: {"candidate": value, "baseline": value}} for max/mean errors, min/mean cosine, agreements."""
        out = {}
        cand, base = self._cat(self.candidate), self._cat(self.baseline)
        for key in ("logits_rel_err", "embedding_rel_err"):
            if key in cand:
                out[f"{key}_max"] = {"candidate": cand[key].max().item(), "baseline": base[key].max().item()}
                out[f"{key}_mean"] = {"candidate": cand[key].mean().item(), "baseline": base[key].mean().item()}
        out["embedding_cosine_min"] = {"candidate": cand["embedding_cosine"].min().item(),
                                       "baseline": base["embedding_cosine"].min().item()}
        out["embedding_cosine_mean"] = {"candidate": cand["embedding_cosine"].mean().item(),
                                        "baseline": base["embedding_cosine"].mean().item()}
        for key in ("top1", "top5"):
            if key in cand:
                out[f"{key}_agreement"] = {"candidate": cand[key].mean().item(), "baseline": base[key].mean().item()}
        return out

    def worst(self, n: int = 5) -> list:
        """The candidate's `n` worst images: by logits relative error (embedding error for headless models)."""
        cand = self._cat(self.candidate)
        key = "logits_rel_err" if "logits_rel_err" in cand else "embedding_rel_err"
        order = cand[key].argsort(descending=True)[:n].tolist()
        rows = []
        for i in order:
            row = {"image": self.names[i]}
            for metric in METRICS:
                if metric in cand:
                    value = cand[metric][i].item()
                    row[metric] = bool(value) if metric == "top1" else value
            rows.append(row)
        return rows
