"""Model repositories on the Hugging Face Hub, named as users name them: `vit_fast.load("google/vit-base-patch16-224")`,
`from_hf("openai/clip-vit-large-patch14")`, `from_timm("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")` (or timm's
`hf-hub:` spelling), a revision as `revision=` or `name@revision`.

huggingface_hub downloads the repository into its cache (offline with `HF_HUB_OFFLINE=1` once cached; tokens,
mirrors and cache location as huggingface_hub configures them), and the snapshot directory then loads as a local
one. Only what loading reads is fetched: the JSON configs and the safetensors weights (whole or sharded), or the
PyTorch weights when a repository has no safetensors; never the TF, Flax, ONNX or open_clip copies beside them. A
local path that exists always wins over a repository of the same name.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .state_dict import INDEX_NAMES, WEIGHT_NAMES, _first_line

# org/name, as the Hub allows them, with timm's optional hf-hub: prefix and an optional @revision
_REPO = re.compile(r"^(?:hf[-_]hub:)?([A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_])(?:@([\w./-]+))?$")
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".json")  # a weight or config file, not a repository
_CONFIGS = ["config.json", "preprocessor_config.json", "vit_fast.json"]
# whole or sharded (the index and its shards, as save_pretrained names them); safetensors first
_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
_PICKLES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


def repo_of(source) -> Optional[tuple]:
    """(repo id, revision or None) when `source` is a string naming a Hub repository and no local path; else None."""
    if not isinstance(source, str) or Path(source).expanduser().exists() or source.endswith(_FILE_SUFFIXES):
        return None
    match = _REPO.match(source)
    return (match[1], match[2]) if match else None


def local(source, revision: Optional[str] = None):
    """`source` as a local path: a Hub repository is downloaded first (see the module docstring); anything else is
    returned as it is, for the loaders to read or to report."""
    repo = repo_of(source)
    if repo is None:
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hugging Face Hub repositories; {source!r} is "
                             f"{'a local path' if isinstance(source, (str, Path)) else type(source).__name__}")
        return source
    name, pinned = repo
    if pinned is not None and revision is not None and pinned != revision:
        raise ValueError(f"{source!r} names revision {pinned!r} but revision={revision!r} was passed")
    return download(name, pinned or revision)


def download(repo: str, revision: Optional[str] = None) -> Path:
    """The snapshot directory of `repo` with its configs and weights; errors in one line that say what to do."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise FileNotFoundError(f"no local checkpoint at {repo!r}; to download it from the Hugging Face Hub, install "
                                "huggingface_hub (pip install huggingface_hub)") from None
    at = "" if revision is None else f" at revision {revision!r}"
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=_CONFIGS + _SAFETENSORS))
        if not _has_weights(folder):
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=_CONFIGS + _PICKLES))
    except GatedRepoError:
        raise PermissionError(f"the Hugging Face Hub repository {repo!r} is gated: accept its terms on its page, then "
                              "log in (`hf auth login`, or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no local checkpoint at {repo!r}, and no Hugging Face Hub repository of that name "
                                "(or it is private: log in with `hf auth login`, or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"the Hugging Face Hub repository {repo!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError as e:
        raise ConnectionError(f"cannot download {repo!r}{at} from the Hugging Face Hub (offline, or no connection) "
                              f"and it is not in the local cache: {_first_line(e)}") from None
    except OSError as e:  # requests' and httpx' connection errors, HfHubHTTPError: all OSError subclasses
        raise ConnectionError(f"cannot download {repo!r}{at} from the Hugging Face Hub: {_first_line(e)}") from None
    if not _has_weights(folder):
        held = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"the Hugging Face Hub repository {repo!r}{at} has no weights vit-fast reads "
                                f"({', '.join(WEIGHT_NAMES)}, or sharded); downloaded {held}")
    return folder


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_NAMES + INDEX_NAMES)
