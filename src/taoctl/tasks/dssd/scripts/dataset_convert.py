"""dssd dataset_convert: the one implementation every detector shares."""

from taoctl.tasks.detection_common.dataset_convert import command  # noqa: F401
