"""The reward model's fresh head and its dropout switch, on models built from a config."""

import torch
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from training.reward_model import RewardModel, disable_dropout, scalar_head


def test_scalar_head_depends_on_the_seed_alone():
    torch.manual_seed(1)
    a = scalar_head(4096, seed=7)
    torch.manual_seed(2)
    torch.rand(10)  # whatever else drew from the global RNG first
    b = scalar_head(4096, seed=7)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, scalar_head(4096, seed=8).weight)
    assert torch.equal(a.bias, torch.zeros(1))
    # N(0, 1/(H+1)): std 1/sqrt(4097) = 0.015623; 4096 draws estimate it to ±1.1 % (1 sd)
    assert abs(a.weight.std().item() / 4097 ** -0.5 - 1) < 0.05


def test_reward_model_head_follows_head_seed():
    backbone = LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2))
    rm = RewardModel(backbone, head_seed=3)
    assert torch.equal(rm.head.weight, scalar_head(16, seed=3).weight)


def twice_in_train_mode(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    model.train()
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        return (model(input_ids=ids).last_hidden_state,
                model(input_ids=ids).last_hidden_state)


def test_disable_dropout_makes_training_forward_deterministic():
    torch.manual_seed(0)
    models = {
        # attention dropout kept as a float on each attention module, applied in training
        "llama": LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        attention_dropout=0.5)),
        # nn.Dropout layers: embedding, attention, residual
        "gpt2": GPT2Model(GPT2Config(vocab_size=32, n_embd=16, n_layer=2, n_head=2,
                                     n_positions=16, resid_pdrop=0.5, embd_pdrop=0.5,
                                     attn_pdrop=0.5)),
    }
    for name, model in models.items():
        first, second = twice_in_train_mode(model)
        assert not torch.allclose(first, second), name  # dropout is live before
        assert disable_dropout(model) > 0, name
        first, second = twice_in_train_mode(model)
        assert torch.equal(first, second), name
        assert disable_dropout(model) == 0, name  # nothing left to switch off
