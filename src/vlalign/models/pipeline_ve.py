"""The `visual-entailment` pipeline for vlalign's entailment models (SNLI-VE): does the image entail, contradict or
leave open a hypothesis?

```python
>>> import vlalign  # registers the task (`vlalign.auto.register_ve_pipeline`)
>>> from transformers import pipeline
>>> ve = pipeline("visual-entailment", model="path/to/albef-ve")
>>> ve("dogs.jpg", hypothesis="Two dogs play in the snow.")
[{'label': 'entailment', 'score': 0.91}, {'label': 'neutral', 'score': 0.07}, {'label': 'contradiction', 'score': 0.02}]
```

transformers has no pipeline task for image + text classification, so this is a custom one. Saved entailment folders
name it under `custom_pipelines` with this file beside the code, so without vlalign
`pipeline("visual-entailment", model=folder, trust_remote_code=True)` runs it (the folder's `auto_map` names the
entailment class for `AutoModel`, the Auto class the entry gives).

This file is shipped with saved models (remote code): it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import torch
from transformers.pipelines import Pipeline

from .pipeline_image_text import ImageTextPipelineMixin, check_top_k

TASK = "visual-entailment"
#: the `config.json` entry that points `transformers.pipeline` at this file (`custom_pipelines[TASK]`)
REMOTE_PIPELINE = {"impl": "pipeline_ve.VisualEntailmentPipeline", "pt": ["AutoModel"], "type": "multimodal"}


class VisualEntailmentPipeline(ImageTextPipelineMixin, Pipeline):
    """Classify (image, hypothesis) pairs as contradiction / neutral / entailment with a vlalign entailment model
    (`<Method>ForVisualEntailment`).

    `pipe(image, hypothesis=...)`, `pipe({"image": ..., "hypothesis": ...})` or a list of such dicts. Images may be
    PIL images, paths, URLs or base64 strings; hypotheses are cleaned as the official ones (processor preset
    `"train"`: `pre_caption` to 30 words).

    Keyword arguments (at construction, or per call):
        top_k (`int`, defaults to all three): labels returned per pair.
        timeout (`float`): seconds to wait for an image URL.

    Returns a list of `{"label": str, "score": float}` (softmax over the three labels), best first (a list of such
    lists for a list of pairs).
    """

    text_key = "hypothesis"
    task_name = TASK

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(self.model, "cls_head"):
            raise TypeError(
                f"The {TASK} pipeline needs a vlalign entailment model (`<Method>ForVisualEntailment`); got "
                f"{type(self.model).__name__}. Load the folder with vlalign.AutoModelForVisualEntailment."
            )
        self._require_processor()

    def __call__(self, image, hypothesis: str | None = None, **kwargs):
        """Classify `hypothesis` against `image`, or each `{"image", "hypothesis"}` dict of a list."""
        return self._call_pairs(image, hypothesis, **kwargs)

    def _sanitize_parameters(self, top_k=None, timeout=None):
        preprocess, postprocess = {}, {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if top_k is not None:
            postprocess["top_k"] = check_top_k(top_k)
        return preprocess, {}, postprocess

    def preprocess(self, inputs: dict, timeout=None) -> dict:
        image, hypothesis = self._load_pair(inputs, timeout)
        model_inputs = dict(self.processor(images=image, text=hypothesis, preset="train"))
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        model_inputs.pop("token_type_ids", None)
        return model_inputs

    def _forward(self, model_inputs: dict) -> dict:
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs: dict, top_k: int | None = None) -> list[dict]:
        probabilities = torch.softmax(model_outputs["logits"][0].float(), dim=-1)
        id2label = self.model.config.id2label
        results = [{"label": id2label[index], "score": float(p)} for index, p in enumerate(probabilities.tolist())]
        return sorted(results, key=lambda result: -result["score"])[: top_k or len(results)]


__all__ = ["REMOTE_PIPELINE", "TASK", "VisualEntailmentPipeline"]
