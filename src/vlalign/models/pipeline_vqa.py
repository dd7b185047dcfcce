"""The `visual-question-answering` pipeline for vlalign's VQA models: free answers by generation, or the best answers
of a candidate list by the official answer ranking.

```python
>>> import vlalign  # registers the task; without vlalign: pipeline(..., trust_remote_code=True)
>>> from transformers import pipeline
>>> vqa = pipeline("visual-question-answering", model="path/to/albef-vqa")
>>> vqa("cat.jpg", question="What animal is on the sofa?")
[{'score': 0.93, 'answer': 'cat'}]
>>> vqa("cat.jpg", question="What animal is on the sofa?", candidate_answers=["cat", "dog", "bird"], top_k=2)
[{'score': 0.88, 'answer': 'cat'}, {'score': 0.10, 'answer': 'dog'}]
```

transformers 5 removed its own `visual-question-answering` task (it lists it in `REMOVED_TASKS` and points to
`image-text-to-text`, which needs a chat model); `register_vqa_pipeline` registers this pipeline under the name again
and lifts that refusal for it, in this process. Saved folders name it under `custom_pipelines`, where
`transformers.pipeline` finds it before the refusal, so `trust_remote_code=True` runs it without vlalign.

This file is shipped with saved models (remote code): it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForVisualQuestionAnswering
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from .pipeline_image_text import ImageTextPipelineMixin, check_top_k

TASK = "visual-question-answering"
#: the `config.json` entry that points `transformers.pipeline` at this file (`custom_pipelines[TASK]`)
REMOTE_PIPELINE = {
    "impl": "pipeline_vqa.VisualQuestionAnsweringPipeline",
    "pt": ["AutoModelForVisualQuestionAnswering"],
    "type": "multimodal",
}


class VisualQuestionAnsweringPipeline(ImageTextPipelineMixin, Pipeline):
    """Answer questions about images with a vlalign VQA model (`<Method>ForQuestionAnswering`).

    `pipe(image, question=...)`, `pipe({"image": ..., "question": ...})` or a list of such dicts. Images may be PIL
    images, paths, URLs or base64 strings; questions are cleaned as the official test questions (processor preset
    `"vqa_test_question"`).

    Keyword arguments (at construction, or per call):
        top_k (`int`, defaults to 1): answers returned per question.
        candidate_answers (`list[str]`): rank these answers with the official two-stage ranking (`rank_answers`,
            `config.k_test` first-stage candidates, at least `top_k`) instead of generating; scores are the softmax
            over the re-ranked candidates.
        timeout (`float`): seconds to wait for an image URL.
        other keyword arguments: passed to `generate` (`max_new_tokens`, `num_beams`, ...). Generated answers are
            scored with the probability the decoder gives them; `top_k > 1` returns that many beams.

    Returns a list of `{"score": float, "answer": str}`, best first (a list of such lists for a list of questions).
    """

    text_key = "question"
    task_name = TASK

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._require_processor()
        if not hasattr(self.model, "rank_answers"):
            raise TypeError(
                f"The {TASK} pipeline needs a vlalign VQA model (`<Method>ForQuestionAnswering`); "
                f"got {type(self.model).__name__}. Load the folder with AutoModelForVisualQuestionAnswering."
            )

    def __call__(self, image, question: str | None = None, **kwargs):
        """Answer `question` about `image`, or each `{"image", "question"}` dict of a list."""
        return self._call_pairs(image, question, **kwargs)

    def _sanitize_parameters(self, top_k=None, candidate_answers=None, timeout=None, **generate_kwargs):
        preprocess, forward, postprocess = {}, dict(generate_kwargs), {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if candidate_answers is not None:
            candidates = [candidate_answers] if isinstance(candidate_answers, str) else list(candidate_answers)
            if not candidates:
                raise ValueError("candidate_answers is empty; pass at least one answer to rank.")
            preprocess["candidate_answers"] = candidates
        if top_k is not None:
            forward["top_k"] = postprocess["top_k"] = check_top_k(top_k)
        return preprocess, forward, postprocess

    def preprocess(self, inputs: dict, candidate_answers: list[str] | None = None, timeout=None) -> dict:
        image, question = self._load_pair(inputs, timeout)
        model_inputs = dict(self.processor(images=image, text=question, preset="vqa_test_question"))
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        model_inputs.pop("token_type_ids", None)
        if candidate_answers is not None:
            answers = self.processor(text=candidate_answers, preset="vqa_answer")
            model_inputs["answer_input_ids"] = answers["input_ids"]
            model_inputs["answer_attention_mask"] = answers["attention_mask"]
            model_inputs["candidate_answers"] = candidate_answers
        return model_inputs

    def _forward(self, model_inputs: dict, top_k: int = 1, **generate_kwargs) -> dict:
        candidates = model_inputs.pop("candidate_answers", None)
        if candidates is not None:
            k = max(top_k, self.model.config.k_test)
            ranked = self.model.rank_answers(**model_inputs, k=k)
            answers = [candidates[i] for i in ranked.answer_indices[0].tolist()]
            return {"answers": answers, "scores": ranked.scores[0]}
        if top_k > 1:
            generate_kwargs = {"num_beams": top_k, **generate_kwargs, "num_return_sequences": top_k}
        generated = self.model.generate(**model_inputs, **generate_kwargs)
        return {
            "answers": self.processor.batch_decode(generated, skip_special_tokens=True),
            "scores": self._answer_probabilities(model_inputs, generated),
        }

    def _answer_probabilities(self, model_inputs: dict, generated: torch.Tensor) -> torch.Tensor:
        """P(answer | image, question) the decoder gives each generated answer (through its first [SEP])."""
        ended = (generated == self.model.answer_end_token_id).long().cumsum(1)
        mask = ((ended - (generated == self.model.answer_end_token_id).long()) == 0).long()
        answer_ids = generated.masked_fill(mask == 0, self.model.config.text_config.pad_token_id)
        repeats = generated.shape[0]
        questions = {name: tensor.expand(repeats, *tensor.shape[1:]) for name, tensor in model_inputs.items()}
        return self.model.answer_log_likelihood(
            **questions, answer_input_ids=answer_ids, answer_attention_mask=mask
        ).exp()

    def postprocess(self, model_outputs: dict, top_k: int = 1) -> list[dict]:
        results = [
            {"score": float(score), "answer": answer}
            for answer, score in zip(model_outputs["answers"], model_outputs["scores"].tolist(), strict=True)
        ]
        return sorted(results, key=lambda result: -result["score"])[:top_k]


def register_vqa_pipeline() -> None:
    """Register `visual-question-answering` with `transformers.pipeline` (idempotent), lifting transformers 5's
    refusal of the removed task name for this pipeline."""
    from transformers import pipelines

    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is None or registered.get("impl") is not VisualQuestionAnsweringPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=VisualQuestionAnsweringPipeline, pt_model=AutoModelForVisualQuestionAnswering,
            type="multimodal",
        )  # fmt: skip
    getattr(pipelines, "REMOVED_TASKS", {}).pop(TASK, None)


__all__ = ["REMOTE_PIPELINE", "TASK", "VisualQuestionAnsweringPipeline", "register_vqa_pipeline"]
