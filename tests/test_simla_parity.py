"""Numerical parity with the official SIMLA code (codezakh/SIMLA @ 44c700d) on its golden fixture, one row per quantity.

Both fixture checkpoints (pretraining, and the fine-tuned retrieval layout) are converted through `vlalign convert
--method simla` and loaded with the Auto classes; every deterministic quantity the official code recorded is matched
(`simla_parity_rows.py`, tests/fixtures/simla/README.md): encoder passes and features, the momentum teacher after one
update (banks, similarities, MIM/MLM logits, PSL attention, keywords and soft targets), the deterministic pass's
losses and ITM layout, the official forward's losses with its random choices replayed, the queues and temperature
after the duties, the retrieval evaluation and one fine-tuning step. Floating-point rows within 1e-5, integer and
boolean rows exactly.
"""

from __future__ import annotations

import pytest
import simla_parity_rows as parity

#: rows of the pretraining checkpoint, the retrieval checkpoint: `parity_rows` measures both, in this order
PRETRAINING_ROWS, RETRIEVAL_ROWS = 54, 12


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[parity.Row]:
    return parity.parity_rows(tmp_path_factory.mktemp("simla_parity"))


def assert_within_tolerance(rows: list[parity.Row]) -> None:
    failed = [
        f"{name} {list(shape)}: max |diff| {diff:.3e} > {tol:.0e}" for name, shape, diff, tol in rows if diff > tol
    ]
    assert not failed, "\n".join(failed)


def test_every_official_quantity_is_measured(rows):
    assert len(rows) == PRETRAINING_ROWS + RETRIEVAL_ROWS
    assert len({name for name, *_ in rows}) == len(rows)
    exact = {name for name, _, _, tol in rows if tol == 0.0}
    assert {"itm_labels", "psl keyword token ids", "queue_ptr after the duties"} <= exact


def test_pretraining_matches_official(rows):
    assert_within_tolerance(rows[:PRETRAINING_ROWS])


def test_retrieval_and_fine_tuning_match_official(rows):
    assert_within_tolerance(rows[PRETRAINING_ROWS:])
