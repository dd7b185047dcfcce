"""Gallery search (`vlalign.evaluation.gallery`): embedding a `datasets` gallery with every registered method, FAISS
search against brute force and the retrieval evaluation, approximate-index recall, save/load, the ITM re-rank against
the pipeline's and `evaluate_retrieval`'s, the pipeline and CLI on stored galleries, and the error cases."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import run_cli
from transformers import pipeline

from vlalign.cli import main
from vlalign.data.synthetic import make_synthetic_dataset, to_pair_dataset
from vlalign.evaluation import Gallery, embed_gallery, evaluate_retrieval, load_gallery, search_gallery
from vlalign.evaluation.gallery import EMBEDDINGS_COLUMN, build_faiss_index
from vlalign.evaluation.retrieval import encode_texts
from vlalign.methods import get_method, method_names
from vlalign.pipelines.retrieval import TASK
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32
ATOL = 1e-5


@pytest.fixture(scope="module")
def data() -> datasets.Dataset:
    return make_synthetic_dataset(num_train=0, num_validation=0, num_test=10, image_size=IMAGE_SIZE, seed=3)["test"]


def build_model(method, processor, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **{**method.test_overrides, **overrides})
    return method.model_class(config).eval()


def build_setup(name: str, data: datasets.Dataset):
    """(method, model, processor, image gallery, caption gallery) of a micro model of the method `name`."""
    method = get_method(name)
    captions = dataset_captions(datasets.DatasetDict(test=data))
    processor = method.build_processor(method.build_tokenizer(captions), IMAGE_SIZE)
    model = build_model(method, processor)
    images = embed_gallery(model, processor, data, show_progress=False)
    caption_gallery = embed_gallery(model, processor, to_pair_dataset(data), column="caption", show_progress=False)
    return method, model, processor, images, caption_gallery


@pytest.fixture(scope="module", params=method_names())
def setup(request, data):
    return build_setup(request.param, data)


@pytest.fixture(scope="module")
def albef(data):
    """One fusion model is enough for the re-rank and CLI checks."""
    return build_setup("albef", data)


def captions_of(data: datasets.Dataset) -> list[str]:
    return [caption for captions in data["captions"] for caption in captions]


def test_exact_search_is_brute_force_over_the_evaluation_embeddings(setup, data):
    method, model, processor, images, captions = setup
    dim = images.metadata.embedding_dim
    assert images.dataset.features[EMBEDDINGS_COLUMN] == datasets.List(datasets.Value("float32"), length=dim)
    embeddings = torch.from_numpy(images.dataset.with_format("numpy")[:][EMBEDDINGS_COLUMN])
    assert embeddings.dtype == torch.float32 and embeddings.shape == (len(data), dim)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(data)))
    assert images.metadata.model_type == method.name and images.modality == "image"

    # the ITC cosine `evaluate_retrieval` ranks with, [images, texts]
    similarities = evaluate_retrieval(model, processor, data, itc_only=True, return_scores=True, show_progress=False)
    similarities = similarities["similarities"]
    queries = captions_of(data)
    *_, query_features = encode_texts(model, processor, queries, 64, False, False)
    torch.testing.assert_close(query_features @ embeddings.t(), similarities.t(), atol=ATOL, rtol=0)
    for query, hits in enumerate(search_gallery(model, processor, images, queries, k=4)):
        expected = similarities[:, query].topk(4)
        assert [hit["image_index"] for hit in hits] == expected.indices.tolist()
        torch.testing.assert_close(torch.tensor([hit["score"] for hit in hits]), expected.values, atol=ATOL, rtol=0)
        assert [hit["rank"] for hit in hits] == [1, 2, 3, 4] and all(h["score"] == h["itc_score"] for h in hits)

    # a caption gallery searched with images: the other direction of the same matrix
    results = search_gallery(model, processor, captions, data[:3]["image"], k=3)
    for query, hits in enumerate(results):
        expected = similarities[query].topk(3)
        assert [hit["text_index"] for hit in hits] == expected.indices.tolist()
        assert [hit["text"] for hit in hits] == [queries[i] for i in expected.indices.tolist()]
        torch.testing.assert_close(torch.tensor([hit["score"] for hit in hits]), expected.values, atol=ATOL, rtol=0)


def test_save_and_load_round_trip(setup, tmp_path, data):
    _, model, processor, images, _ = setup
    images.save(tmp_path / "gallery")
    loaded = load_gallery(tmp_path / "gallery")
    assert loaded.metadata == images.metadata and loaded.dataset.list_indexes() == [EMBEDDINGS_COLUMN]
    assert loaded.dataset[:][EMBEDDINGS_COLUMN] == images.dataset[:][EMBEDDINGS_COLUMN]
    queries = captions_of(data)[:4]
    assert loaded.search(model, processor, queries, k=3) == search_gallery(model, processor, images, queries, k=3)
    assert images.dataset.list_indexes() == [EMBEDDINGS_COLUMN]  # saving keeps the index attached


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_index_recall_against_exact(index_type):
    generator = np.random.default_rng(0)
    vectors = generator.standard_normal((4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # queries near gallery items, as a caption is near its image: the true neighbours are well separated
    queries = vectors[:200] + 0.5 * generator.standard_normal((200, 32)).astype(np.float32) / np.sqrt(32)
    gallery = datasets.Dataset.from_dict({EMBEDDINGS_COLUMN: list(vectors)})
    exact = build_faiss_index(vectors, "exact")
    exact.add(vectors)
    exact = exact.search(queries, 10)[1]
    gallery.add_faiss_index(EMBEDDINGS_COLUMN, custom_index=build_faiss_index(vectors, index_type))
    approximate = np.stack(gallery.search_batch(EMBEDDINGS_COLUMN, queries, k=10).total_indices)
    recall_1 = np.mean(approximate[:, 0] == exact[:, 0])
    recall_10 = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    # random vectors are the hard case for approximate search (every neighbour but the first is nearly equidistant)
    assert recall_1 >= 0.95 and recall_10 >= {"ivf": 0.5, "hnsw": 0.95}[index_type], (recall_1, recall_10)

    if index_type == "ivf":  # probing every list is exhaustive: the exact result
        probe_all = build_faiss_index(vectors, "ivf", search_params="nprobe=1000")
        probe_all.add(vectors)
        np.testing.assert_array_equal(probe_all.search(queries, 10)[1], exact)


def test_itm_rerank_is_the_pipelines_and_the_evaluations(albef, data):
    _, model, processor, images, captions = albef
    queries = captions_of(data)
    retriever = pipeline(TASK, model=model, processor=processor)
    ours = search_gallery(model, processor, images, queries, k=3, rerank_k=6)
    theirs = retriever(queries, candidate_images=data[:]["image"], top_k=3, k_rerank=6, rerank=True)
    via_pipeline = retriever(queries, candidate_gallery=images, top_k=3, k_rerank=6, rerank=True)
    for mine, pipe, gallery_pipe in zip(ours, theirs, via_pipeline, strict=True):
        assert [h["image_index"] for h in mine] == [h["image_index"] for h in pipe]
        assert [h["score"] for h in mine] == pytest.approx([h["score"] for h in pipe], abs=ATOL)
        assert [h["itc_score"] for h in mine] == pytest.approx([h["itc_score"] for h in pipe], abs=ATOL)
        assert gallery_pipe == mine
    assert any(h["score"] != h["itc_score"] for hits in ours for h in hits)  # re-ranked: ITM scores

    # evaluate_retrieval's re-rank scores at each caption's top-6 images (k_test=6): the same order
    scores = evaluate_retrieval(model, processor, data, k_test=6, return_scores=True, show_progress=False)
    for query, hits in enumerate(ours):
        expected = scores["score_matrix_t2i"][query].topk(3)
        assert [h["image_index"] for h in hits] == expected.indices.tolist()
        torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), expected.values, atol=ATOL, rtol=0)

    # the other direction: image queries against a caption gallery
    ours = search_gallery(model, processor, captions, data[:3]["image"], k=2, rerank_k=5)
    theirs = retriever(data[:3]["image"], candidate_texts=queries, top_k=2, k_rerank=5, rerank=True)
    for mine, pipe in zip(ours, theirs, strict=True):
        assert [(h["text_index"], h["text"]) for h in mine] == [(h["text_index"], h["text"]) for h in pipe]
        assert [h["score"] for h in mine] == pytest.approx([h["score"] for h in pipe], abs=ATOL)


def test_errors(setup, data, tmp_path):
    method, model, processor, images, captions = setup
    with pytest.raises(ValueError, match="gallery dataset is empty"):
        embed_gallery(model, processor, data.select([]), show_progress=False)
    with pytest.raises(ValueError, match="no column 'picture'"):
        embed_gallery(model, processor, data, column="picture", show_progress=False)
    with pytest.raises(ValueError, match="flatten caption lists"):
        embed_gallery(model, processor, data, column="captions", show_progress=False)
    with pytest.raises(ValueError, match="neither one of"):
        embed_gallery(model, processor, data, index_type="kd-tree", show_progress=False)
    with pytest.raises(ValueError, match="do not apply to a Flat index"):
        embed_gallery(model, processor, data, search_params="nprobe=4", show_progress=False)
    with pytest.raises(FileNotFoundError, match="is not a saved gallery"):
        load_gallery(tmp_path)

    query = data[0]["captions"][0]
    other = build_model(method, processor, seed=1)
    with pytest.raises(ValueError, match="embedded by another model"):
        search_gallery(other, processor, images, query)
    wider = build_model(method, processor, **{"fdt_dim" if method.name == "fdt" else "embed_dim": 24})
    with pytest.raises(ValueError, match="holds 16-d embeddings"):
        search_gallery(wider, processor, images, query)
    with pytest.raises(ValueError, match="searched with captions"):
        search_gallery(model, processor, images, [data[0]["image"]])
    with pytest.raises(ValueError, match="k ≤ rerank_k"):
        search_gallery(model, processor, images, query, k=4, rerank_k=2)
    if not method.supports_itm_rerank:
        with pytest.raises(ValueError, match="dual encoder"):
            search_gallery(model, processor, images, query, k=2, rerank_k=4)

    retriever = pipeline(TASK, model=model, processor=processor)
    with pytest.raises(ValueError, match="not both"):
        retriever(query, candidate_gallery=images, candidate_images=data[:]["image"])
    with pytest.raises(TypeError, match="pass a vlalign.evaluation.Gallery"):
        retriever(query, candidate_gallery=str(tmp_path))
    with pytest.raises(ValueError, match="a caption gallery is searched with images"):
        retriever(query, candidate_gallery=captions)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`vlalign ...` in this process (fast; `run_cli` runs it in a fresh interpreter): (exit code, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_index_and_retrieve(albef, data, tmp_path, capsys):
    _, model, processor, _, _ = albef
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image_folder = tmp_path / "images"
    image_folder.mkdir()
    for index, image in enumerate(data["image"]):
        image.save(image_folder / f"{index:02d}.png")

    gallery_dir = tmp_path / "gallery"
    run_cli("index", "--model", str(folder), "--image-folder", str(image_folder), "--output", str(gallery_dir),
            "--batch-size", "4")  # fmt: skip
    assert isinstance(load_gallery(gallery_dir), Gallery)
    query = data[3]["captions"][0]
    for extra in ([], ["--rerank"]):
        common = ("retrieve", "--model", str(folder), "--query", query, "--top-k", "3", "--json", *extra)
        from_gallery = json.loads(cli(capsys, *common, "--gallery", str(gallery_dir))[1])
        from_folder = json.loads(cli(capsys, *common, "--images", str(image_folder))[1])
        assert [hit["path"] for hit in from_gallery] == [hit["path"] for hit in from_folder]
        assert [hit["score"] for hit in from_gallery] == pytest.approx([hit["score"] for hit in from_folder], abs=ATOL)

    # a caption gallery from a `datasets` folder, searched with an image file
    to_pair_dataset(data).save_to_disk(tmp_path / "pairs")
    captions_dir = tmp_path / "captions"
    cli(capsys, "index", "--model", str(folder), "--dataset-dir", str(tmp_path / "pairs"), "--column", "caption",
        "--output", str(captions_dir), "--index-type", "hnsw")  # fmt: skip
    _, out, _ = cli(capsys, "retrieve", "--model", str(folder), "--gallery", str(captions_dir), "--query",
                    str(image_folder / "03.png"), "--top-k", "2")  # fmt: skip
    expected = search_gallery(model, processor, load_gallery(captions_dir), [data[3]["image"]], k=2)[0]
    assert [line.split(maxsplit=2)[2] for line in out.splitlines()] == [hit["text"] for hit in expected]

    code, _, err = cli(capsys, "index", "--model", str(folder), "--dataset-dir", str(tmp_path / "pairs"), "--output",
                       str(tmp_path / "bad"), "--column", "nope")  # fmt: skip
    assert code == 1 and "no column 'nope'" in err
    code, _, err = cli(capsys, "retrieve", "--model", str(folder), "--gallery", str(tmp_path), "--query", "x")
    assert code == 1 and "is not a saved gallery" in err
