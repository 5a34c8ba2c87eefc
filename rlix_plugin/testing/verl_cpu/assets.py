"""A tiny random model, its tokenizer and a prompt dataset, built locally in seconds.

What a real verl GRPO step needs and nothing more: a Qwen2 causal LM of a few ten thousand
parameters (random weights; training makes no sense of it, which is not the point), a byte-level
BPE tokenizer with a Qwen-style chat template (verl's Qwen token builder requires ``"\\n"`` to be one
token and ``<|im_end|>`` to exist), and a parquet of arithmetic prompts in verl's RL dataset
layout (``data_source`` ``openai/gsm8k``, so verl's built-in rule reward scores them).

:func:`build` writes all three under one directory and returns their paths; from a shell,
``python -m rlix_plugin.testing.verl_cpu.assets DIR --tags job-a job-b`` does the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 300

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyAssets:
    """Paths of the built assets: ``model`` (a Hugging Face directory with the tokenizer),
    ``train`` and ``val`` (parquet files), and one training set per tag (``tagged[tag]``)."""

    model: Path
    train: Path
    val: Path
    tagged: dict[str, Path]


def _prompt(index: int) -> tuple[str, int]:
    a, b = index % 10, (3 * index + 1) % 10
    return f"What is {a} + {b} ?", a + b


def build_tokenizer(path: Path):
    """A byte-level BPE tokenizer trained on the dataset's own text.

    Byte-level, like Qwen2's: transformers loads any tokenizer next to a ``qwen2`` model as
    ``Qwen2Tokenizer``, which re-creates the byte-level pre-tokenizer whatever the file says.
    Every byte is a base token, so ``"\n"`` is one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = []
    for index in range(64):
        question, answer = _prompt(index)
        corpus.append(
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\nThe answer is #### {answer}<|im_end|>\n"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


def build_model(path: Path, vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0) -> None:
    """A one-layer Qwen2 with random weights, saved with its generation config."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    model.save_pretrained(path)


def build_dataset(path: Path, rows: int, split: str, tag: str | None = None) -> None:
    """``rows`` prompts "What is a + b ?" with ground truth ``a + b``; with ``tag``, each prompt
    starts with ``[tag]``, so that a job's samples can be told from another job's."""
    import pandas as pd

    records = []
    for index in range(rows):
        question, answer = _prompt(index)
        if tag is not None:
            question = f"[{tag}] {question}"
        records.append(
            {
                "data_source": "openai/gsm8k",
                "prompt": [{"role": "user", "content": question}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(answer)},
                "extra_info": {"split": split, "index": index},
            }
        )
    pd.DataFrame.from_records(records).to_parquet(path)


def build(directory: Path | str, train_rows: int = 16, val_rows: int = 4, tags: Sequence[str] = ()) -> TinyAssets:
    """Write under ``directory`` the model (``tiny-qwen2/``, with its tokenizer),
    ``train.parquet``, ``val.parquet`` and, per tag, ``<tag>.parquet`` (prompts marked ``[tag]``).
    """
    root = Path(directory)
    model_dir = root / "tiny-qwen2"
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(model_dir)
    build_model(model_dir, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    assets = TinyAssets(
        model=model_dir,
        train=root / "train.parquet",
        val=root / "val.parquet",
        tagged={tag: root / f"{tag}.parquet" for tag in tags},
    )
    build_dataset(assets.train, train_rows, "train")
    build_dataset(assets.val, val_rows, "test")
    for tag, path in assets.tagged.items():
        build_dataset(path, train_rows, "train", tag=tag)
    return assets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random model, its tokenizer and datasets for verl.")
    parser.add_argument("directory")
    parser.add_argument("--tags", nargs="*", default=[], help="also write <tag>.parquet with prompts marked [tag]")
    args = parser.parse_args(argv)
    assets = build(args.directory, tags=args.tags)
    print(f"model {assets.model}\ntrain {assets.train}\nval {assets.val}")
    for tag, path in assets.tagged.items():
        print(f"{tag} {path}")


if __name__ == "__main__":
    main()


__all__ = ["TinyAssets", "build", "build_dataset", "build_model", "build_tokenizer", "main"]
