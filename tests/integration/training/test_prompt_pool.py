"""PPO's prompt pool on real SQL (SQLite and PostgreSQL): pinned by the prompt mark,
near-duplicates merged, capped per user, gate prompts and eval completions left out."""

from core.events import CompletionChoice, CompletionRecord
from feedback.store.models import CompletionTable
from training.datasets import is_gate_prompt
from training.recipes.ppo import PPOConfig, load_prompts


def completion(i: int, prompt: str, user: str | None = None, **extra) -> CompletionRecord:
    return CompletionRecord(request_id=f"req-{i}", policy_version="policy-0001", model="m",
                            endpoint="completions", prompt=prompt, user=user,
                            choices=[CompletionChoice(index=0, text="ok")], **extra)


def test_prompt_pool_is_pinned_deduped_capped_and_excludes_gate_prompts(feedback_store):
    store = feedback_store
    store.persist([completion(0, "Oldest from ann", "ann"),
                   completion(1, "Tell me a joke", "ann"),
                   completion(2, "tell me  a JOKE", "bob"),
                   completion(3, "Second from ann", "ann"),
                   completion(4, "Third from ann", "ann")])
    mark = store.completion_mark()
    assert mark > 0
    store.persist([completion(5, "After the mark", "cy")])
    cfg = PPOConfig(max_prompts_per_user=2, gate_holdout_share=0.0)
    prompts, source = load_prompts(store, cfg, prompt_mark=mark)
    # newest first; "tell me a joke" twice is one prompt (bob's newer copy is kept); ann's
    # newest two distinct prompts are kept and her oldest is over the cap of 2; nothing
    # after the mark
    assert source == "completions"
    assert prompts == ["Third from ann", "Second from ann", "tell me  a JOKE"]
    assert "After the mark" in load_prompts(store, cfg)[0]  # unpinned: everything


def test_gate_prompts_and_eval_completions_never_reach_ppo(feedback_store):
    store = feedback_store
    prompts = [f"traffic prompt {i}" for i in range(60)]
    store.persist([completion(i, p) for i, p in enumerate(prompts)])
    pool, _ = load_prompts(store, PPOConfig(gate_holdout_share=0.2))
    held = {p for p in prompts if is_gate_prompt(p, 0.2)}
    assert held and set(pool) == set(prompts) - held
    if hasattr(CompletionTable, "purpose"):  # the column another change adds
        store.persist([completion(100, "an eval prompt", purpose="eval")])
        assert "an eval prompt" not in load_prompts(store, PPOConfig())[0]
