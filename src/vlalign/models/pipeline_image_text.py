"""What vlalign's custom pipelines that read one image and one text per input share (`visual-question-answering`,
`visual-entailment`): the call forms `pipe(image, <text>=...)`, `pipe({"image": ..., "<text>": ...})` or a list of
such dicts, the processor they need, the `top_k` check and the image loading.

This file is shipped with saved models (remote code, beside the pipelines that import it): it imports only
transformers.
"""

from __future__ import annotations

from typing import Any

from transformers.image_utils import load_image
from transformers.pipelines import Pipeline


class ImageTextPipelineMixin:
    """Listed before `transformers.Pipeline` among a pipeline's bases. The pipeline names its text `text_key` and its
    task `task_name`, and its `__call__(image, <text_key>=None, **kwargs)` returns `self._call_pairs(...)`."""

    #: the name of the text in the inputs ("question", "hypothesis")
    text_key: str = "text"
    #: the task, named in error messages
    task_name: str = ""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def _require_processor(self) -> None:
        if self.processor is None:
            raise ValueError(
                f"The {self.task_name} pipeline needs the model's processor; save one next to the model "
                "(`processor.save_pretrained(folder)`) or pass `processor=`."
            )

    def _call_pairs(self, image: Any, text: str | None, **kwargs) -> Any:
        """`Pipeline.__call__` on `{"image", text_key}` dicts: the ones given, or one built from `image` and `text`."""
        key = self.text_key
        if isinstance(image, dict) or (isinstance(image, list) and image and isinstance(image[0], dict)):
            if text is not None:
                raise ValueError(f"Pass the {key} inside the dicts or as {key}=..., not both.")
            return Pipeline.__call__(self, image, **kwargs)
        if text is None:
            raise ValueError(f"Pass the {key}: pipe(image, {key}='...') or pipe({{'image': ..., '{key}': ...}}).")
        return Pipeline.__call__(self, {"image": image, key: text}, **kwargs)

    def _load_pair(self, inputs: Any, timeout: float | None) -> tuple[Any, str]:
        """(image, text) of one input dict; the image loaded from a PIL image, path, URL or base64 string."""
        if not isinstance(inputs, dict) or {"image", self.text_key} - inputs.keys():
            raise ValueError(f"Each input must be a dict with an 'image' and a '{self.text_key}'.")
        return load_image(inputs["image"], timeout=timeout), inputs[self.text_key]


def check_top_k(top_k: Any) -> int:
    """`top_k` when it is a positive integer; else a ValueError."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
    return top_k


__all__ = ["ImageTextPipelineMixin", "check_top_k"]
