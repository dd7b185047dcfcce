"""The `visual-reasoning` pipeline for vlalign's NLVR2 models: is a sentence true of a pair of images?

```python
>>> import vlalign  # registers the task (`vlalign.auto.register_nlvr_pipeline`)
>>> from transformers import pipeline
>>> reason = pipeline("visual-reasoning", model="path/to/albef-nlvr2")
>>> reason(("left.jpg", "right.jpg"), sentence="The left image has two dogs and the right image has one.")
[{'label': 'True', 'score': 0.83}, {'label': 'False', 'score': 0.17}]
```

transformers has no pipeline task for a sentence over two images, so this is a custom one. Saved NLVR2 folders name it
under `custom_pipelines` with this file beside the code, so without vlalign
`pipeline("visual-reasoning", model=folder, trust_remote_code=True)` runs it (the folder's `auto_map` names the
reasoning class for `AutoModel`, the Auto class the entry gives).

This file is shipped with saved models (remote code): it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import torch
from transformers.image_utils import load_image
from transformers.pipelines import Pipeline

TASK = "visual-reasoning"
#: the official NLVR2 classes (`nlvr_dataset.py`: "True" → 1, else 0)
NLVR_ID2LABEL = {0: "False", 1: "True"}
#: the `config.json` entry that points `transformers.pipeline` at this file (`custom_pipelines[TASK]`)
REMOTE_PIPELINE = {"impl": "pipeline_nlvr.VisualReasoningPipeline", "pt": ["AutoModel"], "type": "multimodal"}


def _is_pair(images) -> bool:
    return isinstance(images, (list, tuple)) and len(images) == 2 and not any(isinstance(i, dict) for i in images)


class VisualReasoningPipeline(Pipeline):
    """Say whether sentences are true of image pairs with a vlalign NLVR2 model (`<Method>ForVisualReasoning`).

    `pipe((left, right), sentence=...)`, `pipe({"images": (left, right), "sentence": ...})` or a list of such dicts.
    Images may be PIL images, paths, URLs or base64 strings, left first (the official `images[0]`, `images[1]`);
    sentences are cleaned as the official ones (processor preset `"train"`: `pre_caption` to 30 words).

    Keyword arguments (at construction, or per call):
        top_k (`int`, defaults to both): labels returned per pair.
        timeout (`float`): seconds to wait for an image URL.

    Returns a list of `{"label": "True" | "False", "score": float}` (softmax over the two classes), best first (a
    list of such lists for a list of inputs).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not (hasattr(self.model, "cls_head") and hasattr(self.model, "fuse_pairs")):
            raise TypeError(
                f"The {TASK} pipeline needs a vlalign NLVR2 model (`<Method>ForVisualReasoning`); got "
                f"{type(self.model).__name__}. Load the folder with vlalign.AutoModelForVisualReasoning."
            )
        if self.processor is None:
            raise ValueError(
                f"The {TASK} pipeline needs the model's processor; save one next to the model "
                "(`processor.save_pretrained(folder)`) or pass `processor=`."
            )

    def __call__(self, images, sentence: str | None = None, **kwargs):
        """Judge `sentence` against the (left, right) `images`, or each `{"images", "sentence"}` dict of a list."""
        if isinstance(images, dict) or (isinstance(images, list) and images and isinstance(images[0], dict)):
            if sentence is not None:
                raise ValueError("Pass the sentence inside the dicts or as sentence=..., not both.")
            return super().__call__(images, **kwargs)
        if not _is_pair(images):
            raise ValueError("Pass two images, (left, right), or {'images': (left, right), 'sentence': ...} dicts.")
        if sentence is None:
            raise ValueError("Pass the sentence: pipe((left, right), sentence='...').")
        return super().__call__({"images": tuple(images), "sentence": sentence}, **kwargs)

    def _sanitize_parameters(self, top_k=None, timeout=None):
        preprocess, postprocess = {}, {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
            postprocess["top_k"] = top_k
        return preprocess, {}, postprocess

    def preprocess(self, inputs: dict, timeout=None) -> dict:
        if not isinstance(inputs, dict) or {"images", "sentence"} - inputs.keys() or not _is_pair(inputs["images"]):
            raise ValueError("Each input must be a dict with 'images' (left, right) and a 'sentence'.")
        images = [load_image(image, timeout=timeout) for image in inputs["images"]]
        model_inputs = dict(self.processor(images=images, text=inputs["sentence"], preset="train"))
        # [1, 2, 3, H, W]: one pair per input, so batched inputs stack into [pairs, 2, 3, H, W]
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype).unsqueeze(0)
        model_inputs.pop("token_type_ids", None)
        return model_inputs

    def _forward(self, model_inputs: dict) -> dict:
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs: dict, top_k: int | None = None) -> list[dict]:
        probabilities = torch.softmax(model_outputs["logits"][0].float(), dim=-1)
        results = [{"label": NLVR_ID2LABEL[i], "score": float(p)} for i, p in enumerate(probabilities.tolist())]
        return sorted(results, key=lambda result: -result["score"])[: top_k or len(results)]


__all__ = ["NLVR_ID2LABEL", "REMOTE_PIPELINE", "TASK", "VisualReasoningPipeline"]
