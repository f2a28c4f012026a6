"""Deterministic synthetic CFPB complaints in the official CSV export format.

Why: the demo, the tests and the benchmarks need data at any size that behaves like a real CFPB
export (multi-line quoted narratives, masked ZIPs, blank labels, skewed categories) and carries a
learnable but noisy dispute signal, without downloading anything.

How the label is made: every complaint gets a dispute log-odds from its product, company
response, issue, company, state, timely flag, public response, channel and tags, plus a hidden
"frustration" value that also decides which tone words its narrative uses (so words carry
signal only where a narrative exists). An intercept, solved once per requested rate on a fixed
calibration sample, makes the disputed share among labelled rows match `disputed_rate`.
Changing only `disputed_rate` keeps every other field identical: a pure label shift.

The vocabulary (companies, products, states, sentences, their weights and dispute effects) is
data in `vocabulary/catalog.yaml` and `vocabulary/narratives.yaml`, loaded and checked once at
import by `datagen.vocabulary`; this module only holds the logic that draws from it.

All randomness is `random.Random(seed).random()` (stable across platforms and Python versions)
and the only float library call is `exp` in the dispute probability, so the same (rows, seed,
options) give byte-identical files on every machine.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

from datagen.vocabulary import CONSENT_PROVIDED, UNTIMELY, WEB, Vocabulary, load_vocabulary

HEADER = (
    "Date received",
    "Product",
    "Sub-product",
    "Issue",
    "Sub-issue",
    "Consumer complaint narrative",
    "Company public response",
    "Company",
    "State",
    "ZIP code",
    "Tags",
    "Consumer consent provided?",
    "Submitted via",
    "Date sent to company",
    "Company response to consumer",
    "Timely response?",
    "Consumer disputed?",
    "Complaint ID",
)

FIRST_DATE = date(2015, 1, 1)
LAST_DATE = date(2017, 4, 24)  # the CFPB stopped recording disputes after this day
DEFAULT_DISPUTED_RATE = 0.25
DEFAULT_BLANK_LABEL_RATE = 0.03

# --------------------------------------------------------------------------------------------
# Vocabulary: companies, products, states, sentences, their weights (relative frequencies) and
# dispute effects (additions to the log-odds) live in vocabulary/catalog.yaml and
# vocabulary/narratives.yaml, read and checked once here.
# --------------------------------------------------------------------------------------------

IN_PROGRESS = "In progress"  # only for blank labels, so it has no effect and is not in the files
FRUSTRATION_WEIGHT = 1.2  # log-odds per unit of the hidden frustration value
# Multiplies every feature effect in the catalog. Tuned so a logistic regression on the columns
# and narrative words reaches an AUC of about 0.72, and even the true probabilities (which know
# the hidden frustration) only about 0.82: learnable, but noisy.
FEATURE_WEIGHT = 1.6

VOCABULARY = load_vocabulary()
RESPONSE_EFFECT = VOCABULARY.response_effects  # in file order: the order of every response mix
COMPANY_EFFECT = VOCABULARY.company_effects
ISSUE_EFFECT = VOCABULARY.issue_effects
STATE_EFFECT = VOCABULARY.state_effects
TAG_EFFECT = VOCABULARY.tag_effects
ANGRY, CALM, CLOSINGS = VOCABULARY.angry, VOCABULARY.calm, VOCABULARY.closings
AMOUNT_DIGITS = VOCABULARY.amount_digits  # digits of a "small" amount; large ones get one more

# --------------------------------------------------------------------------------------------
# Compiled tables: cumulative weights for one `random()` draw per pick.
# --------------------------------------------------------------------------------------------


class _Choice:
    """Pick a value with one uniform draw; fast and identical on every platform."""

    __slots__ = ("values", "cum")

    def __init__(self, pairs) -> None:
        pairs = [(value, float(weight)) for value, weight in pairs if weight > 0]
        total = sum(weight for _, weight in pairs)
        running = 0.0
        self.cum: list[float] = []
        for _, weight in pairs:
            running += weight
            self.cum.append(running / total)
        self.cum[-1] = 1.0  # u < 1.0 always lands on an index
        self.values = [value for value, _ in pairs]

    def __call__(self, u: float):
        return self.values[bisect_right(self.cum, u)]


def _declining(values) -> list[tuple[str, float]]:
    """Weights 1, 1/2, 1/3 ... so the first listed value is the most common."""
    return [(value, 1.0 / (rank + 1)) for rank, value in enumerate(values)]


def _noun(sub_product: str, fallback: str) -> str:
    """How a narrative names the sub-product ("FHA mortgage", "checking account")."""
    if "(" in sub_product or sub_product.startswith(("Other", "I do", "Cashing")):
        return fallback
    if sub_product[1:2].islower():
        return sub_product[0].lower() + sub_product[1:]
    return sub_product


class _Product:
    __slots__ = ("name", "effect", "scale", "noun", "sub", "nouns", "issue", "company",
                 "response", "openings", "details")

    def __init__(self, name: str, spec: dict, vocabulary: Vocabulary) -> None:
        self.name = name
        self.effect = spec["effect"]
        self.scale = spec["scale"]
        self.noun = spec["noun"]
        self.sub = _Choice(spec["subs"]) if spec["subs"] else None
        self.nouns = {sub: _noun(sub, self.noun) for sub, _ in spec["subs"]}
        self.nouns[""] = self.noun
        self.issue = _Choice(
            ((issue, _Choice(_declining(subs)) if subs else None), weight)
            for issue, weight, subs in spec["issues"]
        )
        merged: dict[str, float] = {}
        for company, weight in spec["companies"]:
            merged[company] = merged.get(company, 0.0) + weight
        self.company = _Choice(merged.items())
        self.response = _Choice(zip(RESPONSE_EFFECT, spec["responses"], strict=True))
        self.openings = vocabulary.openings[name]
        self.details = vocabulary.details[name] + vocabulary.generic_details


_PRODUCT = _Choice((_Product(name, spec, VOCABULARY), spec["weight"])
                   for name, spec in VOCABULARY.products.items())
_STATE = _Choice(((state, low, high), spec_weight)
                 for state, (spec_weight, low, high) in VOCABULARY.states.items())
_PUBLIC = _Choice(((text, effect), weight) for text, weight, effect in VOCABULARY.public_responses)
_CHANNEL = _Choice(((via, effect), weight) for via, weight, effect in VOCABULARY.channels)
_WEB_CONSENT = _Choice(VOCABULARY.web_consent)
_OTHER_CONSENT = _Choice(VOCABULARY.other_consent)
_TAGS = _Choice(VOCABULARY.tags)
_DELAY = _Choice(VOCABULARY.send_delays)
_COMPANY_REF = _Choice(VOCABULARY.company_references)  # None: the company's own name

_SPAN_DAYS = (LAST_DATE - FIRST_DATE).days + 1
_MAX_DELAY = max(delay for delay, _ in VOCABULARY.send_delays)
_DAYS = [(FIRST_DATE + timedelta(days=i)).isoformat() for i in range(_SPAN_DAYS + _MAX_DELAY)]

# --------------------------------------------------------------------------------------------
# Drawing one complaint
# --------------------------------------------------------------------------------------------


def _draw_case(rand: Callable[[], float], label_blank: bool) -> tuple:
    """Draw every structured field and the feature part of the dispute log-odds.

    Shared by generation and intercept calibration, so both see the same distribution.
    """
    product = _PRODUCT(rand())
    sub_product = product.sub(rand()) if product.sub else ""
    issue, sub_issue_choice = product.issue(rand())
    sub_issue = ""
    if sub_issue_choice is not None and rand() < 0.9:
        sub_issue = sub_issue_choice(rand())
    company = product.company(rand())
    state, zip_low, zip_high = _STATE(rand())
    via, via_effect = _CHANNEL(rand())
    consent = _WEB_CONSENT(rand()) if via == WEB else _OTHER_CONSENT(rand())
    tags = _TAGS(rand())
    # "In progress" means the company has not answered yet, so the dispute is still unknown.
    response = IN_PROGRESS if label_blank and rand() < 0.45 else product.response(rand())
    timely = "No" if response == UNTIMELY or rand() < 0.02 else "Yes"
    public, public_effect = ("", 0.0) if response == IN_PROGRESS else _PUBLIC(rand())
    score = FEATURE_WEIGHT * (
        product.effect
        + RESPONSE_EFFECT.get(response, 0.0)
        + ISSUE_EFFECT.get(issue, 0.0)
        + COMPANY_EFFECT.get(company, 0.0)
        + STATE_EFFECT.get(state, 0.0)
        + TAG_EFFECT.get(tags, 0.0)
        + via_effect
        + public_effect
        + (-0.4 if timely == "No" and response != UNTIMELY else 0.0)
    )
    return (product, sub_product, issue, sub_issue, company, state, zip_low, zip_high, via,
            consent, tags, response, timely, public, score)


def _frustration(rand: Callable[[], float]) -> float:
    """A hidden N(0, 1)-like value (sum of three uniforms, scaled): no libm, same everywhere."""
    return (rand() + rand() + rand() - 1.5) * 2.0


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@functools.lru_cache(maxsize=64)
def dispute_intercept(disputed_rate: float, sample_size: int = 40_000) -> float:
    """The log-odds offset that makes the mean dispute probability equal `disputed_rate`.

    Solved by Newton's method on a fixed calibration sample (its own seed), so the offset
    depends only on the requested rate and is the same for every seed and machine.
    """
    if not 0.0 < disputed_rate < 1.0:
        raise ValueError(f"disputed_rate must be in (0, 1), got {disputed_rate}")
    rand = random.Random(20170424).random
    scores = []
    for _ in range(sample_size):
        case = _draw_case(rand, label_blank=False)
        scores.append(case[-1] + FRUSTRATION_WEIGHT * _frustration(rand))
    offset = math.log(disputed_rate / (1.0 - disputed_rate)) - sum(scores) / len(scores)
    for _ in range(50):
        probs = [_sigmoid(offset + s) for s in scores]
        gap = sum(probs) / len(probs) - disputed_rate
        slope = sum(p * (1.0 - p) for p in probs) / len(probs)
        step = gap / slope
        offset -= step
        if abs(step) < 1e-10:
            break
    return offset


def _money(rand: Callable[[], float], digits: int) -> str:
    dollars = int(10 ** (digits - 1) * (1.0 + 9.0 * rand()))
    cents = 0 if rand() < 0.6 else int(rand() * 100)
    return "{$" + f"{dollars}.{cents:02d}" + "}"


def _narrative(rand: Callable[[], float], product: _Product, sub_product: str, issue: str,
               company: str, frustration: float) -> str:
    """Several product-specific sentences whose tone follows the hidden frustration."""
    ref = _COMPANY_REF(rand()) or company
    extra = 1 if product.scale >= 1000 else 0
    small_digits = AMOUNT_DIGITS[int(rand() * len(AMOUNT_DIGITS))]
    fields = {
        "co": ref,
        "a": _money(rand, small_digits + 1 + extra),
        "b": _money(rand, small_digits + extra),
        "sp": product.nouns[sub_product],
        "iss": issue.lower(),
    }
    angry_p = min(0.9, max(0.02, 0.25 + 0.3 * frustration))
    calm_p = min(0.8, max(0.02, 0.2 - 0.2 * frustration))
    u = rand()
    if u < 0.08:
        body = 0  # a one-sentence narrative
    elif u < 0.97:
        body = 1 + int(14.0 * rand() ** 2)
    else:
        body = 15 + int(45.0 * rand())  # the long tail: a few thousand characters

    openings, details = product.openings, product.details
    sentences = [openings[int(rand() * len(openings))]]
    used: set[int] = set()
    for index in range(body):
        pick = int(rand() * len(details))
        if pick in used:  # one retry keeps repeats rare without a costly shuffle
            pick = int(rand() * len(details))
        used.add(pick)
        sentences.append(details[pick])
        if index % 3 == 0:
            if rand() < angry_p:
                sentences.append(ANGRY[int(rand() * len(ANGRY))])
            if rand() < calm_p:
                sentences.append(CALM[int(rand() * len(CALM))])
    if body and rand() < 0.7:
        sentences.append(CLOSINGS[int(rand() * len(CLOSINGS))])
    sentences = [sentence.format_map(fields) for sentence in sentences]

    if len(sentences) > 2 and rand() < 0.45:
        separator = "\n\n" if rand() < 0.6 else "\n"
        paragraphs, start = [], 0
        while start < len(sentences):
            size = 2 + int(rand() * 3)
            paragraphs.append(" ".join(sentences[start:start + size]))
            start += size
        text = separator.join(paragraphs)
    else:
        text = " ".join(sentences)
    if rand() < 0.02:
        text = text.upper()  # some consumers write in capitals
    return text


def _zip_code(rand: Callable[[], float], low: int, high: int, has_narrative: bool) -> str:
    u = rand()
    if u < 0.03:
        return ""
    prefix = low + int(rand() * (high - low + 1))
    if rand() < (0.6 if has_narrative else 0.05):
        return f"{prefix:03d}XX"  # masked as in the public database
    zip5 = f"{prefix:03d}{int(rand() * 100):02d}"
    if u > 0.97:
        return f"{zip5}-{int(rand() * 10_000):04d}"
    return zip5


def _iter_rows(rows: int, seed: int, disputed_rate: float,
               blank_label_rate: float) -> Iterator[tuple]:
    """Check the arguments now (not at the first row), then return the row tuple stream."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if not 0.0 <= blank_label_rate < 1.0:
        raise ValueError(f"blank_label_rate must be in [0, 1), got {blank_label_rate}")
    offset = dispute_intercept(disputed_rate)
    return _generate_rows(rows, seed, offset, blank_label_rate)


