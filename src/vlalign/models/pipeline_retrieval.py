"""The `zero-shot-image-text-retrieval` pipeline: rank a gallery of captions for each query image, or a gallery of
images for each query caption, with the standard retrieval protocol: rank by the cosine of the projected embeddings
(`get_image_features` / `get_text_features`), optionally re-rank the top candidates with the model's image-text matching
head (`itm_score`, fusion models such as ALBEF; dual encoders such as FDT rank only).

```python
>>> import vlalign  # registers the task; without vlalign: pipeline(..., trust_remote_code=True)
>>> from transformers import pipeline
>>> retriever = pipeline("zero-shot-image-text-retrieval", model="path/to/albef")
>>> retriever("cat.jpg", candidate_texts=["a cat on a sofa", "a dog in a park"], top_k=1)
[{'score': 0.31, 'itc_score': 0.31, 'text': 'a cat on a sofa', 'text_index': 0, 'rank': 1}]
>>> retriever(["a red circle", "a blue star"], candidate_images=[img0, "img1.png"], top_k=2, rerank=True)
[[{'score': 4.2, 'itc_score': 0.52, 'image_index': 0, 'rank': 1}, ...], [...]]
>>> gallery = vlalign.evaluation.load_gallery("coco_gallery")  # embedded once (`vlalign index`), searched with FAISS
>>> retriever("a red circle", candidate_gallery=gallery, top_k=5, rerank=True)
```

Why `__call__` is overridden: the base `Pipeline.__call__` runs `preprocess → _forward → postprocess` once per input
item, so with one item per query the candidate gallery would be re-encoded for every query (and a list of queries
could not share one ITM re-rank batch). Here a whole call — all queries plus the gallery — is one pipeline item:
`__call__` validates the arguments and hands the query list to the base `run_single`, so `preprocess` (image
loading, the processor), `forward` (device placement, `no_grad`, tensors back to the CPU) and `postprocess` keep their
usual roles, while each encoder runs once per call in batches of `batch_size`.

Remote code: this file is shipped in every saved model folder, and the saved `config.json` names it under
`custom_pipelines`, so `pipeline(TASK, model=folder, trust_remote_code=True)` runs it where vlalign is not installed.
Where vlalign is imported, the task is registered in the process and configs drop that entry on load
(`drop_remote_pipeline_when_registered`), so no remote code is asked for.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
from transformers.utils import requires_backends

from .input_checks import open_image, to_rgb

TASK = "zero-shot-image-text-retrieval"
IMAGE_TO_TEXT = "image-to-text"
TEXT_TO_IMAGE = "text-to-image"
SCORE_MODES = ("itm_logit", "itm_plus_itc", "itc_only")
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32
DEFAULT_RERANK_BATCH_SIZE = 128
#: what the pipeline needs from the model (a vlalign `<Method>Model`, or a model whose `base_model` is one)
REQUIRED_MODEL_ATTRIBUTES = ("get_image_features", "get_text_features")
#: share of a caption query's word pieces that may be the tokenizer's unknown token before the pipeline warns
MAX_UNKNOWN_FRACTION = 0.5


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _split_items(value) -> tuple[list, bool]:
    """`(items, single)`: a string, image, array or tensor is one item; any other iterable (list, tuple, a `datasets`
    column, a generator) is a sequence of items."""
    if isinstance(value, (str, bytes, dict, Image.Image, np.ndarray, torch.Tensor)):
        return [value], True
    try:
        return list(value), False
    except TypeError:
        return [value], True


def _as_list(candidates, name: str) -> list:
    """Candidates as a list (a single string or image is a one-item gallery)."""
    items, _ = _split_items(candidates)
    if not items:
        raise ValueError(f"{name} is empty; pass at least one candidate to rank.")
    return items


class ImageTextRetrievalPipeline(Pipeline):
    """Zero-shot image-text retrieval with any vlalign model (`<Method>Model`, or a model holding one as `base_model`).

    Call it with the query or queries first and exactly one gallery:

    - `pipe(image_or_images, candidate_texts=[...])`: images → ranked captions;
    - `pipe(text_or_texts, candidate_images=[...])`: captions → ranked images;
    - `pipe(queries, candidate_gallery=gallery)`: a stored gallery (`vlalign.evaluation.Gallery`, from
      `embed_gallery` / `load_gallery`; captions for an image gallery, images for a caption gallery), searched
      through its FAISS index instead of encoding the candidates, then ITM re-ranked as above with `rerank=True`.

    Images may be PIL images, local paths, URLs or base64 strings (as `transformers.image_utils.load_image` reads
    them), or arrays/tensors the image processor accepts. Texts are cleaned and tokenized with the processor's
    `preset="eval"` (the official retrieval settings).

    Keyword arguments (at construction, or per call):
        top_k (`int`, defaults to 5): results per query (capped at the gallery size).
        rerank (`bool`, defaults to False): re-score the top `k_rerank` ITC candidates of each query
            with `model.itm_score` and rank them by that score (ALBEF's retrieval protocol).
        k_rerank (`int`): candidates re-scored per query; defaults to `max(config.k_test, top_k)`, capped at the
            gallery size. Must be at least `top_k` (only re-scored candidates can be ranked by the re-rank score).
        score_mode (`str`): re-rank score, `"itm_logit"` (ALBEF), `"itm_plus_itc"` or `"itc_only"`; defaults to
            `config.itm_score_mode`.
        batch_size (`int`, defaults to 32): images or captions per encoder forward.
        rerank_batch_size (`int`, defaults to 128): image-caption pairs per fusion (ITM) forward.
        timeout (`float`): seconds to wait for an image URL.

    Returns, per query, a list of dicts sorted best first (a single query gives a single list, a list of queries a
    list of lists, like the zero-shot image classification pipeline):
        `score` (the ranking score: ITC cosine, or the re-rank score with `rerank=True`), `itc_score` (ITC cosine
        similarity of the normalised projections, without the temperature), `rank` (1 = best), and `text` and
        `text_index` (position in `candidate_texts`) or `image_index` (position in `candidate_images`), or the
        gallery row. Equal scores keep gallery order (FAISS order for a stored gallery).

    The whole gallery's preprocessed inputs, and with `rerank=True` its encoder hidden states, stay in memory for
    the call; for benchmark-sized galleries use `vlalign.evaluation.evaluate_retrieval`, which shards and streams.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        requires_backends(self, "vision")
        if self.processor is None or self.image_processor is None or self.tokenizer is None:
            raise ValueError(
                f"The {TASK} pipeline needs a processor with an image processor and a tokenizer (the method's "
                "processor); save one next to the model (`processor.save_pretrained(folder)`) or pass `processor=`."
            )
        missing = [name for name in REQUIRED_MODEL_ATTRIBUTES if not hasattr(self.model.base_model, name)]
        if missing:
            raise TypeError(
                f"The {TASK} pipeline needs a model with `get_image_features` and `get_text_features`; "
                f"{type(self.model).__name__} lacks {', '.join(missing)}."
            )

    @property
    def can_rerank(self) -> bool:
        """Whether the model has an image-text matching head to re-rank with (its class's `supports_itm_rerank`)."""
        return getattr(self.model.base_model, "supports_itm_rerank", False)

    def __call__(self, inputs=None, *, candidate_texts=None, candidate_images=None, candidate_gallery=None, **kwargs):
        """Rank `candidate_texts` for each query image, `candidate_images` for each query text, or a stored
        `candidate_gallery` for each query.

        Args:
            inputs: one query (an image, or a string with `candidate_images`) or a list (any iterable that is not
                itself a string, image, array or tensor) of queries.
            candidate_texts: captions to rank for image queries.
            candidate_images: images to rank for text queries.
            candidate_gallery: a `vlalign.evaluation.Gallery` (embeddings + FAISS index) to search.
            **kwargs: see the class docstring (`top_k`, `rerank`, `k_rerank`, `score_mode`, `batch_size`,
                `rerank_batch_size`, `timeout`).

        Returns:
            A list of result dicts for a single query; a list of such lists for a list of queries.
        """
        if inputs is None:
            raise ValueError(
                "Pass the query first: an image (or list of images) with candidate_texts=..., or a caption (or list "
                "of captions) with candidate_images=.... Usage: pipe(queries, candidate_texts=[...], top_k=5)."
            )
        queries, single = _split_items(inputs)
        if not queries:
            raise ValueError("The list of queries is empty; pass at least one image or caption.")
        if "batch_size" not in kwargs and self._batch_size is not None:
            kwargs["batch_size"] = self._batch_size
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(
            candidate_texts=candidate_texts,
            candidate_images=candidate_images,
            candidate_gallery=candidate_gallery,
            **kwargs,
        )
        preprocess_params = {**self._preprocess_params, **preprocess_params}
        forward_params = {**self._forward_params, **forward_params}
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        self.call_count += 1
        results = self.run_single(queries, preprocess_params, forward_params, postprocess_params)
        return results[0] if single else results

    def _sanitize_parameters(
        self,
        candidate_texts=None,
        candidate_images=None,
        candidate_gallery=None,
        top_k=None,
        rerank=None,
        itm_rerank=None,
        k_rerank=None,
        score_mode=None,
        batch_size=None,
        rerank_batch_size=None,
        timeout=None,
    ):
        preprocess_params, forward_params = {}, {}
        if candidate_texts is not None:
            preprocess_params["candidate_texts"] = candidate_texts
        if candidate_images is not None:
            preprocess_params["candidate_images"] = candidate_images
        if candidate_gallery is not None:
            preprocess_params["candidate_gallery"] = candidate_gallery
        if timeout is not None:
            preprocess_params["timeout"] = timeout

        if itm_rerank is not None:
            warnings.warn("itm_rerank is deprecated; pass rerank.", FutureWarning, stacklevel=3)
            if rerank is not None and bool(rerank) != bool(itm_rerank):
                raise ValueError(f"rerank={rerank!r} and itm_rerank={itm_rerank!r} disagree; pass rerank only.")
            rerank = itm_rerank if rerank is None else rerank
        if rerank is not None:
            forward_params["rerank"] = bool(rerank)
        for name, value in (
            ("top_k", top_k),
            ("k_rerank", k_rerank),
            ("batch_size", batch_size),
            ("rerank_batch_size", rerank_batch_size),
        ):
            if value is not None:
                _check_positive_int(name, value)
                forward_params[name] = value
        if score_mode is not None:
            if score_mode not in SCORE_MODES:
                raise ValueError(f"score_mode={score_mode!r} is not one of {SCORE_MODES}.")
            forward_params["score_mode"] = score_mode
        return preprocess_params, forward_params, {}

    # -----------------------------------------------------------------------------------------------------------------
    # preprocess: load images, run the processor
    # -----------------------------------------------------------------------------------------------------------------

    def _load_images(self, images: list, name: str, timeout: float | None, hint: str = "") -> list:
        loaded = []
        for position, image in enumerate(images):
            if isinstance(image, (np.ndarray, torch.Tensor)):
                loaded.append(image)
                continue
            if not isinstance(image, (str, Image.Image)):
                raise TypeError(
                    f"{name}[{position}] is a {type(image).__name__}{hint}; images must be PIL images, paths, URLs, "
                    "base64 strings, arrays or tensors."
                )
            try:
                if isinstance(image, str) and os.path.isfile(image):
                    image = open_image(image, image)  # size-limited, instead of PIL's decompression-bomb error
                if isinstance(image, Image.Image):  # 16-bit scaled, not clipped white by `load_image`'s RGB
                    image = to_rgb(image, f"{name}[{position}]")
                loaded.append(load_image(image, timeout=timeout))
            except (ValueError, OSError) as error:
                raise ValueError(f"{name}[{position}] could not be loaded as an image{hint}: {error}") from error
        return loaded

    @staticmethod
    def _check_captions(texts: list, name: str, hint: str = "") -> None:
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{position}] is a {type(text).__name__}{hint}; captions must be strings.")
            if not text.strip():
                raise ValueError(f"{name}[{position}] is an empty caption; pass non-empty strings.")

    def _tokenize(self, texts: list, name: str, hint: str = ""):
        self._check_captions(texts, name, hint)
        try:
            return self.processor(text=texts, preset="eval", return_tensors="pt")
        except ValueError as error:  # e.g. a caption that the official cleaning empties ("?!")
            raise ValueError(f"{name}: {error}") from error

    def _warn_unknown_words(self, queries: list[str], input_ids: torch.Tensor) -> None:
        """Warn about each caption query whose word pieces are mostly the tokenizer's unknown token: the vocabulary
        does not cover its words, so the ranking rests on the few known pieces (or on the special tokens alone)."""
        tokenizer = self.tokenizer
        if tokenizer.unk_token_id is None:
            return
        other_special = torch.tensor([i for i in tokenizer.all_special_ids if i != tokenizer.unk_token_id])
        for query, ids in zip(queries, input_ids, strict=True):
            pieces = ids[~torch.isin(ids, other_special)]  # the words' pieces: no [CLS], [SEP], padding
            unknown = int((pieces == tokenizer.unk_token_id).sum())
            if pieces.numel() and unknown / pieces.numel() > MAX_UNKNOWN_FRACTION:
                warnings.warn(
                    f"Query {query!r}: {unknown} of {pieces.numel()} word pieces ({unknown / pieces.numel():.0%}) are "
                    f"the tokenizer's unknown token {tokenizer.unk_token}: its vocabulary ({len(tokenizer)} tokens) "
                    "does not cover these words, so the ranking rests on the few known pieces, if any. Rephrase the "
                    "query with words the model was trained on.",
                    UserWarning,
                    stacklevel=2,
                )

    def _preprocess_gallery(self, queries: list, gallery, timeout) -> dict:
        """Check (captions) or load (images) the queries of a stored gallery, which encodes them itself."""
        if not hasattr(gallery, "search") or getattr(gallery, "modality", None) not in ("image", "text"):
            raise TypeError(
                f"candidate_gallery is a {type(gallery).__name__}; pass a vlalign.evaluation.Gallery (from "
                "embed_gallery, or load_gallery(folder) for a folder written by `vlalign index`)."
            )
        if gallery.modality == "image":
            hint = " (an image gallery is searched with captions)"
            self._warn_unknown_words(queries, self._tokenize(queries, "queries", hint)["input_ids"])
            return {"direction": TEXT_TO_IMAGE, "gallery": gallery, "queries": queries}
        hint = " (a caption gallery is searched with images)"
        return {
            "direction": IMAGE_TO_TEXT,
            "gallery": gallery,
            "queries": self._load_images(queries, "queries", timeout, hint),
        }

    def preprocess(
        self, queries: list, candidate_texts=None, candidate_images=None, candidate_gallery=None, timeout=None
    ) -> dict:
        if candidate_gallery is not None:
            if candidate_texts is not None or candidate_images is not None:
                raise ValueError(
                    "Pass either candidate_gallery or candidate_texts / candidate_images, not both: one call ranks "
                    "one gallery."
                )
            return self._preprocess_gallery(queries, candidate_gallery, timeout)
        if candidate_texts is None and candidate_images is None:
            raise ValueError(
                "No candidates given: pass candidate_texts=[...] to rank captions for image queries, "
                "candidate_images=[...] to rank images for caption queries, or candidate_gallery=... (a stored "
                "gallery)."
            )
        if candidate_texts is not None and candidate_images is not None:
            raise ValueError(
                "Pass either candidate_texts (image queries) or candidate_images (caption queries), not both: "
                "one call ranks one gallery."
            )
        if candidate_texts is not None:
            direction = IMAGE_TO_TEXT
            texts = _as_list(candidate_texts, "candidate_texts")
            text_inputs = self._tokenize(texts, "candidate_texts")
            hint = " (with candidate_texts, the queries are images)"
            images = self._load_images(queries, "queries", timeout, hint)
        else:
            direction = TEXT_TO_IMAGE
            texts = queries
            text_inputs = self._tokenize(texts, "queries", " (with candidate_images, the queries are captions)")
            self._warn_unknown_words(texts, text_inputs["input_ids"])
            images = self._load_images(_as_list(candidate_images, "candidate_images"), "candidate_images", timeout)
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"].to(self.dtype)
        return {
            "direction": direction,
            "pixel_values": pixel_values,
            "input_ids": text_inputs["input_ids"],
            "attention_mask": text_inputs["attention_mask"],
            "texts": texts if direction == IMAGE_TO_TEXT else None,
        }

    # -----------------------------------------------------------------------------------------------------------------
    # forward: encode each side once, rank by ITC, optionally re-rank with ITM
    # -----------------------------------------------------------------------------------------------------------------

    def _encode_images(self, pixel_values: torch.Tensor, batch_size: int, keep_hidden: bool):
        encoder = self.model.base_model
        hidden, features = [], []
        for start in range(0, len(pixel_values), batch_size):
            output = encoder.get_image_features(pixel_values=pixel_values[start : start + batch_size])
            features.append(F.normalize(output.pooler_output, dim=-1))
            if keep_hidden:
                hidden.append(output.last_hidden_state)
        return (torch.cat(hidden) if keep_hidden else None), torch.cat(features)

    def _encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int, keep_hidden: bool):
        encoder = self.model.base_model
        hidden, features = [], []
        for start in range(0, len(input_ids), batch_size):
            batch = slice(start, start + batch_size)
            output = encoder.get_text_features(input_ids=input_ids[batch], attention_mask=attention_mask[batch])
            features.append(F.normalize(output.pooler_output, dim=-1))
            if keep_hidden:
                hidden.append(output.last_hidden_state)
        return (torch.cat(hidden) if keep_hidden else None), torch.cat(features)

    def _num_rerank(self, k_rerank: int | None, top_k: int, num_candidates: int) -> int:
        """Candidates re-scored per query: `k_rerank`, by default `max(config.k_test, top_k)`, capped at the gallery."""
        num_rerank = max(self.model.base_model.config.k_test, top_k) if k_rerank is None else k_rerank
        if num_rerank < min(top_k, num_candidates):
            raise ValueError(
                f"k_rerank={k_rerank} is smaller than top_k={top_k}: with rerank=True only the k_rerank re-scored "
                "candidates can be ranked. Raise k_rerank or lower top_k."
            )
        return min(num_rerank, num_candidates)

    def _forward(
        self,
        model_inputs: dict,
        top_k: int = DEFAULT_TOP_K,
        rerank: bool = False,
        k_rerank: int | None = None,
        score_mode: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        rerank_batch_size: int = DEFAULT_RERANK_BATCH_SIZE,
    ) -> dict:
        encoder = self.model.base_model
        if rerank and not self.can_rerank:
            raise ValueError(
                f"rerank=True needs an image-text matching head; {type(encoder).__name__} is a dual encoder that "
                "ranks by embedding cosine only. Call the pipeline without rerank."
            )
        if "gallery" in model_inputs:
            num_rerank = self._num_rerank(k_rerank, top_k, len(model_inputs["gallery"])) if rerank else None
            hits = model_inputs["gallery"].search(
                self.model,
                self.processor,
                model_inputs["queries"],
                k=top_k,
                rerank_k=num_rerank,
                score_mode=score_mode,
                batch_size=batch_size,
                rerank_batch_size=rerank_batch_size,
            )
            return {"hits": hits}
        direction = model_inputs["direction"]
        image_hidden, image_features = self._encode_images(model_inputs["pixel_values"], batch_size, rerank)
        text_mask = model_inputs["attention_mask"]
        text_hidden, text_features = self._encode_texts(model_inputs["input_ids"], text_mask, batch_size, rerank)
        similarities = image_features @ text_features.t()  # ITC cosine [images, texts]
        if direction == TEXT_TO_IMAGE:
            similarities = similarities.t()  # [queries, candidates]
        num_queries, num_candidates = similarities.shape
        top_k = min(top_k, num_candidates)
        # Descending stable sort: equal scores keep gallery order.
        order = torch.sort(similarities, dim=1, descending=True, stable=True).indices

        if not rerank:
            indices = order[:, :top_k]
            itc_scores = similarities.gather(1, indices)
            return {
                "direction": direction,
                "texts": model_inputs["texts"],
                "indices": indices,
                "scores": itc_scores,
                "itc_scores": itc_scores,
            }

        num_rerank = self._num_rerank(k_rerank, top_k, num_candidates)
        candidates = order[:, :num_rerank]  # [queries, k]
        query_index = torch.arange(num_queries, device=candidates.device)[:, None].expand_as(candidates).flatten()
        candidate_index = candidates.flatten()
        if direction == IMAGE_TO_TEXT:
            image_index, text_index = query_index, candidate_index
        else:
            text_index, image_index = query_index, candidate_index
        pair_itc = similarities.gather(1, candidates).flatten()
        pair_scores = torch.empty_like(pair_itc)
        text_hidden = encoder.fusion_model.self_attend_text(
            text_hidden, text_mask
        )  # the image-free part, once per text
        for start in range(0, len(pair_itc), rerank_batch_size):
            batch = slice(start, start + rerank_batch_size)
            images, pair_images = image_index[batch].unique(return_inverse=True)  # keys/values once per image
            pair_scores[batch] = encoder.itm_score(
                text_hidden[text_index[batch]],
                text_mask[text_index[batch]],
                image_hidden[images],
                itc_similarity=pair_itc[batch],
                score_mode=score_mode,
                image_index=pair_images,
                text_self_attended=True,
            )
        pair_scores = pair_scores.view(num_queries, num_rerank)
        best = torch.sort(pair_scores, dim=1, descending=True, stable=True).indices[:, :top_k]
        indices = candidates.gather(1, best)
        return {
            "direction": direction,
            "texts": model_inputs["texts"],
            "indices": indices,
            "scores": pair_scores.gather(1, best),
            "itc_scores": similarities.gather(1, indices),
        }

    # -----------------------------------------------------------------------------------------------------------------
    # postprocess: one ranked list of dicts per query
    # -----------------------------------------------------------------------------------------------------------------

    def postprocess(self, model_outputs: dict) -> list[list[dict]]:
        if "hits" in model_outputs:  # a stored gallery ranks in the same format
            return model_outputs["hits"]
        texts = model_outputs["texts"]
        results = []
        for indices, scores, itc_scores in zip(
            model_outputs["indices"].tolist(),
            model_outputs["scores"].float().tolist(),
            model_outputs["itc_scores"].float().tolist(),
            strict=True,
        ):
            ranked = []
            for rank, (index, score, itc_score) in enumerate(zip(indices, scores, itc_scores, strict=True), start=1):
                entry = {"score": score, "itc_score": itc_score}
                if model_outputs["direction"] == IMAGE_TO_TEXT:
                    entry.update(text=texts[index], text_index=index)
                else:
                    entry["image_index"] = index
                entry["rank"] = rank
                ranked.append(entry)
            results.append(ranked)
        return results


