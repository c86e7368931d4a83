"""A tiny CSM checkpoint with random weights and a tokenizer, built at test time and saved like a real one.

No real CSM weights can be downloaded here; this has the same architecture, files and special tokens as
sesame/csm-1b, only small, so the real loading and generation code runs on it.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<|unk|>"]
CODEBOOK_SIZE = 64
NUM_CODEBOOKS = 4
CORPUS = [
    "The lighthouse keeper counted the waves before the dawn. [0] [1] [2] [3]",
    "Chapter one: it was a bright cold day in April, and the clocks were striking thirteen.",
    "Numbers 0123456789, dates, quotes \"like this\", and punctuation; all of it! Really? Yes.",
]


def build_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", pad_token="<|AUDIO|>", unk_token="<|unk|>",
                                   model_input_names=["input_ids", "attention_mask"])


def tiny_config(tokenizer: object, max_positions: int = 2048) -> object:
    from transformers import CsmConfig, MimiConfig

    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)  # type: ignore[attr-defined]
    codec = MimiConfig(hidden_size=32, num_filters=4, codebook_size=CODEBOOK_SIZE, codebook_dim=16,
                       num_quantizers=NUM_CODEBOOKS, vector_quantization_hidden_dimension=16, upsample_groups=32,
                       num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=16)
    depth = {"num_codebooks": NUM_CODEBOOKS, "backbone_hidden_size": 64, "vocab_size": CODEBOOK_SIZE,
             "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": NUM_CODEBOOKS + 1}
    return CsmConfig(num_codebooks=NUM_CODEBOOKS, vocab_size=CODEBOOK_SIZE, text_vocab_size=len(tokenizer),  # type: ignore[arg-type]
                     hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=ids[0],
                     pad_token_id=ids[2], audio_token_id=ids[2], audio_eos_token_id=ids[3],
                     codebook_pad_token_id=CODEBOOK_SIZE - 1, codebook_eos_token_id=0,
                     depth_decoder_config=depth, codec_config=codec.to_dict())


def build_tiny_checkpoint(directory: Path, seed: int = 0, max_positions: int = 2048) -> Path:
    """Save a random tiny CsmForConditionalGeneration + CsmProcessor to `directory` (about 1 MB)."""
    import torch
    from transformers import CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = CsmForConditionalGeneration(tiny_config(tokenizer, max_positions))
    processor = CsmProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000),
                             tokenizer=tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
