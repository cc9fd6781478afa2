"""State inputs: which inputs pair with an output, and how random data carries them."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt._states import carry_states, state_pairs


@pytest.mark.parametrize(("inp", "out"), [
    ("h", "hn"), ("h0", "hn"), ("c0", "cn"), ("state", "stateN"), ("state", "state_out"),
    ("cache_in", "cache_out"), ("hidden", "new_hidden"), ("state", "next_state")])
def test_a_state_input_pairs_with_its_output_by_name_dtype_and_shape(inp, out):
    inputs = [("x", "float32", (1, 10, 8)), (inp, "float32", (1, 1, 16))]
    outputs = [("y", "float32", (1, 10, 3)), (out, "float32", (1, 1, 16))]
    assert state_pairs(inputs, outputs) == {inp: out}


def test_same_shape_or_name_alone_is_not_state():
    # an autoencoder: input and output of one shape, unrelated names
    assert state_pairs([("input", "float32", (1, 16))], [("output", "float32", (1, 16))]) == {}
    # a related name of another shape or dtype
    assert state_pairs([("h", "float32", (1, 1, 16))], [("hn", "float32", (1, 1, 8))]) == {}
    assert state_pairs([("h", "float32", (1, 16))], [("hn", "float16", (1, 16))]) == {}
    # a dynamic dimension matches any
    assert state_pairs([("h", "float32", (1, 16))], [("hn", "float32", ("batch", 16))]) == {
        "h": "hn"}


def test_random_samples_carry_the_state_the_model_gives_back():
    """A running sum as the model: each sample's state is the sum so far, zeros first."""
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal(3).astype(np.float32),
                "s": rng.standard_normal(3).astype(np.float32)} for _ in range(4)]

    def run(sample):
        return [sample["x"] * 2, sample["s"] + sample["x"]]

    carried = carry_states(samples, {"s": "s_out"}, ["y", "s_out"], run)
    np.testing.assert_array_equal(carried[0]["s"], np.zeros(3))
    np.testing.assert_allclose(carried[3]["s"], samples[0]["x"] + samples[1]["x"]
                               + samples[2]["x"], rtol=1e-6)
    assert all(c["x"] is s["x"] for c, s in zip(carried, samples, strict=True))
