"""Model repositories on the Hugging Face Hub, named as users name them:
`vit_fast.load("google/vit-base-patch16-224")`, `from_hf("openai/clip-vit-large-patch14")`,
`from_timm("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")` (or timm's `hf-hub:` spelling), a revision as
`revision=` or `name@revision`; with timm installed, a timm model name ("vit_base_patch16_clip_224.openai", with an
optional `@revision` too) names the repository `timm.create_model(name, pretrained=True)` reads.

huggingface_hub downloads the repository into its cache (offline with `HF_HUB_OFFLINE=1` once cached; tokens,
mirrors and cache location as huggingface_hub configures them), and the snapshot directory then loads as a local
one. Only what loading reads is fetched: the JSON configs and one weight format, safetensors first (whole, or the
index and then exactly the shards it names), the PyTorch pickles only when a repository has no safetensors; never
the TF, Flax, ONNX or open_clip copies beside them. A local path that exists always wins over a name.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .checkpoint import CONFIG_NAME
from .state_dict import INDEX_NAMES, WEIGHT_NAMES, _first_line, shard_names

_REVISION = r"[\w./-]+"  # a branch, tag or commit
# org/name, as the Hub allows them, with timm's optional hf-hub: prefix and an optional @revision
_REPO = re.compile(rf"^(?:hf[-_]hub:)?([A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_])(?:@({_REVISION}))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")  # huggingface_hub's cache names each snapshot by its commit
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".json")  # a weight or config file, never a name
_CONFIGS = ["config.json", "preprocessor_config.json", CONFIG_NAME]  # HF's and timm's, HF's preprocessing, ours
_LOGIN = "set HF_TOKEN, or log in with huggingface_hub's command line"


@dataclass(frozen=True)
class Named:
    """A checkpoint given by name: the Hub repository, its revision, and for a timm model name the architecture it
    asks for and the name with its pretrained tag (None for a repository named directly)."""
    repo: str
    revision: Optional[str] = None
    architecture: Optional[str] = None
    timm_name: Optional[str] = None


def name_of(source, revision: Optional[str] = None) -> Optional[Named]:
    """What `source` names when it is a string and no local path: a Hub repository or (timm installed) a timm model
    name; None for a local path, an object, or a string that is neither (the loaders then report it missing)."""
    if isinstance(source, str) and not Path(source).expanduser().exists() and not source.endswith(_FILE_SUFFIXES):
        match = _REPO.match(source)
        if match:
            return Named(match[1], _one_revision(source, match[2], revision))
        from .timm_hub import pretrained_repo

        name, at, given = source.partition("@")  # a timm name may carry a revision as a repository does
        timm_name = pretrained_repo(name) if not at or re.fullmatch(_REVISION, given) else None
        if timm_name is not None:
            return Named(timm_name[0], _one_revision(source, given or None, revision), *timm_name[1:])
    if revision is not None:
        what = f"{source!r} is a local path or no name" if isinstance(source, (str, Path)) else \
            f"a {type(source).__name__} was given"
        raise ValueError(f"revision={revision!r} applies to Hugging Face Hub repositories; {what}")
    return None


def _one_revision(source: str, named: Optional[str], passed: Optional[str]) -> Optional[str]:
    if named is not None and passed is not None and named != passed:
        raise ValueError(f"{source!r} names revision {named!r} but revision={passed!r} was passed")
    return named or passed


def fetch(source: str, named: Named) -> tuple:
    """Download what `name_of(source)` read, now: (what to load, the snapshot folder, `source` pinned).
    What to load is the folder, or for a timm model name the pinned name (it builds the architecture it names,
    from the cache). The pinned name is `source` at the commit huggingface_hub downloaded (its cache names each
    snapshot folder by its commit): another process that loads it gets exactly these weights, whatever is pushed
    meanwhile; `source` unchanged when the folder is not named by a commit."""
    folder = download(named.repo, named.revision)
    name = _at_commit(source, named, folder)
    return (folder if named.architecture is None else name), folder, name


def pin(source: str, named: Named) -> str:
    """`source` pinned to the commit its revision names now, without downloading the weights (only the small
    configs): for processes that download it later, such as a cluster's replicas, which then all load the same
    weights. Offline (`HF_HUB_OFFLINE=1`) the commit is the one cached for that revision, with its configs. A name
    already at a commit is returned as is. Raises what `download` raises when the Hub cannot answer."""
    if named.revision is not None and _COMMIT.match(named.revision):
        return source
    return _at_commit(source, named, _snapshot(named.repo, named.revision, _CONFIGS))


def pin_for_replicas(checkpoint) -> tuple:
    """(what replicas that load `checkpoint` later should load, a warning or None): a Hub repository or timm model
    name pinned with `pin`, anything else (None, a path that exists here, a name already at a commit) as given. When
    the Hub cannot answer, the name as given and a warning that says why. A timm name timm has no weights for, or a
    name with two revisions, raises the ValueError every replica would."""
    named = name_of(checkpoint) if isinstance(checkpoint, str) else None
    if named is None:
        return checkpoint, None
    try:
        return pin(checkpoint, named), None
    except OSError as e:
        return checkpoint, f"{checkpoint} is not pinned to a commit, so each replica resolves it itself: {e}"


def _at_commit(source: str, named: Named, folder: Path) -> str:
    """`source` at the commit that names `folder`; a timm name with its tag too (another timm version's default tag
    could name another repository)."""
    if not _COMMIT.match(folder.name):
        return source
    return f"{named.timm_name or source.partition('@')[0]}@{folder.name}"


def missing_hint(source) -> str:
    """What a string that is no checkpoint may have meant, for the "no checkpoint at" message."""
    from .timm_hub import MODEL_NAME

    if isinstance(source, str) and MODEL_NAME.match(source.partition("@")[0]) and \
            importlib.util.find_spec("timm") is None:
        return (" (to load a timm model name, install timm; or name its Hugging Face Hub repository, "
                "timm/<model>.<tag>)")
    return " (a local path, or a Hugging Face Hub repository org/name)"


def download(repo: str, revision: Optional[str] = None) -> Path:
    """The snapshot directory of `repo` with its configs and weights (see the module docstring)."""
    held, at_commit = [], revision
    for whole, index in zip(WEIGHT_NAMES, INDEX_NAMES):  # safetensors first
        folder = _snapshot(repo, at_commit, _CONFIGS + [whole, index])
        if _COMMIT.match(folder.name):  # later calls fetch from the same commit, whatever is pushed meanwhile
            at_commit = folder.name
        if (folder / whole).is_file():
            return folder
        if (folder / index).is_file():
            return _snapshot(repo, at_commit, _CONFIGS + [index] + shard_names(folder / index))
        held = sorted(p.name for p in folder.iterdir())
    at = "" if revision is None else f" at revision {revision!r}"
    raise FileNotFoundError(f"the Hugging Face Hub repository {repo!r}{at} has no weights vit-fast reads "
                            f"({', '.join(WEIGHT_NAMES)}, or sharded); downloaded {held}")


def _snapshot(repo: str, revision: Optional[str], patterns: list) -> Path:
    """huggingface_hub's snapshot_download of the files matching `patterns`; its errors in one line each."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise FileNotFoundError(f"no local checkpoint at {repo!r}; to download it from the Hugging Face Hub, install "
                                "huggingface_hub (pip install huggingface_hub)") from None
    at = "" if revision is None else f" at revision {revision!r}"
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise PermissionError(f"the Hugging Face Hub repository {repo!r} is gated: accept its terms on its page, "
                              f"then {_LOGIN}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no local checkpoint at {repo!r}, and no Hugging Face Hub repository of that name "
                                f"(if it is private: {_LOGIN})") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"the Hugging Face Hub repository {repo!r} has no revision {revision!r}") from None
    except HFValidationError as e:
        raise FileNotFoundError(f"no local checkpoint at {repo!r}, and it is no valid Hugging Face Hub repository "
                                f"name ({_first_line(e)})") from None
    except LocalEntryNotFoundError as e:
        raise ConnectionError(f"cannot download {repo!r}{at} from the Hugging Face Hub (offline, or no connection) "
                              f"and it is not in the local cache: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - HTTP, connection and proxy errors (httpx's are not OSErrors)
        raise ConnectionError(f"cannot download {repo!r}{at} from the Hugging Face Hub: {type(e).__name__}: "
                              f"{_first_line(e)}") from None


def local_processor_file(hf_config) -> Optional[Path]:
    """The preprocessor_config.json of a live transformers model, where this machine already has it: beside the
    weights in the directory it was loaded from, or in huggingface_hub's cache for a Hub repository (at the
    commit it was loaded from). Nothing is downloaded; None when neither holds one."""
    name = getattr(hf_config, "_name_or_path", None)
    if not isinstance(name, str) or not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        found = path / "preprocessor_config.json"
        return found if found.is_file() else None
    if not _REPO.match(name) or importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    commit = getattr(hf_config, "_commit_hash", None)
    try:
        found = try_to_load_from_cache(name, "preprocessor_config.json",
                                       revision=commit if isinstance(commit, str) else None)
    except ValueError:  # a name huggingface_hub does not take as a repository
        return None
    return Path(found) if isinstance(found, str) else None
