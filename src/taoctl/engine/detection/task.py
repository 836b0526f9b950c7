"""What TAO's TF1 detection specs (detectnet_v2, yolo_v3, yolo_v4, ssd, ...) name alike for training."""

from __future__ import annotations

from taoctl.engine.task import Task


class TF1DetectionTask(Task):
    """``random_seed``, ``training_config.num_epochs`` and ``checkpoint_interval``, proto3's 0 meaning
    TAO's defaults (seed 42, one epoch, a checkpoint every epoch); export's labels.txt."""

    def seed(self, run):
        return int(run.spec.random_seed) or 42

    def epochs(self, run):
        return int(run.spec.training_config.num_epochs) or 1

    def checkpoint_interval(self, run):
        return int(run.spec.training_config.checkpoint_interval) or 1

    def after_export(self, run, manifest, output):
        """labels.txt beside the ONNX (DeepStream's labelfile), never overwriting a different one."""
        from taoctl.fileio import write_atomic

        text = "\n".join(manifest["classes"]) + "\n"
        path = output.with_name("labels.txt")
        if path.exists() and path.read_text() != text:
            path = output.with_suffix(".labels.txt")
        write_atomic(path, text)
