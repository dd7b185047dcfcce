"""Retrieval over large galleries: embed a `datasets` dataset of images or captions once, keep the embeddings with the
dataset, and search them with FAISS (`Dataset.add_faiss_index`) instead of re-encoding every candidate per query.

The embeddings are the normalised ITC embeddings `evaluate_retrieval` ranks with (the same encode helpers), so an
exact index (`IndexFlatIP`, inner product = cosine) returns exactly the evaluation protocol's ITC ranking; approximate
indexes (IVF, HNSW) trade a little recall for sub-linear query time. For fusion models (ALBEF, SIMLA, CODIS) the top
candidates can be re-ranked with the image-text matching head through the evaluation's re-rank code
(`rerank_pairs`); dual encoders (FDT) rank by the embedding cosine only.

```python
>>> gallery = embed_gallery(model, processor, dataset, column="image", index_type="hnsw")
>>> gallery.save("coco_gallery")  # dataset + embeddings (save_to_disk), FAISS index, model fingerprint
>>> gallery = load_gallery("coco_gallery")
>>> search_gallery(model, processor, gallery, ["a dog on a beach"], k=5, rerank_k=32)
[[{'score': 6.1, 'itc_score': 0.42, 'image_index': 812, 'rank': 1}, ...]]
```
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import faiss
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable
from transformers.image_utils import load_image

from ..models.input_checks import is_blank, open_image
from .retrieval import encode_images, encode_texts, rerank_pairs

EMBEDDINGS_COLUMN = "embeddings"
METADATA_FILE = "vlalign_gallery.json"
INDEX_FILE = "embeddings.faiss"
#: named index types → FAISS factory strings (`{nlist}`: inverted lists, chosen from the gallery size)
INDEX_TYPES = {"exact": "Flat", "ivf": "IVF{nlist},Flat", "hnsw": "HNSW32"}
#: search-time parameters of the approximate indexes (`faiss.ParameterSpace` syntax; saved with the index)
DEFAULT_NPROBE_FRACTION = 1 / 16
DEFAULT_HNSW_EF_SEARCH = 128


def model_fingerprint(model) -> str:
    """A short hash of the encoder's parameter names, shapes and a strided sample of each one's values.

    It identifies the weights that embedded a gallery: a config hash alone would accept two differently trained models
    of one shape, whose embeddings are not comparable. Sampling keeps it cheap for base-size models.
    """
    digest = hashlib.sha256()
    for name, parameter in model.base_model.named_parameters():
        flat = parameter.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def _modality(dataset: datasets.Dataset, column: str) -> str:
    """'image' or 'text': what the gallery's `column` holds, from its feature type."""
    if column not in dataset.column_names:
        raise ValueError(
            f"The gallery dataset has no column {column!r}; its columns are {dataset.column_names}. Pass column= "
            "(--column) naming an `Image` column or a string column."
        )
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    raise ValueError(
        f"Column {column!r} is a {feature}; a gallery column must be an `Image` feature (images) or strings (one "
        "caption per row; flatten caption lists first, e.g. with vlalign.data.synthetic.to_pair_dataset)."
    )


