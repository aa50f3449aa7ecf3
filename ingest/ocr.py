"""OCR of PDF pages without a text layer: pages rendered by pypdfium2, read by Tesseract.

Scanned manuals are images: pypdf finds no text on their pages, and without OCR they index
nothing. `PageOcr` renders such pages at `DPI` with pypdfium2 (PDFium, the renderer of
Chromium), reads them with Tesseract through pytesseract, and caches each result under the
sha256 of the rendered page image (plus engine version, language and resolution), so a re-run
or a rebuild does no OCR for a page it has read before.

Modes (`python -m ingest --ocr`):

- `auto` (default): pages with no text layer are read when Tesseract is installed; without it
  they are reported as before, with how to install it;
- `on`: also pages whose text layer has fewer than `ON_MIN_WORDS` words (a scan with a stamped
  page number or header), and a missing engine is an error (exit 2);
- `off`: never.

Tesseract scores every word 0-100. A page whose mean word confidence is below
`MIN_CONFIDENCE` (60, a usual cut-off for Tesseract's word confidences: below it many words of
the page are misread and someone should look at the scan) is still indexed, and reported with
its confidence, page by page.

The engine is the Debian packages `tesseract-ocr` and `tesseract-ocr-eng` (`make setup` and
`.ci/run` install them where they run as root) with the `pytesseract` binding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from retrieval.errors import UsageError

OCR_MODES = ("auto", "on", "off")
DPI = 300
MIN_CONFIDENCE = 60.0
ON_MIN_WORDS = 20
LANG = "eng"
INSTALL_HINT = ("install Tesseract to read it (Debian/Ubuntu: apt-get install tesseract-ocr "
                "tesseract-ocr-eng; `make setup` does it when run as root)")
# The program that reads pages (given to pytesseract when a page is read; tests point it elsewhere).
TESSERACT_CMD = "tesseract"
# Tesseract refuses images this small ("Image too small to scale"); such a page holds an icon.
_MIN_PIXELS = 32


class OcrUnavailableError(UsageError):
    """`--ocr on` without a working Tesseract."""


@dataclass(frozen=True)
class PageText:
    """What OCR read on one page.

    Attributes:
        text: The page's text, lines in reading order, paragraphs separated by blank lines.
        confidence: Mean Tesseract word confidence (0-100), `None` when no word was found.
        words: Number of words read.
        cached: Served from the cache (no OCR ran for it in this run).
    """

    text: str
    confidence: float | None
    words: int
    cached: bool = False


def engine_problem(lang: str = LANG) -> str | None:
    """Why OCR cannot run here, or `None` when Tesseract and its `lang` data are installed."""
    if importlib.util.find_spec("pytesseract") is None:
        return "the pytesseract package is not installed"
    return _engine_problem(TESSERACT_CMD, lang)


@functools.cache
def _engine_problem(command: str, lang: str) -> str | None:
    # Asks the program itself, once per process: importing pytesseract imports pandas (0.35 s),
    # which every ingest run that meets a page with little text would pay for a yes/no answer.
    # The binding is imported only when a page is really read.
    try:
        listed = subprocess.run([command, "--list-langs"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=60, check=False)
    except OSError:
        return f"Tesseract is not installed ({command!r} not found)"
    except subprocess.TimeoutExpired:
        return f"Tesseract does not run ({command!r} --list-langs did not answer in 60 s)"
    if listed.returncode != 0:
        reason = (listed.stderr or listed.stdout).strip().splitlines()[:1]
        return f"Tesseract does not run ({reason[0] if reason else f'exit {listed.returncode}'})"
    # The first line is a header ("List of available languages in ..."), then one per line.
    if lang not in {line.strip() for line in listed.stdout.splitlines()}:
        return f"Tesseract has no {lang!r} language data (package tesseract-ocr-{lang})"
    return None


class PageOcr:
    """Reads page images of PDFs with Tesseract, cached by page-image hash.

    Args:
        mode: `auto`, `on` or `off` (see the module docstring).
        cache_dir: Where results are cached (`None`: no cache).
        lang: Tesseract language.
        dpi: Rendering resolution.

    Raises:
        UsageError: Unknown mode.
        OcrUnavailableError: `on` and the engine is missing.
    """

    def __init__(self, mode: str = "auto", cache_dir: Path | None = None, lang: str = LANG,
                 dpi: int = DPI) -> None:
        if mode not in OCR_MODES:
            raise UsageError(f"ocr mode {mode!r} is not one of {', '.join(OCR_MODES)}")
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.lang = lang
        self.dpi = dpi
        if mode == "on" and self.problem:
            raise OcrUnavailableError(f"--ocr on: {self.problem}; {INSTALL_HINT}")

    @functools.cached_property
    def problem(self) -> str | None:
        """Why OCR cannot run here (`None` when it can, or when the mode is `off`).

        Checked on first use: a run whose PDFs all have a text layer (or that has nothing new)
        never starts the tesseract program.
        """
        return engine_problem(self.lang) if self.mode != "off" else None

    @functools.cached_property
    def _engine(self) -> str:
        import pytesseract

        pytesseract.pytesseract.tesseract_cmd = TESSERACT_CMD
        # Part of the cache key: another Tesseract may read a page differently.
        return str(pytesseract.get_tesseract_version())

    @property
    def active(self) -> bool:
        """Whether OCR runs at all in this mode on this machine."""
        return self.mode != "off" and self.problem is None

    @property
    def effective_mode(self) -> str:
        """The mode as it acts here: `auto` without an engine acts as `off`."""
        return self.mode if self.active else "off"

    def wanted(self, text_layer: str) -> bool:
        """Whether a page with this text layer is read by OCR."""
        if self.mode == "on":
            return len(text_layer.split()) < ON_MIN_WORDS
        # The text test first: the engine is checked only when a page needs it.
        return not text_layer.strip() and self.active

    def read(self, data: bytes, pages: list[int]) -> dict[int, PageText | str]:
        """OCR some pages of a PDF.

        Args:
            data: The PDF's bytes.
            pages: 0-based page indexes.

        Returns:
            Per page, what OCR read, or a string saying why it could not read the page.
        """
        import pypdfium2 as pdfium

        out: dict[int, PageText | str] = {}
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as e:
            return {i: f"the page could not be rendered ({e})" for i in pages}
        try:
            for index in pages:
                try:
                    image = document[index].render(scale=self.dpi / 72, grayscale=True).to_pil()
                except pdfium.PdfiumError as e:
                    out[index] = f"the page could not be rendered ({e})"
                    continue
                if min(image.size) < _MIN_PIXELS:
                    out[index] = (f"the page is {image.size[0]}x{image.size[1]} pixels at "
                                  f"{self.dpi} dpi, too small to hold text")
                    continue
                out[index] = self._read_image(image)
        finally:
            document.close()
        return out

    def _read_image(self, image) -> PageText | str:
        import pytesseract

        engine = self._engine  # first: it also points pytesseract at TESSERACT_CMD
        key = hashlib.sha256(
            f"{engine}|{self.lang}|{self.dpi}|{image.mode}|{image.size}".encode()
            + image.tobytes()).hexdigest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        try:
            data = pytesseract.image_to_data(image, lang=self.lang,
                                             output_type=pytesseract.Output.DICT)
        except pytesseract.TesseractError as e:
            return f"Tesseract failed on the page ({e.message or e})"
        result = words_to_text(data)
        self._store(key, result)
        return result

    def _cached(self, key: str) -> PageText | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return PageText(record["text"], record["confidence"], record["words"], cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: read the page again

    def _store(self, key: str, result: PageText) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in asdict(result).items() if k != "cached"}
        fd, tmp = tempfile.mkstemp(prefix=".ocr-", suffix=".tmp", dir=self.cache_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self.cache_dir / f"{key}.json")


def words_to_text(data: dict) -> PageText:
    """Turn pytesseract's `image_to_data` dictionary into page text and a mean confidence."""
    lines: dict[tuple[int, int, int], list[str]] = {}
    confidences: list[float] = []
    for i, word in enumerate(data["text"]):
        if not str(word).strip():
            continue
        conf = float(data["conf"][i])
        if conf >= 0:
            confidences.append(conf)
        key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
        lines.setdefault(key, []).append(str(word).strip())
    parts: list[str] = []
    previous: tuple[int, int] | None = None
    for (block, par, _), words in lines.items():
        if previous is not None and previous != (block, par):
            parts.append("")  # a blank line between paragraphs
        parts.append(" ".join(words))
        previous = (block, par)
    confidence = round(sum(confidences) / len(confidences), 1) if confidences else None
    return PageText("\n".join(parts), confidence, sum(len(w) for w in lines.values()))
