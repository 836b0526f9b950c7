"""The one place taoctl's tasks are declared.

The launcher knows a task by name only: its group (which framework image runs it), the
subtasks TAO's launcher offers for it, and the name of the package under ``taoctl.tasks``
that implements it. Which subtasks are implemented is discovered from that package's
``scripts/`` folder (one module per subtask, as TAO's networks do), without importing it,
so the launcher never pulls in torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from taoctl import __version__
from taoctl.errors import TaoctlError, did_you_mean

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"

VISION = "vision"
CONVERSATIONAL = "conversational"

# The TAO 5 command groups (`taoctl model|dataset|deploy <task> <action>`).
MODEL, DATASET, DEPLOY = "model", "dataset", "deploy"

_DETECTOR = ("dataset_convert", "train", "evaluate", "inference", "prune", "export")
_YOLO = _DETECTOR + ("kmeans",)
_GAZE_LIKE = ("dataset_convert", "train", "evaluate", "inference", "export")
_NEMO = ("download_specs", "train", "finetune", "evaluate", "infer", "export")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    group: str
    tao_subtasks: tuple[str, ...]
    package: str | None = None  # under taoctl.tasks; None while the task is only planned
    aliases: tuple[str, ...] = ()
    cli_groups: tuple[str, ...] = (MODEL,)
    # Tasks such as `augment` take their flags directly: `taoctl augment -a SPEC ...`.
    direct: bool = False
    # The subtasks that run as one process per GPU (-np/--gpus N) under torchrun; as in TAO,
    # every other subtask runs as one process on one device whatever those flags say.
    distributed_subtasks: tuple[str, ...] = ("train",)

    @property
    def scripts_dir(self) -> Path | None:
        return TASKS_DIR / self.package / "scripts" if self.package else None

    @property
    def implemented_subtasks(self) -> tuple[str, ...]:
        folder = self.scripts_dir
        if folder is None or not folder.is_dir():
            return ()
        if self.direct:  # a package may hold several direct tasks (augment, augmentation)
            return (self.name,) if (folder / f"{self.name}.py").exists() else ()
        return tuple(sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")))

    @property
    def implemented(self) -> bool:
        return bool(self.implemented_subtasks)

    @property
    def deploy_actions(self) -> tuple[str, ...]:
        """``taoctl deploy <task> <action>``'s actions: the modules in ``scripts/deploy/`` (TAO 5's tao-deploy)."""
        folder = self.scripts_dir / DEPLOY if self.scripts_dir else None
        if folder is None or not folder.is_dir():
            return ()
        return tuple(sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")))

    @property
    def groups(self) -> tuple[str, ...]:
        """The TAO 5 command groups the task answers in; a task with deploy actions is in ``deploy`` too."""
        return self.cli_groups + ((DEPLOY,) if DEPLOY not in self.cli_groups and self.deploy_actions else ())

    @property
    def subtasks(self) -> tuple[str, ...]:
        extra = tuple(s for s in self.implemented_subtasks if s not in self.tao_subtasks)
        return self.tao_subtasks + extra

    def module_for(self, subtask: str) -> str:
        """Dotted name of the module holding the subtask's click command (``deploy.<action>``: ``scripts/deploy/``)."""
        return f"taoctl.tasks.{self.package}.scripts.{subtask}"

    def check_subtask(self, subtask: str) -> None:
        if subtask in self.implemented_subtasks:
            return
        group, dot, action = subtask.partition(".")
        if dot and group == DEPLOY:  # a deploy action travels as deploy.<action>, its module's dotted name
            if action in self.deploy_actions:
                return
            choices = self.deploy_actions
            raise TaoctlError(f'unknown action "{action}" for taoctl deploy {self.name}'
                              f"{did_you_mean(action, choices)}; actions: {', '.join(choices) or 'none'}")
        if subtask in self.subtasks:
            command = self.name if self.direct else f"{self.name} {subtask}"  # a direct task is its own subtask
            raise TaoctlError(f"`{command}` is not implemented yet in taoctl {__version__}")
        choices = self.subtasks + ("run",)
        raise TaoctlError(
            f'unknown subtask "{subtask}" for task {self.name}{did_you_mean(subtask, choices)}; '
            f"subtasks: {', '.join(choices)}"
        )


