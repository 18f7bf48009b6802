"""Tiny GGUF files for the tokenizer and model-variant tests, and llama.cpp's answers for them.

Usage (scripts/tiny-gguf-models.sh runs both steps with the right environments):
  python tiny-gguf-models.py build     SPM.model OUTDIR   (needs gguf, numpy, sentencepiece, protobuf)
  python tiny-gguf-models.py reference OUTDIR             (needs llama_cpp, from scripts/llama-cpp-venv.sh)

`build` writes, with seeded random weights:
  spm-vocab.gguf      a sentencepiece (llama-style) vocabulary: the first SPM_TOKENS pieces (and all the
                      single characters) of a real
                      SentencePiece BPE model (Mistral's v3 tokenizer, Apache-2.0, from the PyPI
                      package mistral-common) with their scores and types, plus a tiny llama model.
  llama3-rope.gguf    arch llama with a `rope_freqs.weight` tensor (Llama 3's frequency factors).
  rope-linear.gguf    arch llama, rope.scaling.type = linear, factor 2.
  rope-yarn.gguf      arch llama, rope.scaling.type = yarn, factor 4, original context 4096.
  qwen2.gguf          arch qwen2: Q/K/V biases, NeoX-style RoPE.
All weights are f32 (token embeddings f16; llama.cpp reads their rows exactly) so that the
comparison is not blurred by quantization.

`reference` writes OUTDIR/tiny_gguf_reference.json with llama-cpp-python's token ids for the
vocabulary model (special tokens parsed, as llama.cpp's `parse_special`) and, for every model,
the logits after a prompt (one prefill batch) and after each of a few single-token decode steps
(KV cache in f32, no flash attention).
"""
import hashlib
import json
import math
import os
import sys

import numpy as np

SPM_TOKENS = 3072
SMALL_VOCAB_PIECES = ["▁", "a", "e", "i", "o", "u", "t", "n", "s", "r", "▁t", "▁a", "he", "▁the", "in", "er", "an"]

PROMPTS = [
    "Hello world",
    "The capital of France is Paris.",
    "[INST] What is the capital of France? [/INST]",
    "<s>[INST]hi[/INST] ok</s>",
    "  leading spaces and   runs   of spaces\tand\ttabs\n\nnewlines",
    "Numbers: 12345, 3.14159, 2026-11-23 and 1,000,000.",
    "Accents: café, naïve, Zürich, São Paulo; symbols: €100 ±5 °C",
    "Emoji: 🙂🚀👩‍💻 and CJK: 東京は日本の首都です。한국어 텍스트.",
    "def f(x):\n    return x**2  # square\n",
    "don't won't it's we're they've I'm you'll he'd",
    "[REFERENCE_DOC_3]user-defined[REFERENCE_DOC_12] and <unk> too",
    "",
    " ",
    "▁literal marker and <0x41> written out",
]

# (prompt ids, decode ids) for the logits references; ids are below every model's vocabulary.
LOGIT_PROMPT = [1, 40, 77, 3, 150, 9, 260, 31, 64, 200, 12]
LOGIT_DECODE = [99, 5, 271]


def rng_for(name):
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))


def llama_weights(w, rng, dim, heads, kv_heads, ffn, layers, vocab, qkv_bias, output=True):
    hd = dim // heads
    f = lambda *shape, s=0.3: (rng.standard_normal(shape) * s).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f(vocab, dim, s=1.0).astype(np.float16))
    w.add_tensor("output_norm.weight", (1.0 + f(dim, s=0.1)).astype(np.float32))
    if output:
        w.add_tensor("output.weight", f(vocab, dim, s=0.3))
    for l in range(layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", 1.0 + f(dim, s=0.1))
        w.add_tensor(p + "attn_q.weight", f(heads * hd, dim))
        w.add_tensor(p + "attn_k.weight", f(kv_heads * hd, dim))
        w.add_tensor(p + "attn_v.weight", f(kv_heads * hd, dim))
        if qkv_bias:
            w.add_tensor(p + "attn_q.bias", f(heads * hd, s=0.5))
            w.add_tensor(p + "attn_k.bias", f(kv_heads * hd, s=0.5))
            w.add_tensor(p + "attn_v.bias", f(kv_heads * hd, s=0.5))
        w.add_tensor(p + "attn_output.weight", f(dim, heads * hd))
        w.add_tensor(p + "ffn_norm.weight", 1.0 + f(dim, s=0.1))
        w.add_tensor(p + "ffn_gate.weight", f(ffn, dim))
        w.add_tensor(p + "ffn_up.weight", f(ffn, dim))
        w.add_tensor(p + "ffn_down.weight", f(dim, ffn))


def hparams(w, dim, heads, kv_heads, ffn, layers, ctx, base):
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(1e-5)


def spm_vocab(model_path, limit):
    """Pieces, scores and GGUF token types of a SentencePiece model (types as the model stores them)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    with open(model_path, "rb") as fh:
        m.ParseFromString(fh.read())
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE or not m.trainer_spec.byte_fallback:
        raise SystemExit(f"{model_path}: expected a BPE model with byte fallback")
    # SentencePiece's BPE trainer puts the single characters last; keep them all so that every
    # kept piece can be reached by merges from its characters, as in the full vocabulary.
    pieces = [p for i, p in enumerate(m.pieces) if i < limit or len(p.piece) == 1]
    # SentencePiece's piece types are GGUF's token types (NORMAL 1 ... BYTE 6).
    return [p.piece for p in pieces], [p.score for p in pieces], [int(p.type) for p in pieces]


def small_vocab():
    """<unk> <s> </s>, the 256 byte tokens and a few pieces: enough for llama.cpp to load a model."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SMALL_VOCAB_PIECES
    scores = [0.0] * 259 + [-float(i) for i in range(len(SMALL_VOCAB_PIECES))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SMALL_VOCAB_PIECES)
    return tokens, scores, types


def add_vocab(w, tokens, scores, types):
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)


