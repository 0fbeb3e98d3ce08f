"""Bucketed weight sync, trainer side: packing, bucket bounds, names, skip logic."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.weight_sync import (
    bucket_stats,
    bucketize,
    expand_to_modules,
    module_key,
    nbytes,
    pack_bucket,
    select_changed,
    trainable_names,
    unpack_bucket,
)


def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, tie_word_embeddings=False))


def test_pack_unpack_round_trips_names_order_dtypes_and_values():
    named = [("a.weight", torch.randn(3, 4)), ("b.bias", torch.arange(5, dtype=torch.int64)),
             ("c.half", torch.randn(2, 2).to(torch.bfloat16)), ("d.empty", torch.empty(0, 3)),
             ("e.scalar", torch.tensor(2.5))]
    header, raw = pack_bucket(named)
    assert len(raw) == sum(nbytes(t) for _, t in named)
    out = unpack_bucket(header, raw)
    assert [n for n, _ in out] == [n for n, _ in named]
    for (_, want), (_, got) in zip(named, out, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


def test_unpacked_tensors_do_not_alias_the_wire_buffer():
    header, raw = pack_bucket([("x", torch.ones(4))])
    (_, t), = unpack_bucket(header, raw)
    t.add_(1)  # writable, and the bytes object is untouched
    assert unpack_bucket(header, raw)[0][1].tolist() == [1.0] * 4


def test_no_bucket_exceeds_the_limit_except_a_lone_oversized_tensor():
    model = small_llama()
    named = list(model.state_dict().items())
    sizes = [nbytes(t) for _, t in named]
    limit = 20_000  # embed/lm_head (64·32·4 = 8 KiB) fit; the limit forces many buckets
    buckets = list(bucketize(named, lambda p: nbytes(p[1]), limit))
    assert len(buckets) > 1
    for b in buckets:
        total = sum(nbytes(t) for _, t in b)
        assert total <= limit or len(b) == 1
    # order and completeness: concatenating the buckets gives the state dict back
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    # greedy: a bucket closes only when the next tensor would overflow it
    flat = iter(sizes)
    for b, nxt in zip(buckets, buckets[1:], strict=False):
        used = sum(next(flat) for _ in b)
        assert used + nbytes(nxt[0][1]) > limit
    assert sum(bucket_stats(named, limit)) == sum(sizes)


def test_oversized_tensor_travels_alone():
    named = [("small", torch.zeros(2)), ("huge", torch.zeros(100)), ("small2", torch.zeros(2))]
    buckets = list(bucketize(named, lambda p: nbytes(p[1]), 64))
    assert [[n for n, _ in b] for b in buckets] == [["small"], ["huge"], ["small2"]]


def test_bucketize_streams_one_bucket_at_a_time():
    read = []

    def source():
        for i in range(6):
            read.append(i)
            yield i

    it = bucketize(source(), lambda _: 1, 2)
    assert next(it) == [0, 1] and read == [0, 1, 2]  # looked one item ahead, no more
    assert list(it) == [[2, 3], [4, 5]]


def test_module_key_maps_fused_siblings_to_one_engine_module():
    layer = "model.layers.0"
    assert module_key(f"{layer}.self_attn.q_proj.weight") == f"{layer}.self_attn.qkv_proj"
    assert module_key(f"{layer}.self_attn.k_proj.weight") == f"{layer}.self_attn.qkv_proj"
    assert module_key(f"{layer}.self_attn.o_proj.weight") == f"{layer}.self_attn.o_proj"
    assert module_key(f"{layer}.mlp.up_proj.weight") == module_key(f"{layer}.mlp.gate_proj.weight")
    assert module_key(f"{layer}.mlp.down_proj.weight") == f"{layer}.mlp.down_proj"
    assert module_key("lm_head.weight") == "lm_head"


def test_changed_q_and_v_send_the_whole_fused_qkv_module_and_nothing_else():
    names = list(small_llama().state_dict())
    changed = {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"}
    sent = expand_to_modules(changed, names)
    assert sent == changed | {"model.layers.1.self_attn.k_proj.weight"}


def test_frozen_parameters_are_skipped():
    model = small_llama()
    model.requires_grad_(False)
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
    model.lm_head.weight.requires_grad_(True)
    changed = expand_to_modules(trainable_names(model), model.state_dict())
    picked = [n for n, _ in select_changed(model.state_dict().items(), changed)]
    assert picked == ["model.layers.0.mlp.down_proj.weight", "lm_head.weight"]
    assert len(list(select_changed(model.state_dict().items(), None))) == len(model.state_dict())
