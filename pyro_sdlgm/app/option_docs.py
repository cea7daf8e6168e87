"""The option reference, derived from the declarations (``docs/options.md``, ``sdlgm options``).

Each estimator's constructor is the one declaration of its options: their names, types and
defaults come from its signature, their meaning from its docstring's ``Args`` entry, the values
of a mode from its ``Literal`` type and those of a component option from its registry (with each
component's own options, from its signature). The training options are
:class:`~pyro_sdlgm.config.TrainConfig`'s fields and their docstrings. Nothing here is a copy:
``python -m pyro_sdlgm.app.option_docs --write docs/options.md`` regenerates the page, and the
test suite checks that the committed one is current.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

from pyro_sdlgm.config import ClassifierOptions, ModelOptions, TrainConfig, own_options, registry_of

SECTIONS = ("model", "classifier", "training")
_ENTRY = re.compile(r"^(\*\*)?(?P<names>[A-Za-z_][\w]*(?:, [A-Za-z_][\w]*)*):\s?(?P<text>.*)$")


def args_entries(docstring: str) -> dict[str, str]:
    """The ``Args:`` entries of a Google-style docstring, one per name (an entry ``a, b: ...``
    gives both names its text), each joined into one line."""
    lines = inspect.cleandoc(docstring).splitlines()
    try:
        start = lines.index("Args:") + 1
    except ValueError:
        return {}
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break  # the next section (e.g. "Example::")
        body = line[4:] if line.startswith("    ") else line.strip()
        match = _ENTRY.match(body) if not body.startswith(" ") else None
        if match:
            current = [match["text"]]
            for name in match["names"].split(", "):
                entries[name] = current
        elif current is not None and body.strip():
            current.append(body.strip())
    return {name: " ".join(parts) for name, parts in entries.items()}


def markdown(text: str) -> str:
    """reStructuredText inline markup as Markdown: literals, and roles as their target's last name."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m[1].rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _type_name(annotation) -> str:
    """A readable form of a field's type, without the ``typing.`` prefixes (``int | None``)."""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return text.replace("typing.", "").replace("collections.abc.", "")


def _value(value) -> str:
    return "None" if value is None else repr(value)


def _component_options(factory) -> str:
    """A component's own options: the parameters of its factory that a config can pass (those
    with defaults or keyword-only; the leading positional ones are what the registry passes)."""
    options = [p for p in inspect.signature(factory).parameters.values()
               if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)]
    return ", ".join(p.name if p.default is p.empty else f"{p.name}={_value(p.default)}" for p in options)


def _summary(factory) -> str:
    """The first paragraph of a component's own docstring, on one line."""
    doc = inspect.cleandoc(factory.__doc__ or "")
    return " ".join(doc.split("\n\n")[0].split())


def _components(options: type, name: str) -> list[str]:
    """One sub-item per component of the option's registry: its name, own options and summary."""
    registry = registry_of(options, name)
    items = []
    for component in registry.names():
        factory = registry.get(component)
        own = _component_options(factory)
        summary = _summary(factory)
        items.append(f"`{component}`" + (f" (options: {own})" if own else "") + (f": {summary}" if summary else ""))
    return items


def _literal_values(hint) -> str | None:
    """The values of an option whose type is a ``Literal`` (or ``Literal | None``)."""
    members = [arg for arg in _flat_args(hint) if arg is not type(None)]
    if len(members) == 1 and typing.get_origin(members[0]) is typing.Literal:
        return ", ".join(f"`{_value(v)}`" for v in typing.get_args(members[0]))
    return None


def _flat_args(hint) -> tuple:
    """The members of a union type, or the type itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _wrap(text: str, indent: str) -> str:
    return "\n".join(textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=" " * len(indent),
                                   break_long_words=False, break_on_hyphens=False))


def _item(options: type, name: str, type_text: str, default, text: str, hint) -> str:
    """One option: name, type, default and meaning, then its values (a Literal's) or components (a registry's)."""
    line = f"**`{name}`** (`{type_text}`, default `{_value(default)}`): {markdown(text)}"
    values = _literal_values(hint)
    if values:
        line += f" Values: {values}."
    lines = [_wrap(line, "- ")]
    if name in getattr(options, "registries", {}):
        lines.append(f"  Registered in `{options.registries[name]}`:")
        lines += [_wrap(markdown(component), "  - ") for component in _components(options, name)]
    return "\n".join(lines)


def estimator_section(estimator: type, options: type) -> list[str]:
    """The items of ``estimator``'s own options (not the training options)."""
    hints = typing.get_type_hints(estimator.__init__)
    parameters = inspect.signature(estimator.__init__).parameters
    entries = args_entries(estimator.__doc__ or "")
    items = []
    for name in own_options(estimator):
        if name not in entries:
            raise ValueError(f"{estimator.__name__}'s docstring has no Args entry for {name!r}")
        items.append(_item(options, name, _type_name(parameters[name].annotation), parameters[name].default,
                           entries[name], hints[name]))
    return items


def field_docstrings(cls: type) -> dict[str, str]:
    """The docstrings under a dataclass's fields (the string literal that follows each)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs


def training_section() -> list[str]:
    """The items of :class:`~pyro_sdlgm.config.TrainConfig`'s fields."""
    hints = typing.get_type_hints(TrainConfig)
    docs = field_docstrings(TrainConfig)
    return [_item(TrainConfig, field.name, _type_name(field.type), field.default, docs[field.name], hints[field.name])
            for field in dataclasses.fields(TrainConfig)]


def section(name: str) -> list[str]:
    """The items of one config section: ``"model"``, ``"classifier"`` or ``"training"``."""
    from pyro_sdlgm.estimators.classifier import SDLGMClassifier
    from pyro_sdlgm.estimators.sdlgm import SDLGM

    if name == "model":
        return estimator_section(SDLGM, ModelOptions)
    if name == "classifier":
        return estimator_section(SDLGMClassifier, ClassifierOptions)
    if name == "training":
        return training_section()
    raise ValueError(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")


_HEADINGS = {
    "model": ("`[model]`: `SDLGM(...)`", "The unsupervised model's options: the constructor's parameters of "
              "`pyro_sdlgm.SDLGM` and the `[model]` table of a run config."),
    "classifier": ("`[classifier]`: `SDLGMClassifier(...)`", "The multi-label classifier's options: the "
                   "constructor's parameters of `pyro_sdlgm.SDLGMClassifier` and the `[classifier]` table."),
    "training": ("`[training]`: keyword-only training options", "Both estimators take these as keyword-only "
                 "constructor parameters (and `fit` as overrides); a run config's `[training]` table."),
}


def reference() -> str:
    """The whole option reference as a Markdown page."""
    parts = ["# Options", "",
             "<!-- Generated by `python -m pyro_sdlgm.app.option_docs --write docs/options.md` from the "
             "constructors, TrainConfig and the registries; do not edit by hand. -->", "",
             "Every option of the estimators and of a run config, with its type, default and values. A component "
             "option takes a registered name or a table `{ name = ..., option = ... }` with the component's own "
             "options, listed in parentheses; components you register yourself are listed by "
             "`sdlgm options --plugin MODULE`. On the command line every option is a dotted override "
             "(`model.max_sparsity=5`, `training.patience=none`).", ""]
    for name in SECTIONS:
        heading, intro = _HEADINGS[name]
        parts += [f"## {heading}", "", intro, "", *section(name), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyro_sdlgm.app.option_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="write the page to PATH (default: print it)")
    args = parser.parse_args(argv)
    page = reference()
    if args.write:
        Path(args.write).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
