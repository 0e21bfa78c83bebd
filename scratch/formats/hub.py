"""Model ids as users type them ("HuggingFaceTB/SmolLM2-135M-Instruct") -> a local folder, through the hub's cache.

A Hugging Face model id names a repository; `huggingface_hub.snapshot_download` fetches the files we read (config,
safetensors, tokenizer, chat template) once into its standard cache -- HF_HOME/hub/models--org--name/snapshots/
<commit>/..., with refs/main naming the commit -- and hands back that snapshot folder, which every loader here
already reads. The environment is read at each call, not at import: HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub; HF_HUB_OFFLINE=1 never touches the network (cached files work, missing ones are a
one-line error). A path that exists locally always wins over an id. Not here: GGUF repositories (which of their
many quantized files to fetch is the user's choice: download one and pass its path), private-repo tokens beyond
what huggingface_hub itself reads, `.bin` (pickle) weights.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["looks_like_model_id", "resolve_model_id", "hub_cache_dir", "hub_offline", "MODEL_FILES",
           "MISSING_HUB"]

MISSING_HUB = "model ids are fetched with the huggingface_hub package: pip install 'scratch-llm[hub]'"
# What a model id fetches: enough for scratch.models.load and load_tokenizer (one download serves both).
MODEL_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
               "additional_chat_templates/*.jinja"]
# The hub's rule for a repository name: letters, digits, "-", "_", "." (no "--" or ".." and no leading or trailing
# "-" / "."), at most 96 characters; an id is "name" or "owner/name".
_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_MODEL_ID = re.compile(f"(?:{_NAME}/)?{_NAME}")
_TRUE = {"1", "on", "yes", "true"}


def looks_like_model_id(name: str) -> bool:
    """True for "owner/name" written the way the hub spells repository ids (one slash, no path syntax). A bare
    "name" is too easily a typo of a local file, so it is not taken as an id here."""
    return "/" in name and _MODEL_ID.fullmatch(name) is not None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """Where the hub keeps its files, from the environment now (huggingface_hub reads it once at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_model_id(name: str | os.PathLike, needs: tuple[str, ...] = ("config.json",),
                     allow_patterns: list[str] | None = None) -> Path:
    """A local folder for `name`: the path itself when it exists, else the cached snapshot of the hub model id
    (downloaded first unless HF_HUB_OFFLINE is set). `needs`: files the caller will read; when none of them is
    in the snapshot, the error says so in one line instead of failing later on a missing file."""
    path = Path(name)
    if path.exists():
        return path
    text = str(name)
    if not looks_like_model_id(text):
        raise FileNotFoundError(f"{text} does not exist (no such file or folder, and not a Hugging Face model id "
                                "owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{text} looks like a Hugging Face model id; {MISSING_HUB}") from None
    cache, offline = hub_cache_dir(), hub_offline()
    try:
        folder = Path(snapshot_download(text, cache_dir=cache, local_files_only=offline,
                                        allow_patterns=allow_patterns or MODEL_FILES))
    except Exception as error:  # the hub library's errors: not cached, offline, unknown or gated repository, ...
        if offline:
            raise FileNotFoundError(f"{text}: not in the hub cache {cache} and HF_HUB_OFFLINE is set (download it "
                                    "once online, or unset HF_HUB_OFFLINE)") from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"{text}: could not fetch the model from the Hugging Face hub into {cache} "
                                f"({type(error).__name__}: {reason})") from None
    if needs and not any((folder / need).exists() for need in needs):
        raise FileNotFoundError(f"{text}: the cached snapshot {folder} has none of {', '.join(needs)}"
                                + (" and HF_HUB_OFFLINE is set" if offline else ""))
    return folder
