"""`AlbefForQuestionAnswering` beyond parity (tiny random model): the corrected ranking score, free generation
(greedy and beam) decoded by the processor, save/reload, attention maps and states, input checks, and the momentum
EMA as a training duty (run by `AlignmentTrainer`, refused by a plain `Trainer` without the callback)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_albef_config
from test_nonfinite_skip import Batches, first_item
from test_training_duties import REFUSAL, arguments
from transformers import AutoModelForVisualQuestionAnswering, Trainer

import vlalign
from vlalign.training.trainer import AlignmentTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLS, SEP, PAD = 2, 3, 0


def tiny_vqa_config(**overrides) -> vlalign.AlbefConfig:
    config = tiny_albef_config(k_test=3, **overrides)
    config.text_config.sep_token_id = SEP
    return config


def build(**overrides) -> vlalign.AlbefForQuestionAnswering:
    torch.manual_seed(0)
    return vlalign.AlbefForQuestionAnswering(tiny_vqa_config(**overrides))


def questions(num: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 245, (num, 7), generator=generator)
    input_ids[:, 0] = CLS
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, 5:], attention_mask[0, 5:] = PAD, 0
    return {
        "pixel_values": torch.randn(num, 3, 32, 32, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


def answers(lengths: list[int], seed: int = 1) -> dict[str, torch.Tensor]:
    """'[CLS] w.. [SEP] [PAD]..' rows of `lengths` answer words."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    input_ids = torch.full((len(lengths), width), PAD)
    for row, length in enumerate(lengths):
        input_ids[row, : length + 2] = torch.cat(
            [torch.tensor([CLS]), torch.randint(5, 245, (length,), generator=generator), torch.tensor([SEP])]
        )
    return {"answer_input_ids": input_ids, "answer_attention_mask": (input_ids != PAD).long()}


def training_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    answer_rows = answers([1, 2, 1], seed)
    return {
        **questions(2, seed),
        **answer_rows,
        "answer_weights": torch.tensor([0.6, 0.4, 1.0]),
        "answers_per_question": torch.tensor([2, 1]),
    }


def rank(model, double_count_first_token: bool = True):
    return model.rank_answers(
        **questions(), **answers([1, 1, 2, 3, 1]), double_count_first_token=double_count_first_token
    )


