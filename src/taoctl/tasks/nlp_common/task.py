"""The base of TAO's conversational NLP tasks: an encoder (transformers) with a task head, on the engine.

A task subclass gives its spec kind, data reading (``examples``), head, loss, evaluator and infer
writer; this base does what they share: the encoder and tokenizer (``encoder.py``), the model file's
manifest (encoder config, tokenizer files, label maps, so that ``-m`` alone rebuilds the model),
NeMo's optimizer and schedule, ``finetune`` from a trained model, TAO's
``checkpoints/trained-model.tlt``, and export: ONNX with dynamic batch and sequence whose metadata
carries the manifest (so evaluating the ``.onnx`` needs nothing else), or a ``.riva`` folder archive.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taoctl.engine import modelfile, optim
from taoctl.engine.task import OnnxPredictor, Run, Task, TorchPredictor, is_onnx
from taoctl.errors import TaoctlError
from taoctl.engine.cli import echo
from taoctl.fileio import atomic_path, write_atomic
from taoctl.tasks.nlp_common import encoder as lm

# The ONNX metadata key holding the model file's manifest.
ONNX_MANIFEST_KEY = "taoctl_manifest"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Training inputs a model file keeps, on which export checks the ONNX against PyTorch.
SAMPLE_TEXTS = 16
PLAIN_SENTENCES = ("are we still meeting for lunch tomorrow", "the quick brown fox jumps over the lazy dog",
                   "Call me at six, please.", "what is the weather like in paris")


class EncoderModel(nn.Module):
    """The encoder and a task's heads: ``forward(input_ids, attention_mask, token_type_ids)`` -> the heads'
    outputs (``heads(hidden states, attention_mask)``)."""

    def __init__(self, encoder: nn.Module, heads: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.head_names = ("heads",)

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        return self.heads(hidden, attention_mask)


class NLPTask(Task):
    """TAO 3.x conversational task on a transformers encoder; see the module docstring."""

    spec_kind = "experiment"

    # ------------------------------------------------------------------ to implement per task
    def build_heads(self, run: Run, hidden: int, labels: dict) -> nn.Module:
        raise NotImplementedError

    def heads_from_manifest(self, manifest: dict, hidden: int) -> nn.Module:
        raise NotImplementedError

    def output_names(self, manifest: dict) -> tuple[str, ...]:
        raise NotImplementedError

    def labels(self, run: Run) -> dict:
        """The label maps training needs, recorded in the manifest (e.g. ``{"classes": [...]}``)."""
        raise NotImplementedError

    def max_seq_length(self, spec) -> int:
        return spec.model.dataset.max_seq_length

    # Spec fields that may name the data folder (the first set wins), and what it holds (for the error line).
    data_dir_fields: tuple[str, ...] = ("data_dir",)
    data_dir_holds: str = ""

    def data_dir(self, spec) -> Path:
        from taoctl.engine.spec import field_value

        folder = next((value for name in self.data_dir_fields if (value := field_value(spec, name))), None)
        if not folder:
            raise TaoctlError(f"data_dir is not set: pass data_dir=/path/to/data ({self.data_dir_holds})")
        return Path(folder)

    def in_data_dir(self, spec, name: str) -> Path:
        """A data file the spec names: as given when absolute, else in data_dir."""
        return Path(name) if Path(name).is_absolute() else self.data_dir(spec) / name

    # ------------------------------------------------------------------ spec and paths
    def spec_kind_for(self, run):
        return "dataset_convert" if run.subtask == "dataset_convert" else self.spec_kind

    def required_spec(self, subtask, flags):
        return subtask

    def dry_run_paths(self, run):
        return {"-m": run.flags["model_path"]} if run.flags.get("model_path") else {}

    def training_device(self, run):
        from taoctl.engine.device import select_device

        gpus = run.flags.get("gpus") or 1
        return select_device(gpus, run.flags.get("gpu_index"), bool(run.flags.get("use_amp")))

    def epochs(self, run):
        return run.spec.trainer.max_epochs

    def model_name(self, run):
        return "finetuned-model" if run.subtask == "finetune" else "trained-model"

    def optimization(self, run, steps_per_epoch):
        return optim.from_nemo(run.spec.optim, steps_per_epoch, self.epochs(run))

    def trainer_options(self, run):
        clip = run.spec.trainer.gradient_clip_val
        return {"clip_grad_norm": clip} if clip else {}

    # ------------------------------------------------------------------ tokenizer and model
    def tokenizer(self, run: Run):
        spec = run.spec
        name = spec.model.tokenizer.tokenizer_name or spec.model.language_model.pretrained_model_name
        tokenizer = lm.load_tokenizer(name)
        if spec.model.tokenizer.special_tokens:
            tokenizer.add_special_tokens(dict(spec.model.tokenizer.special_tokens))
        return tokenizer

    def run_tokenizer(self, run: Run, manifest: dict | None = None):
        """The tokenizer of this run: finetune's, evaluate's and infer's from the model file, train's from the spec."""
        if manifest is not None:
            return self.manifest_tokenizer(manifest)
        return self.tokenizer(run)

    def manifest_tokenizer(self, manifest: dict):
        return lm.tokenizer_from_files(modelfile.unpack_assets("the model file", manifest["tokenizer_files"]))

    def finetune_source(self, run: Run):
        """finetune's ``-m`` model file and its manifest, or (None, None) for train."""
        if run.subtask != "finetune":
            return None, None
        path = run.flags.get("model_path")
        if not path:
            raise TaoctlError("finetune needs the trained model: pass -m trained-model.tlt")
        model, manifest = self.load_model(path, run.key)
        return model, manifest

    def build_model(self, run, data):
        model = getattr(data, "finetune_model", None)
        if model is not None:
            return model.train()
        encoder = lm.load_encoder(run.spec.model.language_model)
        if len(data.tokenizer) > encoder.get_input_embeddings().num_embeddings:
            encoder.resize_token_embeddings(len(data.tokenizer))  # special_tokens added to the vocabulary
        data.encoder_config = lm.encoder_config(encoder)  # for the manifest, which the runner asks for next
        return EncoderModel(encoder, self.build_heads(run, encoder.config.hidden_size, data.labels))

    def model_from_manifest(self, manifest):
        encoder = lm.encoder_from_config(manifest["encoder_config"])
        return EncoderModel(encoder, self.heads_from_manifest(manifest, encoder.config.hidden_size))

    def manifest(self, run, data, spec_text):
        source = getattr(data, "finetune_manifest", None)
        if source is not None:
            return {k: v for k, v in source.items() if k not in ("layers", "epoch", "metrics", "format",
                                                                 "format_version", "taoctl_version")} | {
                "spec_text": spec_text, "finetuned_from": run.flags.get("model_path")}
        return {"task": self.name, "encoder_config": data.encoder_config,
                "tokenizer_files": modelfile.pack_assets(lm.tokenizer_files(data.tokenizer)),
                "max_seq_length": self.max_seq_length(run.spec), "labels": data.labels,
                "heads": self.head_config(run), "input_names": list(INPUT_NAMES),
                "sample_texts": list(data.sample_texts[:SAMPLE_TEXTS]), "spec_text": spec_text}

    def head_config(self, run: Run) -> dict:
        return {}

    def prepare(self, run: Run) -> dict:
        """What train_data needs first: the tokenizer, labels, the data section it reads (``what``:
        ``training_ds``, or ``finetuning_ds`` for finetune; ``section``), ``max_length`` (a fine-tuned model
        keeps its own) and (finetune) the model being fine-tuned with its manifest."""
        what = "finetuning_ds" if run.subtask == "finetune" else "training_ds"
        common = {"what": what, "section": getattr(run.spec, what)}
        model, manifest = self.finetune_source(run)
        if manifest is not None:
            return {**common, "tokenizer": self.manifest_tokenizer(manifest), "labels": manifest["labels"],
                    "max_length": manifest["max_seq_length"], "finetune_model": model, "finetune_manifest": manifest}
        return {**common, "tokenizer": self.tokenizer(run), "labels": self.labels(run),
                "max_length": self.max_seq_length(run.spec), "finetune_model": None, "finetune_manifest": None}

    def train_loader(self, run: Run, prepared: dict, features: list[dict]):
        """The training loader of ``features`` with the section's batch size, shuffling and drop_last."""
        section = prepared["section"]
        return data_loader(features, section.batch_size, section.shuffle, prepared["tokenizer"].pad_token_id,
                           section.drop_last, seed=self.seed(run))

    # ------------------------------------------------------------------ preprocessing
    def encode(self, tokenizer, texts, max_length: int, pairs=None) -> dict[str, np.ndarray]:
        """Token ids of ``texts`` (sentences, or word lists for token-level tasks; and ``pairs``), padded to the
        longest, cut at ``max_length``."""
        texts = list(texts)
        words = bool(texts) and isinstance(texts[0], (list, tuple))
        encoded = tokenizer(texts, list(pairs) if pairs is not None else None, padding=True, truncation=True,
                            max_length=max_length, return_tensors="np", return_token_type_ids=True,
                            is_split_into_words=words)
        return {name: encoded[name].astype(np.int64) for name in INPUT_NAMES}

    def preprocess(self, manifest):
        tokenizer = self.manifest_tokenizer(manifest)
        length = manifest["max_seq_length"]
        return lambda texts: self.encode(tokenizer, texts, length)

    # ------------------------------------------------------------------ training
    def after_training(self, run, trainer):
        """TAO's ``<results>/checkpoints/trained-model.tlt`` (finetune: ``finetuned-model.tlt``): the best
        validated epoch's model, else the last one."""
        best = trainer.best_weights_path
        source = best if best.is_file() else trainer.weights_path(trainer.last_epoch)
        target = run.results_dir / "checkpoints" / f"{self.model_name(run)}.tlt"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)
        if trainer.history:
            last = trainer.history[-1]
            shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("val_"))
            run.echo(f"Final epoch {last['epoch']}: {shown}")
        run.echo(f"Model: {target}" + (f" (epoch {trainer.best['epoch']}, best {trainer.best['metric']})"
                                       if trainer.best else ""))

    # ------------------------------------------------------------------ evaluate / infer
    def default_model_path(self, run):
        return getattr(run.spec, "restore_from", None) or None

    def model_path_hint(self, run):
        return " or set restore_from"

    def predictor(self, run, model_path):
        if is_onnx(model_path) or str(model_path).endswith(".eonnx"):
            manifest = self.onnx_manifest(run, model_path)
            return OnnxPredictor(model_path, self.preprocess(manifest), manifest)
        model, manifest = self.load_model(model_path, run.key)
        return TorchPredictor(model, self.preprocess(manifest), manifest, str(model_path), run.device, run.use_amp)

    def onnx_manifest(self, run, onnx_path):
        import onnx

        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
            raise TaoctlError(f"{onnx_path}: not an ONNX model ({type(exc).__name__})") from None
        props = {p.key: p.value for p in model.metadata_props}
        if ONNX_MANIFEST_KEY not in props:
            raise TaoctlError(f"{onnx_path}: not a taoctl {self.name} export (no tokenizer and labels in its "
                              f"metadata); export it with taoctl {self.name} export")
        manifest = json.loads(props[ONNX_MANIFEST_KEY])
        if manifest.get("task") != self.name:
            raise TaoctlError(f"{onnx_path} is a {manifest.get('task')} model, not a {self.name} model")
        return manifest

    def write_infer_results(self, run: Run, results: list[dict]) -> None:
        """infer's results, one entry per query, as ``<-r>/infer_results.json``."""
        if run.results_dir:
            run.results_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run.results_dir / "infer_results.json", json.dumps(results, indent=1))
            echo(f"Wrote {run.results_dir / 'infer_results.json'}")

    def batches(self, items: list, size: int):
        for start in range(0, len(items), size):
            yield items[start:start + size]

    # ------------------------------------------------------------------ export
    def export_adapter(self, run, model, manifest):
        from taoctl.engine.export import BATCH, Axis, ExportAdapter

        sequence = Axis("sequence", 1, manifest["max_seq_length"])
        names = self.output_names(manifest)
        # Attention as MatMul/Softmax: opset 13's TorchScript export has no scaled_dot_product_attention,
        # and onnxruntime fuses the plain form into its own Attention kernel.
        model.encoder.set_attn_implementation("eager")
        return ExportAdapter(module=model.eval(), input_names=INPUT_NAMES, output_names=names,
                             dynamic_axes={name: {0: BATCH, 1: sequence} for name in INPUT_NAMES},
                             tolerances={name: 1e-3 for name in names}, items="sentences",
                             int8_agreement=self.int8_agreement)

    def int8_agreement(self, fp32: dict, int8: dict) -> str:
        parts = []
        for name, reference in fp32.items():
            same = float(np.mean(np.argmax(reference, -1) == np.argmax(int8[name], -1))) * 100
            parts.append(f"{name} argmax agrees on {same:.1f} %")
        return ", ".join(parts)

    def sample_texts(self, run: Run, manifest: dict, count: int) -> list:
        """Real raw inputs for export's parity check: training examples the model file keeps (a file of taoctl
        0.1.0's first NLP commits keeps none: then a few plain sentences)."""
        return (manifest.get("sample_texts") or list(PLAIN_SENTENCES))[:count]

    def after_export(self, run, manifest, output):
        """The manifest into the ONNX metadata (tokenizer, labels), so the .onnx evaluates alone."""
        import onnx

        model = onnx.load(str(output))
        kept = {k: v for k, v in manifest.items() if k not in ("layers", "spec_text")}
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_MANIFEST_KEY, json.dumps(kept)
        with atomic_path(output) as temporary:
            onnx.save(model, str(temporary))

    def write_riva(self, manifest: dict, onnx_file: Path, target: Path) -> None:
        """``.riva`` is NVIDIA's own format; taoctl writes a zip of the ONNX, the tokenizer files and the label
        maps under that name."""
        files = modelfile.unpack_assets(onnx_file, manifest["tokenizer_files"])
        with atomic_path(target) as temporary:
            with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.write(onnx_file, "model.onnx")
                for name, data in files.items():
                    archive.writestr(f"tokenizer/{Path(name).name}", data)
                archive.writestr("labels.json", json.dumps(manifest["labels"], indent=1))
                archive.writestr("model_config.json", json.dumps(
                    {"task": self.name, "max_seq_length": manifest["max_seq_length"],
                     "inputs": list(INPUT_NAMES), "outputs": list(self.output_names(manifest))}, indent=1))


def data_loader(features: list[dict], batch_size: int, shuffle: bool, pad_id: int, drop_last: bool = False,
                seed: int = 0):
    """Batches of ``features`` padded to their longest; one shard per process when training data-parallel."""
    from taoctl.engine.distributed import distributed_sampler
    from taoctl.tasks.nlp_common.data import Encoded, pad_batch

    dataset = Encoded(features)
    sampler = distributed_sampler(dataset, shuffle, seed)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, drop_last=drop_last, generator=generator,
                                       collate_fn=lambda items: pad_batch(items, pad_id))
