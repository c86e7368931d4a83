"""A tiny CSM checkpoint with random weights and a tokenizer, built at test time and saved like a real one.

No real CSM weights can be downloaded here; this has the same architecture, files and special tokens as
sesame/csm-1b, only small, so the real loading and generation code runs on it.

Two options shape the weights so a test can see what random weights never show:

- `undecodable=n`: the audio vocabulary has n ids more than the codec's codebook (sesame/csm-1b: 2051 for 2048),
  and they are the heads' favourites everywhere: every hidden state carries a constant positive feature that only
  those ids read, so an engine that forgot to mask them would pick them at every step;
- `end_after=k`: greedy decoding follows a script: k audio frames (codebook j of frame t holds
  `k - t + 1 + 10 j`), then the end frame (every code 0, CSM's `codebook_eos_token_id`), with or without context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<|unk|>"]
CODEBOOK_SIZE = 64
NUM_CODEBOOKS = 4
CSM_UNDECODABLE = 3  # sesame/csm-1b: 2051 audio ids for Mimi's 2048-entry codebooks
LURE = 10.0  # weight of the constant feature in the undecodable ids' head rows: they lead by 50+ logits
SCRIPT = 1.0  # weight of a scripted state in embeddings and heads: the scripted id leads by 3+ logits
STEP = 10  # codebook j of a scripted frame in state s holds s + STEP * j (s > 0); state 0 is the end frame
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


def tiny_config(tokenizer: object, max_positions: int = 2048, vocab_size: int = CODEBOOK_SIZE) -> object:
    from transformers import CsmConfig, MimiConfig

    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)  # type: ignore[attr-defined]
    codec = MimiConfig(hidden_size=32, num_filters=4, codebook_size=CODEBOOK_SIZE, codebook_dim=16,
                       num_quantizers=NUM_CODEBOOKS, vector_quantization_hidden_dimension=16, upsample_groups=32,
                       num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=16)
    depth = {"num_codebooks": NUM_CODEBOOKS, "backbone_hidden_size": 64, "vocab_size": vocab_size,
             "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": NUM_CODEBOOKS + 1}
    return CsmConfig(num_codebooks=NUM_CODEBOOKS, vocab_size=vocab_size, text_vocab_size=len(tokenizer),  # type: ignore[arg-type]
                     hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=ids[0],
                     pad_token_id=ids[2], audio_token_id=ids[2], audio_eos_token_id=ids[3],
                     codebook_pad_token_id=vocab_size - 1, codebook_eos_token_id=0,
                     depth_decoder_config=depth, codec_config=codec.to_dict())


def build_tiny_checkpoint(directory: Path, seed: int = 0, max_positions: int = 2048, *, undecodable: int = 0,
                          end_after: int | None = None) -> Path:
    """Save a tiny CsmForConditionalGeneration + CsmProcessor to `directory` (about 1 MB): random weights, shaped
    by `undecodable` and `end_after` as the module says."""
    import torch
    from transformers import CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = CsmForConditionalGeneration(tiny_config(tokenizer, max_positions, CODEBOOK_SIZE + undecodable))
    with torch.no_grad():
        if end_after is not None:
            script_end_frame(model, tokenizer.eos_token_id, end_after)  # type: ignore[attr-defined]
        if undecodable:
            lure_to_undecodable(model)
    processor = CsmProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000),
                             tokenizer=tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def scripted_code(state: int, codebook: int) -> int:
    """The code of `codebook` in a scripted frame: the end frame (state 0) is all zeros."""
    return 0 if state == 0 else state + STEP * codebook


def script_end_frame(model: Any, text_end_id: int, frames: int) -> None:
    """Greedy decoding after a turn (its text ends with the end token): states frames, ..., 1 (audio), then 0 (end).

    State s is the unit vector e_s (backbone dims 0..frames+1, projected onto the same depth-decoder dims): the text's
    end token carries e_{frames+1}, every code of a frame in state s carries e_s, the backbone head maps e_s to
    codebook-0 code s - 1 and each depth-decoder head maps e_s to the next codebook's code of state s. The random
    layers and the other embeddings stay: they add little next to a unit vector.
    """
    audio = model.backbone_model.embed_tokens.embed_audio_tokens.weight  # tied to the depth decoder's embed_tokens
    depth, heads, vocab = model.depth_decoder.model, model.depth_decoder.codebooks_head.weight, model.config.vocab_size
    model.embed_text_tokens.weight[text_end_id, frames + 1] += SCRIPT
    for state in range(frames + 2):
        depth.inputs_embeds_projector.weight[state, state] += 1.0
        if state > 0:
            model.lm_head.weight[state - 1, state] += SCRIPT
        if state <= frames:
            for codebook in range(NUM_CODEBOOKS):
                audio[scripted_code(state, codebook) + codebook * vocab, state] += SCRIPT
            for j in range(NUM_CODEBOOKS - 1):  # head j predicts codebook j + 1
                heads[j, state, scripted_code(state, j + 1)] += SCRIPT


def lure_to_undecodable(model: Any) -> None:
    """Make the ids past the codec's codebook the heads' favourites at every step.

    The last dimension of every embedding is a constant 1 that no layer writes to (their output rows for it are
    zero), so after each RMS norm it stays large and positive; the depth decoder's projector carries it to its own
    last dimension. Only the undecodable ids' head rows read it, with weight LURE.
    """
    first = int(model.config.codec_config.codebook_size)
    depth = model.depth_decoder.model
    for stack, last in ((model.backbone_model, -1), (depth, -1)):
        for layer in stack.layers:
            layer.self_attn.o_proj.weight[last] = 0.0
            layer.mlp.down_proj.weight[last] = 0.0
    model.embed_text_tokens.weight[:, -1] = 1.0
    model.backbone_model.embed_tokens.embed_audio_tokens.weight[:, -1] = 1.0
    depth.inputs_embeds_projector.weight[-1] = 0.0
    depth.inputs_embeds_projector.weight[:, -1] = 0.0
    depth.inputs_embeds_projector.weight[-1, -1] = 1.0
    model.lm_head.weight[:, -1] = 0.0
    model.lm_head.weight[first:, -1] = LURE
    heads = model.depth_decoder.codebooks_head.weight  # [codebooks - 1, hidden, vocab]
    heads[:, -1] = 0.0
    heads[:, -1, first:] = LURE