TASKS: tuple[Task, ...] = (
    # vision
    Task("augment", VISION, ("augment",), package="augment", direct=True),
    Task("augmentation", VISION, ("augmentation",), package="augment", cli_groups=(DATASET,), direct=True),
    Task("bpnet", VISION, _DETECTOR + ("trtexec",)),
    Task("classification", VISION, ("train", "evaluate", "inference", "prune", "export", "calibration_tensorfile"),
         package="classification", aliases=("classification_tf1",)),
    Task("converter", VISION, ("converter",), direct=True, cli_groups=(DEPLOY,)),
    Task("detectnet_v2", VISION, _DETECTOR + ("calibration_tensorfile",), package="detectnet_v2"),
    Task("dssd", VISION, _DETECTOR, package="dssd"),
    Task("efficientdet", VISION, _DETECTOR, aliases=("efficientdet_tf1",)),
    Task("emotionnet", VISION, _GAZE_LIKE),
    Task("faster_rcnn", VISION, _DETECTOR, package="faster_rcnn"),
    Task("fpenet", VISION, _GAZE_LIKE),
    Task("gazenet", VISION, _GAZE_LIKE),
    Task("gesturenet", VISION, _GAZE_LIKE),
    Task("heartratenet", VISION, _GAZE_LIKE),
    Task("lprnet", VISION, ("train", "evaluate", "inference", "export")),
    Task("mask_rcnn", VISION, _DETECTOR),
    Task("multitask_classification", VISION, ("train", "evaluate", "inference", "prune", "export", "confmat")),
    Task("retinanet", VISION, _DETECTOR, package="retinanet"),
    Task("ssd", VISION, _DETECTOR, package="ssd"),
    Task("unet", VISION, ("train", "evaluate", "inference", "prune", "export")),
    Task("yolo_v3", VISION, _YOLO, package="yolo_v3"),
    Task("yolo_v4", VISION, _YOLO, package="yolo_v4"),
    Task("yolo_v4_tiny", VISION, _YOLO, package="yolo_v4_tiny"),
    # conversational
    Task("action_recognition", CONVERSATIONAL, ("train", "evaluate", "inference", "export")),
    Task("intent_slot_classification", CONVERSATIONAL, _NEMO, package="intent_slot_classification"),
    Task("n_gram", CONVERSATIONAL, ("train", "evaluate", "infer", "export")),
    Task("punctuation_and_capitalization", CONVERSATIONAL, ("dataset_convert",) + _NEMO,
         package="punctuation_and_capitalization"),
    Task("question_answering", CONVERSATIONAL, _NEMO + ("infer_onnx",), package="question_answering"),
    Task("spectro_gen", CONVERSATIONAL, ("dataset_convert", "train", "infer", "export", "finetune", "pitch_stats")),
    Task("speech_to_text", CONVERSATIONAL, ("dataset_convert", "create_tokenizer") + _NEMO),
    Task("speech_to_text_citrinet", CONVERSATIONAL, ("dataset_convert", "create_tokenizer") + _NEMO),
    Task("text_classification", CONVERSATIONAL, ("dataset_convert",) + _NEMO + ("infer_onnx",),
         package="text_classification"),
    Task("token_classification", CONVERSATIONAL, ("dataset_convert",) + _NEMO, package="token_classification"),
    Task("vocoder", CONVERSATIONAL, ("train", "infer", "export", "finetune")),
)

_BY_NAME = {t.name: t for t in TASKS} | {a: t for t in TASKS for a in t.aliases}


def task_names(cli_group: str | None = None) -> list[str]:
    """Every name a task answers to (aliases included), optionally within a TAO 5 group."""
    return sorted(n for n, t in _BY_NAME.items() if cli_group is None or cli_group in t.groups)


def get_task(name: str, cli_group: str | None = None) -> Task:
    task = _BY_NAME.get(name)
    if task is not None and (cli_group is None or cli_group in task.groups):
        return task
    where = f"taoctl {cli_group}" if cli_group else "taoctl"
    raise TaoctlError(f'unknown task "{name}" for {where}{did_you_mean(name, task_names(cli_group))}; '
                      f"`taoctl info --verbose` lists the tasks")