def llama3_rope_factors(head_dim, base, factor, low, high, old_ctx):
    """Llama 3's per-frequency divisors (as its config's `rope_scaling` of type llama3 defines them)."""
    out = []
    for i in range(head_dim // 2):
        wavelen = 2 * math.pi * base ** (2 * i / head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def build(model_path, outdir):
    import gguf

    os.makedirs(outdir, exist_ok=True)

    def write(name, arch, fill):
        w = gguf.GGUFWriter(os.path.join(outdir, name), arch)
        w.add_name(name.removesuffix(".gguf"))
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    tokens, scores, types = spm_vocab(model_path, SPM_TOKENS)

    def spm(w):
        hparams(w, dim=4, heads=1, kv_heads=1, ffn=8, layers=1, ctx=256, base=10000.0)
        add_vocab(w, tokens, scores, types)
        llama_weights(w, rng_for("spm"), 4, 1, 1, 8, 1, len(tokens), False, output=False)

    write("spm-vocab.gguf", "llama", spm)

    st, ss, sty = small_vocab()
    shape = dict(dim=32, heads=2, kv_heads=1, ffn=48, layers=2)

    def variant(name, arch, rope, bias, base=10000.0):
        def fill(w):
            hparams(w, ctx=16384, base=base, **shape)
            rope(w)
            add_vocab(w, st, ss, sty)
            llama_weights(w, rng_for(name), shape["dim"], shape["heads"], shape["kv_heads"], shape["ffn"],
                          shape["layers"], len(st), bias)

        write(name, arch, fill)

    hd = shape["dim"] // shape["heads"]

    def llama3(w):
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(hd, 10000.0, 8.0, 1.0, 4.0, 256))

    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)

    def yarn(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(4096)

    variant("llama3-rope.gguf", "llama", llama3, False)
    variant("rope-linear.gguf", "llama", linear, False)
    variant("rope-yarn.gguf", "llama", yarn, False)
    variant("qwen2.gguf", "qwen2", lambda w: None, True, base=1000000.0)


def detokenize(llama_cpp, model, ids):
    """llama.cpp's own detokenizer: special tokens rendered, the prefix space of the first token removed."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    vocab = llama_cpp.llama_model_get_vocab(model)
    buf = (llama_cpp.ctypes.c_char * 4096)()
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, len(buf), False, True)
    if n < 0:
        raise SystemExit("detokenize buffer too small")
    return bytes(buf[:n]).decode("utf-8", errors="replace")


def reference(outdir):
    import llama_cpp

    def sha(path):
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    out = {"llama_cpp_python": llama_cpp.__version__, "files": {}, "tokenizer": [], "logits": {}}
    spm_path = os.path.join(outdir, "spm-vocab.gguf")
    llm = llama_cpp.Llama(model_path=spm_path, vocab_only=True, verbose=False)
    for p in PROMPTS:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
        with_bos = llm.tokenize(p.encode("utf-8"), add_bos=True, special=True)
        out["tokenizer"].append({"text": p, "ids": ids, "ids_with_bos": with_bos,
                                 "decoded": detokenize(llama_cpp, llm.model, ids)})
    out["files"]["spm-vocab.gguf"] = sha(spm_path)
    del llm
    for name in ["llama3-rope.gguf", "rope-linear.gguf", "rope-yarn.gguf", "qwen2.gguf"]:
        path = os.path.join(outdir, name)
        out["files"][name] = sha(path)
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                              type_k=0, type_v=0, flash_attn=False, n_threads=1)
        llm.eval(LOGIT_PROMPT)
        row = lambda: [float(f"{v:.8g}") for v in llm.scores[llm.n_tokens - 1]]  # noqa: E731
        steps = [row()]
        for t in LOGIT_DECODE:
            llm.eval([t])
            steps.append(row())
        out["logits"][name] = {"prompt": LOGIT_PROMPT, "decode": LOGIT_DECODE, "steps": steps}
        del llm
    with open(os.path.join(outdir, "tiny_gguf_reference.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False)
        fh.write("\n")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "reference":
        reference(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
