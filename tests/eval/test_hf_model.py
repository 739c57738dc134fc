"""HFEvalModel on a tiny random LlamaForCausalLM with a SentencePiece tokenizer built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from megatron_chimed.eval.model_api import HFEvalModel, TemplatedModel
from megatron_chimed.eval.multichoice import MultiChoiceTask
from megatron_chimed.eval.runner import run_eval

CORPUS = [
    "以下是中国关于基础医学考试的单项选择题，请选出其中的正确答案。",
    "人体内含量最多的无机盐是____\nA. 钠\nB. 钾\nC. 钙\nD. 铁\n答案：C",
    "患者 医生 咳嗽 发热 头痛 胃 肺 示例 金标 题 解析",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return transformers.LlamaTokenizer.from_pretrained(str(folder))


def tiny_llama(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return transformers.LlamaForCausalLM(config).float()


def test_letter_token_is_taken_in_context(tokenizer):
    model = HFEvalModel(tiny_llama(len(tokenizer)), tokenizer)
    in_context = model.candidate_token_id("答案：", "C")
    # SentencePiece would encode a lone "C" as "▁C": a different token from the one after "：".
    assert tokenizer.convert_ids_to_tokens([in_context]) == ["C"]
    assert tokenizer.encode("C", add_special_tokens=False) != [in_context]


def test_batched_left_padding_matches_one_by_one(tokenizer):
    model = HFEvalModel(tiny_llama(len(tokenizer)), tokenizer, batch_size=3)
    prompts = ["答案：", "人体内含量最多的无机盐是____\n答案：", "患者 发热 头痛"]
    letters = ["A", "B", "C", "D"]
    batched = model.next_token_logprobs(prompts, letters)
    single = [model.next_token_logprobs([p], letters)[0] for p in prompts]
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)
    assert all(v < 0 for row in batched for v in row)  # log-probabilities
    generated = model.generate(prompts, max_new_tokens=4, seed=0)
    assert all(generated) and len(set(generated)) > 1  # real, prompt-dependent text
    assert generated == [model.generate([p], 4, seed=0)[0] for p in prompts]


def crafted_model(tokenizer, winner: str):
    """A model whose next token depends only on the last input token: after "：" it says
    ``winner``; after anything else it says "A"."""
    model = tiny_llama(len(tokenizer))
    helper = HFEvalModel(model, tokenizer)
    colon = tokenizer.convert_tokens_to_ids("：")
    win_id = helper.candidate_token_id("答案：", winner)
    other_id = helper.candidate_token_id("答案：", "A")
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()  # residual stream = embedding of the token itself
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[colon] = 0.0
        model.model.embed_tokens.weight[colon, 1] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[win_id, 1] = 1.0
        model.lm_head.weight[other_id, 0] = 1.0
    return HFEvalModel(model, tokenizer, batch_size=2)


def test_crafted_letter_wins_after_answer_cue(tokenizer):
    model = crafted_model(tokenizer, "C")
    scores = model.next_token_logprobs(["题目\n答案：", "题目"], ["A", "B", "C", "D"])
    assert max(range(4), key=scores[0].__getitem__) == 2  # C after "："
    assert max(range(4), key=scores[1].__getitem__) == 0  # A otherwise


def test_multichoice_task_on_crafted_model(tokenizer, tmp_path):
    header = "id,question,A,B,C,D,answer\n"
    (tmp_path / "dev").mkdir()
    (tmp_path / "val").mkdir()
    (tmp_path / "dev" / "basic_medicine_dev.csv").write_text(
        header + "".join(f"{i},示例,钠,钾,钙,铁,C\n" for i in range(5)), encoding="utf-8"
    )
    (tmp_path / "val" / "basic_medicine_val.csv").write_text(
        header + "0,题1,钠,钾,钙,铁,C\n1,题2,钠,钾,钙,铁,C\n2,题3,钠,钾,钙,铁,B\n", encoding="utf-8"
    )
    cfg = OmegaConf.create(
        {
            "format": "ceval",
            "data_dir": str(tmp_path),
            "split": "val",
            "subjects": ["basic_medicine"],
            "shot_split": "dev",
            "shots": 5,
        }
    )
    result = MultiChoiceTask(cfg).run(crafted_model(tokenizer, "C"), seed=0)
    assert result["metrics"]["acc_micro"] == pytest.approx(200 / 3)  # 2 of 3 gold letters are C
    # A chat template that ends in something other than "：" moves every answer to "A".
    wrapped = TemplatedModel(crafted_model(tokenizer, "C"), "<human>:{prompt}\n<bot>:")
    assert MultiChoiceTask(cfg).run(wrapped, seed=0)["metrics"]["acc_micro"] == 0.0


def test_suite_runs_on_the_tiny_model_and_sample_data(tokenizer, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    samples = repo / "megatron_chimed" / "sample_data" / "eval"
    if not samples.is_dir():
        pytest.skip("bundled sample data not present")
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base=None):
        subjects = "eval.tasks.cmmlu.subjects=[anatomy,clinical_knowledge]"
        cfg = compose(overrides=["+eval=suite", subjects])
    suite = cfg.eval
    for task in suite.tasks.values():
        task.seeds = [0]
        task.max_new_tokens = 6  # random weights: only the plumbing is under test
    suite = OmegaConf.create(
        OmegaConf.to_yaml(suite).replace("megatron_chimed/sample_data/eval", str(samples))
    )
    model = HFEvalModel(tiny_llama(len(tokenizer)), tokenizer, batch_size=4)
    result = run_eval(suite, model, tmp_path)
    assert len(result["tasks"]) == 9
    for task in result["tasks"]:
        assert task["mean"], task["task"]
    assert (tmp_path / "suite.json").is_file() and (tmp_path / "suite.md").is_file()


def test_with_sampling_copies_the_adapter_with_the_task_s_settings(tokenizer):
    from megatron_chimed.eval.model_api import with_sampling

    greedy = HFEvalModel(tiny_llama(len(tokenizer)), tokenizer)
    assert with_sampling(greedy, None, None) is greedy
    sampled = with_sampling(TemplatedModel(greedy, "{prompt}"), 1.0, 0.85).model
    assert (sampled.temperature, sampled.top_p) == (1.0, 0.85)
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)  # the original stays greedy
    prompts = ["患者 发热 头痛", "答案："]
    assert sampled.generate(prompts, 6, seed=3) == sampled.generate(prompts, 6, seed=3)
    assert sampled.generate(prompts, 6, seed=3) != sampled.generate(prompts, 6, seed=4)