def _index_factory(index_type: str, num_items: int) -> str:
    """The FAISS factory string of `index_type` ('exact', 'ivf', 'hnsw', or a factory string used as is)."""
    # FAISS wants ≥ 39 training points per inverted list; 4·√N lists is its rule of thumb for the list count.
    nlist = max(1, min(round(4 * math.sqrt(num_items)), num_items // 39))
    return INDEX_TYPES.get(index_type, index_type).format(nlist=nlist)


def build_faiss_index(vectors: np.ndarray, index_type: str = "exact", search_params: str | None = None) -> faiss.Index:
    """An empty inner-product FAISS index for `vectors` [N, D], trained on them where the type needs training.

    Approximate indexes get default search parameters (IVF: `nprobe` = 1/16 of the lists; HNSW: `efSearch` 128),
    which `search_params` overrides in `faiss.ParameterSpace` syntax ("nprobe=64", "efSearch=256"); FAISS saves them
    with the index."""
    factory = _index_factory(index_type, len(vectors))
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(
            f"index_type={index_type!r} is neither one of {sorted(INDEX_TYPES)} nor a FAISS factory string: {error}"
        ) from error
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = max(1, math.ceil(ivf.nlist * DEFAULT_NPROBE_FRACTION))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = DEFAULT_HNSW_EF_SEARCH
    if search_params:
        try:
            faiss.ParameterSpace().set_index_parameters(index, search_params)
        except RuntimeError as error:
            raise ValueError(f"search_params={search_params!r} do not apply to a {factory} index: {error}") from error
    if not index.is_trained:
        index.train(vectors)
    return index


@dataclass
class GalleryMetadata:
    """What a gallery's embeddings came from, checked before every search and saved as `vlalign_gallery.json`."""

    column: str
    modality: str
    model_type: str
    model_name: str
    model_fingerprint: str
    embedding_dim: int
    index_type: str
    num_items: int


@dataclass
class Gallery:
    """A dataset with an `embeddings` column (float32, L2-normalised ITC embeddings) searchable through its FAISS
    index, and the metadata that says which model embedded it."""

    dataset: datasets.Dataset
    metadata: GalleryMetadata

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def modality(self) -> str:
        return self.metadata.modality

    def search(self, model, processor, queries, **kwargs) -> list[list[dict]]:
        """See `search_gallery`."""
        return search_gallery(model, processor, self, queries, **kwargs)

    def save(self, folder: str | Path) -> Path:
        """Write the dataset (`save_to_disk`), its FAISS index (`save_faiss_index`) and the metadata into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.dataset.save_faiss_index(EMBEDDINGS_COLUMN, folder / INDEX_FILE)
        # `save_to_disk` refuses datasets with an attached index: detach it, save, re-attach the file just written.
        self.dataset.drop_index(EMBEDDINGS_COLUMN)
        self.dataset.save_to_disk(folder)
        self.dataset.load_faiss_index(EMBEDDINGS_COLUMN, folder / INDEX_FILE)
        (folder / METADATA_FILE).write_text(json.dumps(asdict(self.metadata), indent=1) + "\n")
        return folder


def load_gallery(folder: str | Path) -> Gallery:
    """A gallery written by `Gallery.save` or `vlalign index`, with its FAISS index attached."""
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file() or not (folder / INDEX_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} is not a saved gallery (no {METADATA_FILE} / {INDEX_FILE}); build one with `vlalign index` or "
            "vlalign.evaluation.embed_gallery(...).save(folder)."
        )
    metadata = GalleryMetadata(**json.loads((folder / METADATA_FILE).read_text()))
    dataset = datasets.load_from_disk(str(folder))
    dataset.load_faiss_index(EMBEDDINGS_COLUMN, folder / INDEX_FILE)
    return Gallery(dataset, metadata)


def _encode(model, processor, items, modality: str, batch_size: int, keep_states: bool, show_progress: bool):
    """(token states, attention masks or None, normalised features) of images or captions, through the evaluation's
    encode helpers. `items` is a dataset with an `image` column for images, a list of strings for captions."""
    if modality == "text":
        return encode_texts(model, processor, list(items), batch_size, keep_states, show_progress)
    states, features = encode_images(model, processor, items, batch_size, keep_states, show_progress)
    return states, None, features


def _image_rows(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """`dataset`'s image column as the `image` column the evaluation's `encode_images` reads."""
    images = dataset.select_columns([column])
    return images if column == "image" else images.rename_column(column, "image")


def _image_dataset(images: list) -> datasets.Dataset:
    """Images (PIL) as a dataset with the `image` column `encode_images` reads (stored as PNG: lossless)."""
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


@torch.no_grad()
def embed_gallery(
    model,
    processor,
    dataset: datasets.Dataset,
    column: str = "image",
    index_type: str = "exact",
    search_params: str | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> Gallery:
    """Embed every row's `column` (images or captions) in batches and index the embeddings with FAISS.

    Args:
        model: any vlalign model (`<Method>Model` or a model holding one as `base_model`).
        processor: its processor.
        dataset: a `datasets.Dataset`, one gallery item per row; other columns are kept (e.g. a `path`).
        column: an `Image` column (an image gallery, searched with captions) or a string column (a caption
            gallery, searched with images).
        index_type: 'exact' (`IndexFlatIP`), 'ivf' (inverted lists, ≈4·√N, trained on the embeddings), 'hnsw'
            (graph, 32 links), or any FAISS factory string; all rank by inner product (= cosine).
        search_params: search-time parameters of an approximate index, e.g. "nprobe=64" (see `build_faiss_index`).
        batch_size: items per encoder forward.

    Returns:
        A `Gallery`: the dataset with an `embeddings` column (float32 [D] per row) and its FAISS index attached.
    """
    if len(dataset) == 0:
        raise ValueError("The gallery dataset is empty; pass at least one image or caption to index.")
    modality = _modality(dataset, column)
    encoder = model.base_model
    was_training = encoder.training
    encoder.eval()
    items = dataset[column] if modality == "text" else _image_rows(dataset, column)
    _, _, features = _encode(encoder, processor, items, modality, batch_size, False, show_progress)
    encoder.train(was_training)
    vectors = features.float().cpu().numpy()
    dim = vectors.shape[1]
    if EMBEDDINGS_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(EMBEDDINGS_COLUMN)
    # An Arrow fixed-size list column: 5x faster to build than from a list of rows at 100k items.
    column_array = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
    feature = datasets.List(datasets.Value("float32"), length=dim)
    dataset = dataset.add_column(EMBEDDINGS_COLUMN, column_array, feature=feature)
    dataset.add_faiss_index(EMBEDDINGS_COLUMN, custom_index=build_faiss_index(vectors, index_type, search_params))
    metadata = GalleryMetadata(
        column=column,
        modality=modality,
        model_type=encoder.config.model_type,
        model_name=encoder.config.name_or_path,
        model_fingerprint=model_fingerprint(model),
        embedding_dim=dim,
        index_type=index_type,
        num_items=len(dataset),
    )
    return Gallery(dataset, metadata)


def _query_items(queries, modality: str):
    """Queries as `_encode` takes them: captions for an image gallery, images (PIL or paths) for a caption gallery."""
    queries = [queries] if isinstance(queries, str) or not isinstance(queries, (list, tuple)) else list(queries)
    if not queries:
        raise ValueError("The list of queries is empty; pass at least one query.")
    if modality == "image":
        if not all(isinstance(query, str) and not is_blank(query) for query in queries):
            raise ValueError(
                "An image gallery is searched with captions: pass non-empty strings as queries (not only whitespace or "
                "invisible characters)."
            )
        return queries
    return _image_dataset([_query_image(query, position) for position, query in enumerate(queries)])


def _query_image(query, position: int):
    """An image query as a PIL image: a local file through `open_image` (the pixel limit applies), a URL or base64
    string through transformers' `load_image`, anything else as given."""
    if not isinstance(query, str):
        return query
    if os.path.isfile(query):
        return open_image(query, f"Query {position} ({query})")
    return load_image(query)


def _check_model(gallery: Gallery, model, embedding_dim: int) -> None:
    metadata = gallery.metadata
    if embedding_dim != metadata.embedding_dim:
        raise ValueError(
            f"The gallery holds {metadata.embedding_dim}-d embeddings of {metadata.model_name or metadata.model_type}, "
            f"but this model embeds in {embedding_dim}-d: search a gallery with the model that built it, or rebuild "
            "it with `vlalign index --model ...`."
        )
    if model_fingerprint(model) != metadata.model_fingerprint:
        raise ValueError(
            f"The gallery was embedded by another model ({metadata.model_name or metadata.model_type}, fingerprint "
            f"{metadata.model_fingerprint}); its embeddings are not comparable with this model's. Search it with "
            "that model, or rebuild the gallery with `vlalign index --model ...`."
        )


@torch.no_grad()
def search_gallery(
    model,
    processor,
    gallery: Gallery,
    queries,
    k: int = 10,
    rerank_k: int | None = None,
    score_mode: str | None = None,
    batch_size: int = 64,
    rerank_batch_size: int = 256,
    show_progress: bool = False,
) -> list[list[dict]]:
    """Rank the gallery for each query: FAISS top-k by ITC cosine, optionally ITM re-rank of the top `rerank_k`.

    Args:
        model, processor: the model that embedded the gallery (checked against its fingerprint) and its processor.
        gallery: a `Gallery` from `embed_gallery` or `load_gallery`.
        queries: captions for an image gallery, images (PIL images or paths) for a caption gallery; one or a list.
        k: results per query (capped at the gallery size).
        rerank_k: re-score the top `rerank_k` ITC candidates with the ITM head and rank them by that score (fusion
            models only; at least `k`), as `evaluate_retrieval` and the retrieval pipeline do.
        score_mode: re-rank score (default `config.itm_score_mode`).

    Returns:
        Per query, the hits best first, in the retrieval pipeline's format: `score` (ranking score), `itc_score`,
        `rank` (1 = best) and `image_index` (row of an image gallery) or `text` and `text_index` (caption gallery).
    """
    if k < 1 or (rerank_k is not None and rerank_k < k):
        raise ValueError(f"Need 1 ≤ k ≤ rerank_k; got k={k}, rerank_k={rerank_k}.")
    encoder = model.base_model
    rerank = rerank_k is not None
    if rerank and not encoder.supports_itm_rerank:
        raise ValueError(
            f"rerank_k needs an image-text matching head; {type(encoder).__name__} is a dual encoder that ranks by "
            "embedding cosine only. Search without rerank_k."
        )
    was_training = encoder.training
    encoder.eval()
    modality = gallery.modality
    query_modality = "text" if modality == "image" else "image"
    query_items = _query_items(queries, modality)
    query_states, query_masks, query_features = _encode(
        encoder, processor, query_items, query_modality, batch_size, rerank, show_progress
    )
    _check_model(gallery, model, query_features.shape[1])

    num_candidates = min(rerank_k or k, len(gallery))
    itc, rows = gallery.dataset.search_batch(EMBEDDINGS_COLUMN, query_features.float().cpu().numpy(), k=num_candidates)
    itc, rows = torch.from_numpy(np.stack(itc)), torch.from_numpy(np.stack(rows)).long()
    scores = itc
    if rerank:
        scores = _rerank(
            encoder,
            processor,
            gallery,
            rows,
            query_states,
            query_masks,
            query_features,
            score_mode,
            batch_size,
            rerank_batch_size,
            show_progress,
        )
    encoder.train(was_training)
    return _hits(gallery, rows, scores, itc, min(k, len(gallery)))


def _gallery_rows(gallery: Gallery, rows: list[int]) -> datasets.Dataset:
    """The gallery's item column at `rows`, as a dataset of its own: an Arrow-level take (images are not decoded),
    as `Dataset.select` is refused on a dataset with an attached index."""
    column = gallery.metadata.column
    table = gallery.dataset.select_columns([column]).with_format("arrow")[rows].replace_schema_metadata(None)
    features = datasets.Features({column: gallery.dataset.features[column]})
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _rerank(
    encoder,
    processor,
    gallery: Gallery,
    rows: torch.Tensor,
    query_states: torch.Tensor,
    query_masks: torch.Tensor | None,
    query_features: torch.Tensor,
    score_mode: str | None,
    batch_size: int,
    rerank_batch_size: int,
    show_progress: bool,
) -> torch.Tensor:
    """ITM scores [queries, candidates] of each query's FAISS candidates (`rows`, -1 = none found: -inf), from the
    candidates re-encoded with their token states and the evaluation's `rerank_pairs`."""
    found = rows >= 0
    unique_rows, local = torch.unique(rows[found], return_inverse=True)
    column = gallery.metadata.column
    candidates = _gallery_rows(gallery, unique_rows.tolist())
    items = candidates[column] if gallery.modality == "text" else _image_rows(candidates, column)
    states, masks, features = _encode(encoder, processor, items, gallery.modality, batch_size, True, show_progress)
    query_index = torch.arange(len(rows))[:, None].expand_as(rows)[found]
    if gallery.modality == "image":  # caption queries: (image = candidate, text = query)
        pairs = torch.stack([local, query_index], dim=1)
        text_states, text_masks, image_states = query_states, query_masks, states
        similarities = features @ query_features.t()
    else:  # image queries: (image = query, text = candidate)
        pairs = torch.stack([query_index, local], dim=1)
        text_states, text_masks, image_states = states, masks, query_states
        similarities = query_features @ features.t()
    scores = torch.full(rows.shape, -math.inf)
    scores[found] = rerank_pairs(
        encoder,
        pairs,
        text_states,
        text_masks,
        image_states,
        similarities,
        score_mode or encoder.config.itm_score_mode,
        rerank_batch_size,
        show_progress,
    )
    return scores


def _hits(gallery: Gallery, rows: torch.Tensor, scores: torch.Tensor, itc: torch.Tensor, k: int) -> list[list[dict]]:
    """The `k` best-scoring found candidates of each query as pipeline-style dicts (equal scores keep FAISS order)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    if gallery.modality == "text":
        found = sorted(set(rows[rows >= 0].tolist()))
        texts = dict(zip(found, _gallery_rows(gallery, found)[gallery.metadata.column], strict=True))
    else:
        texts = None
    results = []
    for query_order, query_rows, query_scores, query_itc in zip(order, rows, scores, itc, strict=True):
        ranked = []
        for position in query_order.tolist():
            row = query_rows[position].item()
            if row < 0 or len(ranked) == k:  # FAISS pads with -1 where an approximate index found fewer items
                continue
            hit = {"score": query_scores[position].item(), "itc_score": query_itc[position].item()}
            hit.update({"text": texts[row], "text_index": row} if texts is not None else {"image_index": row})
            hit["rank"] = len(ranked) + 1
            ranked.append(hit)
        results.append(ranked)
    return results


__all__ = [
    "EMBEDDINGS_COLUMN",
    "INDEX_TYPES",
    "Gallery",
    "GalleryMetadata",
    "build_faiss_index",
    "embed_gallery",
    "load_gallery",
    "model_fingerprint",
    "search_gallery",
]
