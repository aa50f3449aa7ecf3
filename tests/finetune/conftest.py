"""Fixtures for finetune tests: a tiny manual as `Chunk`s, a keyword searcher over it, and an
FAQ history whose answers come from the manual (with paraphrases sharing an answer)."""

from __future__ import annotations

import csv
import math
import re

import pytest

from retrieval.types import Chunk, Hit

TOPICS = [
    ("reset", "factory settings", "Open Settings then General then Reset and enter your PIN 0000"),
    ("wifi", "wireless network", "Open Settings then Network then choose your wireless network"),
    ("bluetooth", "headphones", "Open Sound Output and select Bluetooth Speaker List to pair"),
    ("update", "software version", "Open Support then Software Update then Update Now"),
    ("picture", "picture mode", "Open Picture then Picture Mode and choose Movie or Standard"),
    ("sleep", "sleep timer", "Open General then System Manager then Time then Sleep Timer"),
    ("remote", "remote batteries", "Slide the back cover of the remote and insert two AA batteries"),
    ("caption", "subtitles", "Open Accessibility then Caption Settings and turn Caption on"),
    ("usb", "usb drive", "Connect the USB drive and open Source then the USB device"),
    ("voice", "voice assistant", "Press and hold the microphone button and speak your command"),
    ("hdmi", "hdmi cable", "Connect the HDMI cable and select the HDMI source from Source"),
    ("parental", "parental lock", "Open Broadcasting then Program Rating Lock and set a rating"),
    ("energy", "power saving", "Open General then Eco Solution then Energy Saving Mode"),
    ("ambient", "ambient mode", "Press the Ambient button to switch the TV to Ambient Mode"),
    ("game", "game mode", "Open General then External Device Manager then Game Mode"),
    ("sound", "sound mode", "Open Sound then Sound Mode and choose Standard or Amplify"),
    ("apps", "install apps", "Open Apps then search for the app and select Install"),
    ("account", "samsung account", "Open General then System Manager then Samsung Account"),
    ("clock", "clock time", "Open General then System Manager then Time then Clock"),
    ("language", "menu language", "Open General then System Manager then Language"),
]


def manual_chunks() -> list[Chunk]:
    chunks = []
    for i, (key, topic, steps) in enumerate(TOPICS):
        page = 10 + i
        text = (f"Using the {topic} feature. The {topic} of the TV is described here. {steps}. "
                f"Some models do not support {key} in every region.")
        chunks.append(Chunk(id=f"c{i}", text=text, source="manual.pdf", page=page,
                            section=f"Guide>{topic}", chunk_index=i, doc_hash="h"))
    # An FAQ chunk in the same index: the builder must never use it as a passage.
    chunks.append(Chunk(id="faq0", text="Q: reset? A: Open Settings then General then Reset",
                        source="faq.csv", page=None, section=None, chunk_index=0, doc_hash="f",
                        type="faq"))
    return chunks


class KeywordSearcher:
    """Deterministic word-overlap search over chunks, honouring `where` on source/type."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.calls: list[tuple[str, int, dict | None]] = []

    def search(self, query: str, k: int = 5, where: dict | None = None) -> list[Hit]:
        self.calls.append((query, k, where))
        qw = set(re.findall(r"[a-z0-9]+", query.lower()))
        scored = []
        for c in self.chunks:
            if where and any(getattr(c, key) != value for key, value in where.items()):
                continue
            cw = set(re.findall(r"[a-z0-9]+", c.text.lower()))
            scored.append((len(qw & cw) / math.sqrt(len(cw) or 1), c.chunk_index, c))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [Hit(chunk=c, score=s, similarity=s) for s, _, c in scored[:k]]


def faq_rows_records() -> list[dict]:
    rows = []
    for i, (key, topic, steps) in enumerate(TOPICS):
        answer = f"{steps}."
        rows.append({"question": f"How do I use the {topic}?", "answer": answer,
                     "section": f"Guide>{topic}", "page": str(10 + i)})
        rows.append({"question": f"Where can I find {key} options on my TV?", "answer": answer,
                     "section": f"Guide>{topic}", "page": str(10 + i)})
    return rows


@pytest.fixture
def chunks() -> list[Chunk]:
    return manual_chunks()


@pytest.fixture
def searcher(chunks) -> KeywordSearcher:
    return KeywordSearcher(chunks)


@pytest.fixture
def faq_csv(tmp_path):
    path = tmp_path / "faq.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "answer", "section", "page"])
        w.writeheader()
        w.writerows(faq_rows_records())
    return path


# SmolLM2's chat template (no {% generation %} markers), for the tiny word-level tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>"]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    vocab = {w: i for i, w in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(special[2:])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<|im_start|>",
        eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A 2-layer random Llama with a word-level tokenizer (SmolLM2's chat template) on disk."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.data import REFUSAL_TEMPLATES
    from finetune.format import ABSTAIN_ANSWER, REFUSAL_ANSWER, SYSTEM_PROMPT

    texts = [c.text for c in manual_chunks()] + [SYSTEM_PROMPT, ABSTAIN_ANSWER, REFUSAL_ANSWER]
    texts += [str(r) for r in faq_rows_records()]
    texts += [t.format(x=x) for t, xs in REFUSAL_TEMPLATES for x in xs]
    texts += ["Passages: Question: Reasoning: Answer: Sources: none Passage says This answers "
              "the question. None of the passages answers this question. manual.pdf p. ... "
              "(no passages were found)" + " ".join(str(i) for i in range(100))]
    tokenizer = _tiny_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    path = tmp_path / "tiny-model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