def _generate_rows(rows: int, seed: int, offset: float,
                   blank_label_rate: float) -> Iterator[tuple]:
    """Yield complaint rows as tuples in HEADER order (the fast path for writing)."""
    rand = random.Random(seed).random
    complaint_id = 1_100_000 + int(rand() * 400_000)
    days = _DAYS
    recent = 120  # blank labels are mostly recent: the dispute window was still open
    for _ in range(rows):
        label_blank = rand() < blank_label_rate
        (product, sub_product, issue, sub_issue, company, state, zip_low, zip_high, via,
         consent, tags, response, timely, public, score) = _draw_case(rand, label_blank)
        frustration = _frustration(rand)
        has_narrative = consent == CONSENT_PROVIDED
        narrative = (
            _narrative(rand, product, sub_product, issue, company, frustration)
            if has_narrative else ""
        )
        zip_code = "" if not state and rand() < 0.8 else _zip_code(rand, zip_low, zip_high,
                                                                    has_narrative)
        if label_blank and rand() < 0.7:
            day = _SPAN_DAYS - 1 - int(rand() * recent)
        else:
            day = int(_SPAN_DAYS * (rand() if rand() < 0.5 else rand() ** 0.5))
        sent = day + _DELAY(rand())
        u = rand()  # drawn for every row so the stream does not depend on the rate
        if label_blank:
            disputed = ""
        else:
            disputed = "Yes" if u < _sigmoid(offset + score + FRUSTRATION_WEIGHT * frustration) \
                else "No"
        complaint_id += 1 + int(rand() ** 4 * 8)
        yield (days[day], product.name, sub_product, issue, sub_issue, narrative, public,
               company, state, zip_code, tags, consent, via, days[sent], response, timely,
               disputed, str(complaint_id))


