"""Scoring: exact match, LongBench token F1, perplexity, and their confidence intervals.

Every score is "higher is better" so that one budget-to-parity rule serves all tasks; for
perplexity the score is exp(-mean NLL) = 1 / perplexity (the geometric-mean probability
of the real next tokens) and the perplexity itself is reported beside it.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

Z95 = 1.959963984540054
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """LongBench/SQuAD normalization: lowercase, drop punctuation and articles, fix spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between normalized prediction and reference (LongBench qa_f1_score)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def first_match(text: str, pattern: str) -> str:
    """The first substring of ``text`` matching ``pattern`` ('' if none): the model's answer."""
    found = re.search(pattern, text)
    return found.group(0) if found else ""


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; it stays inside [0, 1] even at 0/n or n/n."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student-t 95% interval of a mean (a point when fewer than two values)."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if n < 2:
        return (mean, mean)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(student_t.ppf(0.975, n - 1)) * math.sqrt(var / n)
    return (mean - half, mean + half)


@dataclass(frozen=True)
class Summary:
    """One aggregated score with its 95% interval, as stored in a JSON row."""

    metric: str
    score: float
    ci_low: float
    ci_high: float
    n: int
    perplexity: float | None = None


def summarize(metric: str, values: Sequence[float]) -> Summary:
    """Aggregate per-sample values: Wilson for exact match, t for F1, and for per-sample
    mean NLL (metric 'perplexity') a t interval on the NLL mapped through exp(-x)."""
    n = len(values)
    if n == 0:
        return Summary(metric, float("nan"), float("nan"), float("nan"), 0)
    mean = sum(values) / n
    if metric == "exact_match":
        low, high = wilson_interval(sum(values), n)
        return Summary(metric, mean, low, high, n)
    if metric == "perplexity":
        low, high = t_interval(values)
        return Summary(metric, math.exp(-mean), math.exp(-high), math.exp(-low), n,
                       perplexity=math.exp(mean))
    low, high = t_interval(values)
    return Summary(metric, mean, max(0.0, low), min(1.0, high), n)
