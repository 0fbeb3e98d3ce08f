"""The pure helpers the PPO recipe adds: explained variance, EMA, weight packing."""

import torch

from training.advantages import explained_variance
from training.recipes.ppo import EMA, pack_episodes
from training.rollout import Sample, pack_weights, unpack_weights


def test_explained_variance_hand_computed():
    returns = torch.tensor([[1.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])  # the 9 is padding
    # masked returns 1, 3: mean 2, Var 1. values 1, 2 → residuals 0, 1: mean .5, Var .25
    values = torch.tensor([[1.0, 2.0, -50.0]])
    assert torch.isclose(explained_variance(values, returns, mask), torch.tensor(0.75))
    assert explained_variance(returns, returns, mask) == 1.0
    # a constant critic explains nothing; constant returns give 0, not NaN
    assert torch.isclose(explained_variance(torch.full((1, 3), 2.0), returns, mask),
                         torch.tensor(0.0))
    assert explained_variance(values, torch.ones(1, 3), mask) == 0.0


def test_ema_decays_towards_the_live_weights():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    # 0.9 · 1 + 0.1 · 3 = 1.2, then 0.9 · 1.2 + 0.1 · 3 = 1.38
    assert torch.isclose(ema.shadow["weight"], torch.tensor([[1.2]])).all()
    ema.update(model)
    assert torch.isclose(ema.shadow["weight"], torch.tensor([[1.38]])).all()
    ema.copy_to(model)
    assert model.weight.item() == ema.shadow["weight"].item()


def test_weights_pack_and_unpack_bit_exactly():
    named = [("a.weight", torch.randn(3, 4)), ("b.bias", torch.arange(5, dtype=torch.bfloat16)),
             ("c.empty", torch.zeros(0, 2))]
    back = unpack_weights(pack_weights(named))
    assert [n for n, _ in back] == ["a.weight", "b.bias", "c.empty"]
    for (_, x), (_, y) in zip(named, back, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_pack_episodes_indexes_the_logits_that_predict_each_response_token():
    samples = [Sample([5, 6, 7], [8, 9], [-1.0, -1.0], True),
               Sample([5], [10, 11, 12], [-1.0] * 3, False)]
    ep = pack_episodes(samples, pad_id=0)
    assert ep.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert ep.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # logits at position t predict token t + 1: row 0's response starts at 3 → logits 2
    assert ep.positions.tolist() == [[2, 3, 0], [0, 1, 2]]
    assert ep.response_ids.tolist() == [[8, 9, 0], [10, 11, 12]]
    assert ep.mask.tolist() == [[True, True, False], [True, True, True]]