#: the `config.json` entry that points `transformers.pipeline` at this file (`custom_pipelines[TASK]`)
REMOTE_PIPELINE = {"impl": "pipeline_retrieval.ImageTextRetrievalPipeline", "pt": ["AutoModel"], "type": "multimodal"}


def task_registered_in_process() -> bool:
    return PIPELINE_REGISTRY.supported_tasks.get(TASK) is not None


def drop_remote_pipeline_when_registered(config) -> None:
    """Called by the configs after loading: where the task is registered in this process (vlalign is imported), the
    in-process pipeline serves it, so the config must not make `transformers.pipeline` ask for remote code."""
    if getattr(config, "custom_pipelines", None) and task_registered_in_process():
        del config.custom_pipelines


def register_pipelines() -> None:
    """Register `zero-shot-image-text-retrieval` with `transformers.pipeline` (idempotent: registering again is a
    no-op, so no "already registered" warning)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is not None and registered.get("impl") is ImageTextRetrievalPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=ImageTextRetrievalPipeline, pt_model=AutoModel, type="multimodal"
    )


__all__ = [
    "REMOTE_PIPELINE",
    "TASK",
    "ImageTextRetrievalPipeline",
    "drop_remote_pipeline_when_registered",
    "register_pipelines",
    "task_registered_in_process",
]
