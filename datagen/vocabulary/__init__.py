"""The generator's vocabulary, read once from `catalog.yaml` and `narratives.yaml` beside this file.

Why files: the tables (companies, products, states, sentences, weights and dispute effects) are
data a person edits; `generator.py` only draws from them. Every value is checked here, so a
mistake in a file is one line naming the file and the key, not a traceback from deep inside
generation. Order is kept as written: the generator samples from cumulative weights in that
order, so the same files, seed and options give byte-identical output.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

VOCABULARY_DIR = Path(__file__).resolve().parent
CATALOG_FILE = "catalog.yaml"
NARRATIVES_FILE = "narratives.yaml"
PLACEHOLDERS = ("co", "a", "b", "sp", "iss")  # filled per complaint by generator._narrative
# Values generator.py itself tests for, so the files must keep them (checked when loading).
UNTIMELY = "Untimely response"  # a response that also makes 'Timely response?' No
WEB = "Web"  # the channel whose consent follows web_consent
CONSENT_PROVIDED = "Consent provided"  # the consent that comes with a narrative


class VocabularyError(ValueError):
    """A vocabulary file that cannot be used; the message is one line naming file and key."""


@dataclass(frozen=True)
class Vocabulary:
    """The tables in the shapes the generator draws from: (value, weight[, effect]) tuples."""

    response_effects: dict[str, float]  # in file order, the order of every response mix
    products: dict[str, dict[str, Any]]
    company_effects: dict[str, float]
    issue_effects: dict[str, float]
    states: dict[str, tuple[float, int, int]]  # state -> (weight, first, last ZIP prefix)
    state_effects: dict[str, float]
    public_responses: tuple[tuple[str, float, float], ...]
    channels: tuple[tuple[str, float, float], ...]
    web_consent: tuple[tuple[str, float], ...]
    other_consent: tuple[tuple[str, float], ...]
    tags: tuple[tuple[str, float], ...]
    tag_effects: dict[str, float]
    send_delays: tuple[tuple[int, float], ...]
    openings: dict[str, tuple[str, ...]]
    details: dict[str, tuple[str, ...]]
    generic_details: tuple[str, ...]
    angry: tuple[str, ...]
    calm: tuple[str, ...]
    closings: tuple[str, ...]
    company_references: tuple[tuple[str | None, float], ...]
    amount_digits: tuple[int, ...]


def load_vocabulary(directory: str | Path = VOCABULARY_DIR) -> Vocabulary:
    """Read and check `catalog.yaml` and `narratives.yaml` in `directory`."""
    directory = Path(directory)
    catalog = _File(directory / CATALOG_FILE)
    narratives = _File(directory / NARRATIVES_FILE)
    tables = _read_catalog(catalog)
    tables.update(_read_narratives(narratives, products=tables["products"]))
    return Vocabulary(**tables)


# --------------------------------------------------------------------------------------------
# The two files
# --------------------------------------------------------------------------------------------


def _read_catalog(f: _File) -> dict[str, Any]:
    top = f.fields(f.root, "", ("responses", "company_groups", "company_effects", "products",
                                "issue_effects", "states", "public_responses", "channels",
                                "web_consent", "other_consent", "tags", "send_delays"))
    responses = {}
    default_mix = []
    for name, entry in f.mapping(top["responses"], "responses").items():
        where = f.key("responses", name)
        f.text(name, where)
        spec = f.fields(entry, where, ("effect", "share"))
        responses[name] = f.number(spec["effect"], where + ".effect")
        default_mix.append(f.weight(spec["share"], where + ".share"))
    if UNTIMELY not in responses:
        f.fail("responses", f"{UNTIMELY!r} is missing (generator.py relies on it)")

    groups = {}
    for name, table in f.mapping(top["company_groups"], "company_groups").items():
        groups[f.text(name, "company_groups")] = f.weights(table, f.key("company_groups", name))

    products = {}
    for name, entry in f.mapping(top["products"], "products").items():
        where = f.key("products", name)
        f.text(name, where)
        products[name] = _read_product(f, entry, where, groups, len(responses),
                                       tuple(default_mix))
    issues = {issue for spec in products.values() for issue, _, _ in spec["issues"]}
    companies = {company for spec in products.values() for company, _ in spec["companies"]}

    states, state_effects = {}, {}
    for state, entry in f.mapping(top["states"], "states").items():
        where = f.key("states", state)
        f.text(state, where)
        spec = f.fields(entry, where, ("weight", "zip3"), ("effect",))
        zip3 = re.fullmatch(r"(\d{3})-(\d{3})", str(spec["zip3"]))
        if not zip3 or zip3[1] > zip3[2]:
            f.fail(where + ".zip3", f'expected "first-last" three-digit ZIP prefixes, first <= '
                                    f'last, such as "900-961", got {spec["zip3"]!r}')
        states[state] = (f.weight(spec["weight"], where + ".weight"), int(zip3[1]), int(zip3[2]))
        if "effect" in spec:
            state_effects[state] = f.number(spec["effect"], where + ".effect")
    f.positive_total([weight for weight, _, _ in states.values()], "states")

    channels = _weighted_with_effects(f, top["channels"], "channels")
    web_consent = f.weights(top["web_consent"], "web_consent")
    for where, values, needed in (("channels", channels, WEB),
                                  ("web_consent", web_consent, CONSENT_PROVIDED)):
        if needed not in [value for value, *_ in values]:
            f.fail(where, f"{needed!r} is missing (generator.py relies on it)")
    tags = _weighted_with_effects(f, top["tags"], "tags")
    return {
        "response_effects": responses,
        "products": products,
        "company_effects": f.effects(top["company_effects"], "company_effects", companies,
                                     "a company of any product"),
        "issue_effects": f.effects(top["issue_effects"], "issue_effects", issues,
                                   "an issue of any product"),
        "states": states,
        "state_effects": state_effects,
        "public_responses": _weighted_with_effects(f, top["public_responses"],
                                                   "public_responses"),
        "channels": channels,
        "web_consent": web_consent,
        "other_consent": f.weights(top["other_consent"], "other_consent"),
        "tags": tuple((tag, weight) for tag, weight, _ in tags),
        "tag_effects": {tag: effect for tag, _, effect in tags if effect},
        "send_delays": f.weights(top["send_delays"], "send_delays", key_type=int),
    }


def _read_product(f: _File, entry: Any, where: str, groups: dict, responses: int,
                  default_mix: tuple[float, ...]) -> dict[str, Any]:
    spec = f.fields(entry, where, ("weight", "amount_scale", "noun", "issues", "companies"),
                    ("effect", "sub_products", "response_mix"))
    issues = []
    for issue, value in f.mapping(spec["issues"], where + ".issues").items():
        at = f.key(where + ".issues", issue)
        f.text(issue, at)
        if isinstance(value, dict):
            detail = f.fields(value, at, ("weight",), ("sub_issues",))
            sub_issues = f.texts(detail.get("sub_issues", []), at + ".sub_issues",
                                 allow_empty=True)
            issues.append((issue, f.weight(detail["weight"], at + ".weight"), sub_issues))
        else:
            issues.append((issue, f.weight(value, at), ()))
    f.positive_total([weight for _, weight, _ in issues], where + ".issues")

    companies = []
    for group, factor in f.mapping(spec["companies"], where + ".companies").items():
        at = f.key(where + ".companies", group)
        if group not in groups:
            f.fail(at, f"unknown company group (company_groups has: {', '.join(groups)})")
        factor = f.weight(factor, at)
        companies.extend((company, weight * factor) for company, weight in groups[group])
    f.positive_total([weight for _, weight in companies], where + ".companies")

    mix = default_mix
    if "response_mix" in spec:
        mix = tuple(f.weight(share, f"{where}.response_mix[{index}]")
                    for index, share in enumerate(f.list(spec["response_mix"],
                                                         where + ".response_mix")))
        if len(mix) != responses:
            f.fail(where + ".response_mix", f"expected {responses} shares (one per entry of "
                                            f"responses, in that order), got {len(mix)}")
    f.positive_total(mix, where + ".response_mix")

    scale = spec["amount_scale"]
    if type(scale) is not int or scale < 1:
        f.fail(where + ".amount_scale", f"expected a whole number of dollars, got {scale!r}")
    return {
        "weight": f.weight(spec["weight"], where + ".weight"),
        "effect": f.number(spec.get("effect", 0.0), where + ".effect"),
        "scale": scale,
        "noun": f.text(spec["noun"], where + ".noun"),
        "subs": f.weights(spec.get("sub_products", {}), where + ".sub_products",
                          allow_empty=True),
        "issues": tuple(issues),
        "companies": tuple(companies),
        "responses": mix,
    }


def _weighted_with_effects(f: _File, value: Any, where: str) -> tuple:
    """`name: {weight: W, effect: E}` entries (effect optional, 0.0) as (name, W, E) tuples."""
    rows = []
    for name, entry in f.mapping(value, where).items():
        at = f.key(where, name)
        f.text(name, at)
        spec = f.fields(entry, at, ("weight",), ("effect",))
        rows.append((name, f.weight(spec["weight"], at + ".weight"),
                     f.number(spec.get("effect", 0.0), at + ".effect")))
    f.positive_total([weight for _, weight, _ in rows], where)
    return tuple(rows)


def _read_narratives(f: _File, products: dict[str, dict]) -> dict[str, Any]:
    top = f.fields(f.root, "", ("openings", "details", "generic_details", "angry", "calm",
                                "closings", "company_references", "amount_digits"))
    per_product = {}
    for section in ("openings", "details"):
        table = f.mapping(top[section], section)
        for name in table:
            if name not in products:
                f.fail(f.key(section, name), f"not a product of {CATALOG_FILE}")
        for name in products:
            if name not in table:
                f.fail(section, f"no entry for the product {name!r}")
        per_product[section] = {
            name: f.sentences(table[name], f.key(section, name),
                              allow_empty=section == "details")
            for name in products
        }
    digits = f.list(top["amount_digits"], "amount_digits")
    for index, value in enumerate(digits):
        if type(value) is not int or not 1 <= value <= 12:
            f.fail(f"amount_digits[{index}]", f"expected a whole number from 1 to 12, "
                                              f"got {value!r}")
    references = f.weights(top["company_references"], "company_references", key_type=str,
                           allow_null_key=True)
    return {
        "openings": per_product["openings"],
        "details": per_product["details"],
        "generic_details": f.sentences(top["generic_details"], "generic_details"),
        "angry": f.sentences(top["angry"], "angry"),
        "calm": f.sentences(top["calm"], "calm"),
        "closings": f.sentences(top["closings"], "closings"),
        "company_references": references,
        "amount_digits": tuple(digits),
    }


# --------------------------------------------------------------------------------------------
# Reading and checking one file
# --------------------------------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that refuses a repeated key (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"repeated key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _File:
    """One vocabulary file: its parsed content and checks that fail with file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, encoding="utf-8") as handle:
                self.root = yaml.load(handle, Loader=_Loader)  # a SafeLoader: no objects
        except OSError as exc:
            raise VocabularyError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise VocabularyError(" ".join(f"{path}: {where}invalid YAML: {problem}".split())
                                  ) from None

    def fail(self, where: str, problem: str) -> NoReturn:
        raise VocabularyError(" ".join(f"{self.path}: {where or 'top level'}: {problem}"
                                       .split()))

    @staticmethod
    def key(where: str, key: Any) -> str:
        """`products['Credit card'].weight`-style addresses for error messages."""
        if isinstance(key, str) and key.isidentifier():
            return f"{where}.{key}" if where else key
        return f"{where}[{key!r}]"

    def fields(self, value: Any, where: str, required: tuple[str, ...],
               optional: tuple[str, ...] = ()) -> dict[str, Any]:
        value = self.mapping(value, where, allow_empty=not required)
        for name in value:
            if name not in required and name not in optional:
                self.fail(self.key(where, name),
                          f"unknown key (expected: {', '.join(required + optional)})")
        for name in required:
            if name not in value:
                self.fail(where, f"missing key {name!r}")
        return value

    def mapping(self, value: Any, where: str, allow_empty: bool = False) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping (key: value lines), got {_shown(value)}")
        if not value and not allow_empty:
            self.fail(where, "is empty")
        return value

    def list(self, value: Any, where: str, allow_empty: bool = False) -> list:
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {_shown(value)}")
        if not value and not allow_empty:
            self.fail(where, "is empty")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected text in double quotes, got {_shown(value)}")
        return value

    def texts(self, value: Any, where: str, allow_empty: bool = False) -> tuple[str, ...]:
        items = self.list(value, where, allow_empty)
        return tuple(self.text(item, f"{where}[{index}]") for index, item in enumerate(items))

    def sentences(self, value: Any, where: str, allow_empty: bool = False) -> tuple[str, ...]:
        """Texts whose only `{...}` are the known placeholders (generator fills them)."""
        items = self.texts(value, where, allow_empty)
        for index, sentence in enumerate(items):
            at = f"{where}[{index}]"
            try:
                fields = [(name, spec, conversion) for _, name, spec, conversion
                          in string.Formatter().parse(sentence) if name is not None]
            except ValueError as exc:
                self.fail(at, f"bad braces ({exc}) in {sentence!r}")
            for name, spec, conversion in fields:
                if name not in PLACEHOLDERS or spec or conversion:
                    self.fail(at, f"unknown placeholder {{{name}}} in {sentence!r} (known: "
                                  + ", ".join(f"{{{known}}}" for known in PLACEHOLDERS) + ")")
        return items

    def number(self, value: Any, where: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or value != value or value in (float("inf"), float("-inf")):
            self.fail(where, f"expected a number, got {_shown(value)}")
        return value

    def weight(self, value: Any, where: str) -> int | float:
        value = self.number(value, where)
        if value < 0:
            self.fail(where, f"a weight cannot be negative, got {value!r}")
        return value

    def positive_total(self, weights: Any, where: str) -> None:
        if not any(weight > 0 for weight in weights):
            self.fail(where, "needs at least one weight above 0")

    def weights(self, value: Any, where: str, key_type: type = str, allow_empty: bool = False,
                allow_null_key: bool = False) -> tuple[tuple[Any, int | float], ...]:
        """`value: weight` lines as (value, weight) pairs, in file order."""
        pairs = []
        for key, weight in self.mapping(value, where, allow_empty).items():
            at = self.key(where, key)
            if not (type(key) is key_type or (allow_null_key and key is None)):
                expected = "a whole number" if key_type is int else "text in double quotes"
                self.fail(at, f"expected {expected} as the key, got {_shown(key)}")
            if key_type is int and key < 0:
                self.fail(at, "cannot be negative")
            pairs.append((key, self.weight(weight, at)))
        if pairs:
            self.positive_total([weight for _, weight in pairs], where)
        return tuple(pairs)

    def effects(self, value: Any, where: str, known: set[str], what: str) -> dict[str, float]:
        table = self.mapping(value, where, allow_empty=True)
        for key, effect in table.items():
            at = self.key(where, key)
            if key not in known:
                self.fail(at, f"not {what} in {CATALOG_FILE} (check the spelling)")
            self.number(effect, at)
        return dict(table)


def _shown(value: Any) -> str:
    """A value as the error message shows it; YAML's surprises (yes -> True) made visible."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{value!r} (YAML reads yes/no/on/off as true/false: quote the text)"
    if isinstance(value, dict | list):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r}"
