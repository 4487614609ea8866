"""The example's GenAI endpoint: a small deterministic text model, streamed token by token.

A word bigram (Markov) model trained at start-up from the dataset descriptions that ship with
scikit-learn (``sklearn/datasets/descr/*.rst``, already installed with the example, nothing
downloaded), so the streaming and LLM panels have real traffic without a real LLM. The answer
is a stream of server-sent events, one token a chunk, then one event with the usage; the same
prompt always gives the same answer. A simulated prefill and per-token decode time (stages
``prefill`` and ``decode``) make time to first chunk and tokens per second look like a model's.

Request: ``POST /generate`` with ``{"prompt": "...", "max_tokens": 24}``. The handler observes
``tokens_in`` (prompt words) before the first chunk and ``tokens_out`` and ``cost`` (a price per
token, input and output alike) when the stream ends, a stream cut short included.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import re
import time
import zlib
from typing import Any, Dict, Iterator, List, Tuple

MODEL_NAME = "textgen"
MODEL_VERSION = "v1"
#: price of one token, input or output (an example figure: 0.02 per 1000 tokens)
COST_PER_TOKEN = 0.00002
DEFAULT_TOKENS = 24
MAX_TOKENS = 256
MAX_PROMPT_CHARS = 4000
#: simulated model time: before the first token (plus per prompt token), and per generated token
PREFILL_SECONDS = 0.02
PREFILL_SECONDS_PER_TOKEN = 0.0002
DECODE_SECONDS = 0.002

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[.,]")


def words(text: str) -> List[str]:
    """Lower-case words and the punctuation kept (``.`` and ``,``): the model's tokens."""
    return _WORD.findall(text.lower())


def corpus() -> str:
    """The dataset descriptions scikit-learn ships, concatenated (about 10,000 words)."""
    spec = importlib.util.find_spec("sklearn")  # its files only: importing sklearn.datasets takes seconds
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the example's text model needs scikit-learn (pip install -e '.[example]')")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "descr")
    texts = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".rst"):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                texts.append(fh.read())
    return "\n".join(re.sub(r"[`*_|=~^:-]{2,}|\.\. \S+", " ", t) for t in texts)  # rst markup out


class TextGen:
    """A word bigram model: each word's most frequent followers with their counts."""

    def __init__(self, text: str = "") -> None:
        tokens = words(text or corpus())
        counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for a, b in zip(tokens, tokens[1:]):
            counts[a][b] += 1
        self.followers = {w: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:8] for w, c in counts.items()}
        self.vocabulary = len(self.followers)

    def tokens(self, prompt: str, n: int) -> Iterator[str]:
        """``n`` tokens after ``prompt``: each drawn from the last word's followers by their counts,
        with a generator seeded by the prompt (the same prompt, the same answer); after a word
        without followers it goes on from ``the``."""
        rng = random.Random(zlib.crc32(prompt.encode("utf-8", "replace")))
        word = next((w for w in reversed(words(prompt)) if w in self.followers), "the")
        for _ in range(n):
            options = self.followers.get(word) or self.followers["the"]
            word = rng.choices([w for w, _ in options], [c for _, c in options])[0]
            yield word

    def stream(self, monitor: Any, prompt: str, max_tokens: int) -> Iterator[str]:
        """Server-sent events of one generation, observed through ``monitor``; every chunk is made
        while the response is streamed, inside the prediction's request."""
        tokens_in = len(words(prompt))
        monitor.observe(tokens_in=tokens_in)
        produced = 0
        try:
            with monitor.stage("prefill"):
                time.sleep(PREFILL_SECONDS + PREFILL_SECONDS_PER_TOKEN * tokens_in)
            generated = self.tokens(prompt, max_tokens)
            for _ in range(max_tokens):
                with monitor.stage("decode"):
                    token = next(generated)
                    time.sleep(DECODE_SECONDS)
                produced += 1
                yield event({"token": token if token in ".," else " " + token})
            yield event({"done": True, "model": MODEL_NAME, "tokens_in": tokens_in, "tokens_out": produced,
                         "cost": round((tokens_in + produced) * COST_PER_TOKEN, 8)})
        finally:  # a stream cut short still counts what it produced
            monitor.observe(tokens_out=produced, cost=(tokens_in + produced) * COST_PER_TOKEN)


def event(data: Dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def parse(body: Any) -> Tuple[str, int]:
    """(prompt, max_tokens) of a request body; ValueError with the client's mistake."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object with 'prompt'")
    extra = sorted(str(key) for key in body if key not in ("prompt", "max_tokens"))
    if extra:
        raise ValueError(f"unknown field{'s' if len(extra) > 1 else ''}: {', '.join(extra)}"
                         " (expected 'prompt' and 'max_tokens')")
    prompt, max_tokens = body.get("prompt"), body.get("max_tokens", DEFAULT_TOKENS)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"'prompt' has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise ValueError(f"'max_tokens' must be an integer from 1 to {MAX_TOKENS}")
    return prompt, max_tokens
