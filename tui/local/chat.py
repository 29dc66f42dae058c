"""Turning OpenAI-style chat messages into the prompt text a local model was trained on.

Every engine (llama.cpp for GGUF files, transformers for HF directories) builds its prompt
here, so the same messages give the same prompt whichever engine serves the model. The model's
own chat template wins (GGUF metadata ``tokenizer.chat_template`` or the HF tokenizer's); it is
rendered the way transformers renders it (jinja2 sandbox, ``trim_blocks``/``lstrip_blocks``,
``tojson`` that keeps non-ASCII) so prompts match what the model saw during training. Models
without a template get ChatML, the format SmolLM2 and most small instruct models use.

Templates are kept as the model ships them: SmolLM2's, for instance, inserts its own default
system prompt when the messages have none. That is the model's behaviour; callers who want a
different one send a system message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _GenerationTag(jinja2.ext.Extension):
    """Accept HF's ``{% generation %}…{% endgeneration %}`` (it marks assistant spans for
    training masks); rendering just passes the body through, as transformers does."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes HTML characters and forces ASCII; transformers overrides it
    # like this, and templates are written against transformers.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    # Templates call this for input they refuse (e.g. roles that do not alternate); a
    # ValueError is the caller's mistake, which the server reports as HTTP 400.
    raise ValueError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template plus the special-token strings it may refer to."""

    source: str = CHATML_TEMPLATE
    bos_token: str = ""
    eos_token: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)  # other special tokens, by name

    @property
    def is_fallback(self) -> bool:
        return self.source == CHATML_TEMPLATE

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text, ending with the assistant header when ``add_generation_prompt``."""
        try:
            template = _compile(self.source)
        except jinja2.TemplateError:
            # A template llama.cpp could load but jinja2 cannot parse (rare, hand-written
            # GGUFs): ChatML is the best guess and beats refusing every request.
            template = _compile(CHATML_TEMPLATE)
        try:
            return template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **self.extra,
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template could not render these messages: {exc}") from exc


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    template: str | None = None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with ``template`` (ChatML when None or empty)."""
    tpl = ChatTemplate(template or CHATML_TEMPLATE, bos_token=bos_token, eos_token=eos_token)
    return tpl.render(messages, add_generation_prompt=add_generation_prompt)


def _token_text(value: object) -> str:
    # tokenizer_config.json spells special tokens either as a string or as an AddedToken dict.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return ""


def hf_chat_template(model_dir: Path) -> ChatTemplate:
    """The chat template of a transformers model directory, read from its files.

    Looks where transformers looks: ``chat_template.jinja`` (newer saves), then
    ``chat_template.json``, then ``tokenizer_config.json``'s ``chat_template`` (a string, or a
    list of named templates of which "default" is used). Falls back to ChatML.
    """
    model_dir = Path(model_dir)
    config: dict[str, Any] = {}
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                config = loaded
        except (OSError, json.JSONDecodeError):
            config = {}
    bos = _token_text(config.get("bos_token"))
    eos = _token_text(config.get("eos_token"))

    source: str | None = None
    jinja_path = model_dir / "chat_template.jinja"
    json_path = model_dir / "chat_template.json"
    if jinja_path.is_file():
        source = jinja_path.read_text(encoding="utf-8")
    elif json_path.is_file():
        try:
            source = json.loads(json_path.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, json.JSONDecodeError, AttributeError):
            source = None
    if source is None:
        raw = config.get("chat_template")
        if isinstance(raw, str):
            source = raw
        elif isinstance(raw, list):
            named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
            default = named.get("default")
            source = default if isinstance(default, str) else None
    return ChatTemplate(source or CHATML_TEMPLATE, bos_token=bos, eos_token=eos)