def iter_complaints(rows: int, seed: int, disputed_rate: float = DEFAULT_DISPUTED_RATE,
                    blank_label_rate: float = DEFAULT_BLANK_LABEL_RATE) -> Iterator[dict]:
    """Complaints as dicts keyed by the official header names, the same rows the CSV holds."""
    row_tuples = _iter_rows(rows, seed, disputed_rate, blank_label_rate)
    return (dict(zip(HEADER, row, strict=True)) for row in row_tuples)


def write_complaints(out: str | os.PathLike | TextIO, rows: int, seed: int,
                     disputed_rate: float = DEFAULT_DISPUTED_RATE,
                     blank_label_rate: float = DEFAULT_BLANK_LABEL_RATE,
                     on_progress: Callable[[int], None] | None = None,
                     progress_every: int = 100_000) -> int:
    """Stream `rows` complaints as an official-format CSV; return the number of rows written.

    A path is written through a `.part` file and renamed at the end, so a crash never leaves
    a truncated file that looks finished. A text file is written as is (open it with
    newline="" and UTF-8). `on_progress(rows_done)` is called every `progress_every` rows.
    """
    rows_iter = _iter_rows(rows, seed, disputed_rate, blank_label_rate)  # validates arguments
    if hasattr(out, "write"):
        return _write(out, rows_iter, on_progress, progress_every)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as handle:
            written = _write(handle, rows_iter, on_progress, progress_every)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return written


def _write(handle: TextIO, rows_iter: Iterator[tuple], on_progress: Callable[[int], None] | None,
           progress_every: int) -> int:
    writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(HEADER)
    written = 0
    next_report = progress_every
    batch: list[tuple] = []
    for row in rows_iter:
        batch.append(row)
        if len(batch) == 1000:
            writer.writerows(batch)
            written += len(batch)
            batch.clear()
            if on_progress is not None and written >= next_report:
                on_progress(written)
                next_report += progress_every
    writer.writerows(batch)
    written += len(batch)
    return written