def test_corrected_ranking_score_drops_the_second_first_token_term():
    model = build().eval()
    official, corrected = rank(model), rank(model, double_count_first_token=False)
    # same first stage; the official score adds log P(first token) to a likelihood that already holds it
    assert torch.equal(official.candidate_indices, corrected.candidate_indices)
    assert official.answer_indices.shape == (2, 3)  # k = config.k_test
    torch.testing.assert_close(
        official.log_likelihoods - corrected.log_likelihoods, official.first_token_probs.log(), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(corrected.log_likelihoods.view(-1), -corrected.candidate_loss, atol=0, rtol=0)
    for ranked in (official, corrected):
        scores, order = ranked.log_likelihoods.softmax(-1).sort(dim=-1, descending=True)
        torch.testing.assert_close(ranked.scores, scores, atol=1e-7, rtol=0)
        assert torch.equal(ranked.answer_indices, ranked.candidate_indices.gather(1, order))
    assert not torch.allclose(official.scores, corrected.scores)


def test_ranking_keeps_at_most_the_list_and_refuses_untokenized_answers():
    model = build().eval()
    answer_list = answers([1, 2])
    ranked = model.rank_answers(**questions(), **answer_list, k=10)
    assert ranked.answer_indices.shape == (2, 2)
    without_cls = {name: tensor[:, 1:] for name, tensor in answer_list.items()}
    with pytest.raises(ValueError, match="vqa_answer"):
        model.rank_answers(**questions(), **without_cls)


def greedy_by_hand(model, batch, steps: int) -> torch.Tensor:
    with torch.no_grad():
        states, _ = model.encode_question(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        ids = torch.full((states.shape[0], 1), CLS)
        for _ in range(steps):
            logits = model.decode_answers(ids, None, states, batch["attention_mask"]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def test_generate_greedy_and_beam():
    model = build().eval()
    batch = questions()
    greedy = model.generate(**batch, max_new_tokens=4)
    assert torch.equal(greedy, greedy_by_hand(model, batch, 4)[:, : greedy.shape[1]])
    beams = model.generate(**batch, max_new_tokens=4, num_beams=3)
    assert beams.shape[0] == 2 and bool((beams[:, 0] == CLS).all())
    tokenizer = vlalign.AlbefTokenizer(vocab={f"w{i}": i for i in range(245)} | {"[CLS]": CLS, "[SEP]": SEP})
    texts = tokenizer.batch_decode(beams, skip_special_tokens=True)
    assert all(isinstance(text, str) and text for text in texts)


def test_generation_stops_at_sep():
    model = build().eval()
    with torch.no_grad():  # make [SEP] the decoder's favourite token
        model.text_decoder.lm_head.bias[SEP] = 1e4
    generated = model.generate(**questions(), max_new_tokens=5)
    assert generated.tolist() == [[CLS, SEP], [CLS, SEP]]


def test_save_and_reload_round_trip(tmp_path):
    model = build().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, vlalign.AlbefForQuestionAnswering)
    batch = training_batch()
    with torch.no_grad():
        expected, actual = model(**batch), reloaded(**batch)
    torch.testing.assert_close(actual.loss, expected.loss, atol=0, rtol=0)
    torch.testing.assert_close(actual.logits, expected.logits, atol=0, rtol=0)
    assert torch.equal(rank(model).answer_indices, rank(reloaded).answer_indices)


def test_attentions_and_hidden_states():
    model = build(attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = model(**training_batch(), output_attentions=True, output_hidden_states=True)
    decoder, fusion = outputs.decoder_output, outputs.fusion_model_output
    assert len(decoder.attentions) == len(decoder.cross_attentions) == 2  # one per decoder layer
    assert decoder.attentions[0].shape == (3, 2, 4, 4)  # answers, heads, tokens, tokens
    assert decoder.cross_attentions[0].shape == (3, 2, 4, 7)  # ... question tokens
    # causal: no answer token attends to a later one
    assert float(decoder.attentions[0].triu(diagonal=1).abs().max()) == 0.0
    assert len(decoder.hidden_states) == 3  # embeddings + each layer
    assert len(fusion.cross_attentions) == 2 and len(outputs.vision_model_output.attentions) == 2
    assert outputs.text_model_output.hidden_states[0].shape == (2, 7, 32)


def test_question_states_only_without_answers():
    model = build().eval()
    with torch.no_grad():
        outputs = model(**questions())
    assert outputs.loss is None and outputs.question_states.shape == (2, 7, 32)


def test_bad_answer_grouping_is_refused():
    model = build()
    batch = training_batch()
    with pytest.raises(ValueError, match=r"answers_per_question \[1, 1\] must give one count per question"):
        model(**{**batch, "answers_per_question": torch.tensor([1, 1])})
    with pytest.raises(ValueError, match=r"one weight per answer row: \(3,\)"):
        model(**{**batch, "answer_weights": torch.ones(2)})


def test_momentum_copies_follow_the_official_ema_as_a_training_duty(tmp_path):
    data = Batches([training_batch(seed) for seed in range(2)])
    model = build()
    plain = Trainer(
        model=model, args=arguments(tmp_path, "adamw_torch_fused"), train_dataset=data, data_collator=first_item
    )
    with pytest.raises(RuntimeError, match=REFUSAL):
        plain.train()
    assert plain.state.global_step == 1

    model = build()
    pairs = list(model.momentum_parameter_pairs())
    assert len(pairs) == sum(1 for name, _ in model.named_parameters() if "_m." not in name)
    momentum_before = [m.detach().clone() for _, m in pairs]
    args = arguments(tmp_path, "adamw_torch_fused", alignment=True)
    AlignmentTrainer(model=model, args=args, train_dataset=data, data_collator=first_item).train()
    # two optimizer steps, each followed by one EMA step: θ_m ← 0.995 θ_m + 0.005 θ (the online weights moved)
    assert all(not m.requires_grad for _, m in pairs)
    moved = [not torch.equal(m, before) for (_, m), before in zip(pairs, momentum_before, strict=True)]
    assert sum(moved) > len(pairs) // 2
    online, momentum = pairs[0]
    assert not torch.equal(online, momentum)


def test_one_ema_step_per_optimizer_step_in_a_hand_written_loop():
    model = build().train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(2):
        model(**training_batch(step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pairs = list(model.momentum_parameter_pairs())
        expected = [0.995 * m.detach() + 0.005 * online.detach() for online, m in pairs]
        model.after_optimizer_step(step)
        for (_, momentum), value in zip(pairs, expected, strict=True):
            torch.testing.assert_close(momentum, value, atol=1e-6, rtol=0)
    assert not torch.equal(*pairs[0])


def test_without_distillation_there_are_no_momentum_copies_and_no_duties():
    model = build(distill=False)
    assert not any(name.endswith("_m") for name, _ in model.named_children())
    assert model.has_training_duties is False
    with torch.no_grad():
        outputs = model.train()(**training_batch(), alpha=0.4)
    assert outputs.logits_m is None  # distill off: alpha is 0 whatever is asked
