"""Publishing to the Hugging Face Hub: model cards with measured results, a complete upload folder, and the push.

from vlalign.hub import push_folder_to_hub, save_for_hub

folder = save_for_hub(model, processor, "out/albef-hub", metrics=metrics, dataset_name="MS-COCO 5K",
                      training_args=trainer.args, model_id="your-name/albef-coco")
push_folder_to_hub(folder, "your-name/albef-coco")
"""

from .access import HubAccessError, check_write_access
from .card import (
    DEFAULT_TAGS,
    MAIN_TRAINING_ARGUMENTS,
    PIPELINE_TAG,
    TASK_TYPE,
    build_model_card,
    config_summary,
    retrieval_eval_results,
    save_model_card,
    template_path,
    training_args_summary,
    zero_shot_eval_results,
)
from .publish import DEFAULT_COMMIT_MESSAGE, REQUIRED_FILES, published_model, push_folder_to_hub, save_for_hub

__all__ = [
    "DEFAULT_COMMIT_MESSAGE",
    "DEFAULT_TAGS",
    "HubAccessError",
    "MAIN_TRAINING_ARGUMENTS",
    "PIPELINE_TAG",
    "REQUIRED_FILES",
    "TASK_TYPE",
    "build_model_card",
    "check_write_access",
    "config_summary",
    "published_model",
    "push_folder_to_hub",
    "retrieval_eval_results",
    "save_for_hub",
    "save_model_card",
    "template_path",
    "training_args_summary",
    "zero_shot_eval_results",
]
