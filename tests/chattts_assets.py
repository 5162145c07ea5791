"""A ChatTTS asset folder with randomly initialised weights of the real architecture.

The real weights can't be downloaded here; this builds every part ChatTTS's loader reads (Vocos,
DVAE, GPT, embeddings, decoder, tokenizer) from ChatTTS's own config and classes, so the real
``chattts`` package loads and runs it. The voice is noise, but shapes, dtypes, sample rate and
the whole code path are the production ones.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

# BERT-style vocabulary like ChatTTS's (bert-base-chinese plus its control tokens): CJK
# characters and punctuation, ASCII with word-piece continuations.
CONTROL = (["[Stts]", "[Ptts]", "[spk_emb]", "[empty_spk]", "[Sbreak]", "[Pbreak]", "[Ebreak]",
            "[uv_break]", "[v_break]", "[lbreak]", "[laugh]"]
           + [f"[break_{i}]" for i in range(8)] + [f"[laugh_{i}]" for i in range(3)]
           + [f"[oral_{i}]" for i in range(10)] + [f"[speed_{i}]" for i in range(10)])


def build_random_chattts(out: Path, seed: int = 0) -> Path:
    """Write ``out/asset/…`` (idempotent: an existing complete folder is kept)."""
    if (out / "asset" / "complete").is_file():
        return out
    import torch
    from ChatTTS import Chat
    from ChatTTS.core import instantiate_class
    from ChatTTS.model.dvae import DVAE
    from ChatTTS.model.embed import Embed
    from safetensors.torch import save_file
    from transformers import BertTokenizer, LlamaConfig, LlamaModel
    from vocos import Vocos

    def save(module, name: str) -> None:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, asset / name)

    config = Chat().config
    asset = out / "asset"
    asset.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    v = config.vocos
    save(Vocos(feature_extractor=instantiate_class(args=(), init=asdict(v.feature_extractor)),
               backbone=instantiate_class(args=(), init=asdict(v.backbone)),
               head=instantiate_class(args=(), init=asdict(v.head))), "Vocos.safetensors")
    save(DVAE(decoder_config=asdict(config.dvae.decoder),
              encoder_config=asdict(config.dvae.encoder), vq_config=asdict(config.dvae.vq),
              dim=config.dvae.decoder.idim), "DVAE.safetensors")
    save(DVAE(decoder_config=asdict(config.decoder), dim=config.decoder.idim),
         "Decoder.safetensors")
    e = config.embed
    save(Embed(e.hidden_size, e.num_audio_tokens, e.num_text_tokens, e.num_vq),
         "Embed.safetensors")
    g = config.gpt
    LlamaModel(LlamaConfig(
        hidden_size=g.hidden_size, intermediate_size=g.intermediate_size,
        num_attention_heads=g.num_attention_heads, num_hidden_layers=g.num_hidden_layers,
        max_position_embeddings=g.max_position_embeddings, vocab_size=g.num_text_tokens,
    )).save_pretrained(asset / "gpt")
    chars = [chr(c) for c in range(33, 127)]
    cjk_punct = list("，。！？、；：“”‘’（）《》…—")
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
             + cjk_punct + [chr(c) for c in range(0x4E00, 0x9FA6)])
    vocab = vocab[: g.num_text_tokens - len(CONTROL)]
    tokenizer_dir = asset / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(tokenizer_dir / "vocab.txt"), do_lower_case=True)
    tokenizer.add_special_tokens({"additional_special_tokens": CONTROL})
    tokenizer.save_pretrained(tokenizer_dir)
    (asset / "complete").write_text("random weights\n")
    return out
