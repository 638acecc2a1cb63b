"""What the report computes from a loaded run: the leading verb and object of each kept
instruction, the nearest-neighbour ROUGE-L among kept instructions, length distributions, the
code-mode verification figures and the cost per kept record. Numbers only: no HTML, no charts.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from pipeline.report.load import RunData

ROUGE_CAP = 2000  # nearest-neighbour ROUGE-L over at most this many kept records (n^2 pairs)

# --------------------------------------------------------------------------------------------
# Verb / object extraction


# Openers that carry no task: "Please", "Can you", "I want you to" ... are cut before the verb.
_POLITE = re.compile(
    r"^(?:(?:please|kindly|now|so|ok(?:ay)?|hey|hi|hello)\b[\s,:]*"
    r"|(?:can|could|would|will)\s+you\s+(?:please\s+)?"
    r"|(?:i|we)\s+(?:want|need|would\s+like|'d\s+like|d\s+like)\s+(?:you\s+)?to\s+"
    r"|(?:i|we)\s+(?:want|need)\s+(?:a|an|the|some)\b\s*"
    r"|(?:help|let)\s+me\s+(?:to\s+)?"
    r"|(?:the\s+|your\s+)?(?:task|job|goal)\s+(?:here\s+)?is\s+to\s+"
    r"|you\s+(?:need|have|are\s+(?:asked|required|going|supposed|expected))\s+to\s+"
    r"|you\s+(?:should|must|will|can|may)\s+(?:now\s+)?"
    r"|you\s+(?:are|will\s+be)\s+given\b[^,.;:]*[,.;:]\s*"
    r"|(?:task|instruction|question|q)\s*:\s*)",
    re.IGNORECASE,
)
# A leading "Given a list of numbers, find ..." puts the task in a later clause.
_SETUP_WORDS = {"given", "using", "for", "based", "with", "from", "if", "after", "in", "as",
                "assuming", "considering", "when", "without", "according"}  # fmt: skip
_NOT_A_VERB = {"the", "a", "an", "this", "that", "these", "those", "i", "we", "you", "my",
               "our", "it", "there", "here", "some", "one", "all", "each", "every", "here's",
               "in", "on", "of", "to", "and", "or", "but", "if", "as", "at", "by"}  # fmt: skip
# Two- and three-word verbs whose particle is not the object ("come up with a name").
_PHRASAL = [("come", "up", "with"), ("think", "of"), ("think", "about"), ("look", "for"),
            ("look", "up"), ("figure", "out"), ("point", "out"), ("find", "out"), ("fill", "in"),
            ("sum", "up"), ("write", "down"), ("make", "up"), ("set", "up"), ("break", "down"),
            ("list", "out"), ("carry", "out"), ("work", "out")]  # fmt: skip
# Words that end the noun phrase after the verb; its last word before one of these is the head.
_PHRASE_END = {"that", "which", "who", "whom", "whose", "to", "of", "for", "about", "on", "in",
               "into", "with", "from", "by", "as", "at", "and", "or", "but", "if", "so",
               "than", "using", "based", "given", "where", "when", "why", "how", "what",
               "whether", "without", "between", "over", "under", "per", "like", "is", "are",
               "be", "it", "its", "their", "me", "us", "them", "him", "her", "below",
               "above", "here", "now", "again", "briefly", "clearly", "quickly", "please",
               "then", "while", "because", "according", "within", "across"}  # fmt: skip
# Skipped between the verb and its noun phrase: determiners, auxiliaries of a question
# ("what would be the output"), indirect objects ("tell me a joke").
_SKIP_BEFORE_NOUN = {"a", "an", "the", "this", "that", "these", "those", "some", "any", "my",
                     "your", "our", "following", "given", "is", "are", "was", "were", "do",
                     "does", "did", "can", "could", "should", "would", "will", "might", "may",
                     "must", "be", "been", "has", "have", "had", "you", "i", "me", "us", "him",
                     "her", "them", "please", "it", "there"}  # fmt: skip
_WORD = re.compile(r"[A-Za-z][A-Za-z'+#-]*|\d+|[^\sA-Za-z\d]")


def _strip_polite(text: str) -> str:
    prev = None
    while prev != text:
        prev = text
        text = _POLITE.sub("", text, count=1).lstrip(" ,:;-")
    return text


def _words_of(text: str) -> list[str]:
    # "what's" -> "what": a contraction must not hide a question word or verb.
    return [re.sub(r"'(s|re|ll|d|ve)$", "", w.lower()).strip("'") for w in _WORD.findall(text)]


def verb_object(instruction: str) -> tuple[str | None, str | None]:
    """A heuristic (no parser) root verb and direct-object head of an instruction.

    Strips polite openers ("Please", "Can you", "I want you to", "You are given X,"), skips a
    leading setup clause ("Given a list of numbers, find ..."), takes the first word as the verb
    (with its particle for phrasal verbs such as "come up with"; a question word such as "what"
    stands for the verb of a question), and the last word of the noun phrase that follows as
    the object. Returns lower-case words; None where nothing verb-like leads.
    """
    text = _strip_polite(" ".join(instruction.split()))
    words = _words_of(text)
    if words and words[0] in _SETUP_WORDS and "," in words[:40]:
        # The task is the first later clause that starts like one ("Given the two lists, A
        # and B, create ..." skips "A and B").
        for clause in text.split(",")[1:4]:
            cand = _words_of(_strip_polite(clause.strip()))
            if cand and cand[0][:1].isalpha() and cand[0] not in _NOT_A_VERB | _SETUP_WORDS:
                words = cand + ["."]
                break
        else:
            return None, None
    if not words or not words[0][:1].isalpha() or words[0] in _NOT_A_VERB:
        return None, None
    verb, rest = words[0], words[1:]
    for phrasal in _PHRASAL:
        if tuple(words[: len(phrasal)]) == phrasal:
            verb, rest = " ".join(phrasal), words[len(phrasal) :]
            break
    phrase: list[str] = []
    for w in rest:
        if not phrase and w in _SKIP_BEFORE_NOUN:
            continue
        if w in _PHRASE_END or not w[:1].isalnum():
            break
        phrase.append(w)
        if len(phrase) == 4:
            break
    # One-letter words are names in the task ("a list C"), not its object.
    nouns = [w for w in phrase if w[:1].isalpha() and len(w) > 1]
    return verb, (nouns[-1] if nouns else None)


# --------------------------------------------------------------------------------------------
# Nearest-neighbour ROUGE-L


def nearest_rouge_l(
    texts: list[str], cap: int = ROUGE_CAP, seed: int = 0, tokenizer: str = "default"
) -> list[float]:
    """For each text (a seeded sample of ``cap`` when there are more), the ROUGE-L F-measure
    against its most similar other text.

    Tokens are the dedup stage's (``stages.rouge``: "default" is rouge_score's tokenizer without
    stemmer, "unicode" keeps every script); rouge_score's own tokenizer stands in for "default"
    where ``stages.rouge`` is missing.
    The F-measure with beta 1 is 2·LCS/(|a|+|b|), which is exactly rapidfuzz's normalized Indel
    similarity over the token sequences, so all pairs run in rapidfuzz's C++ ``cdist`` instead
    of a Python LCS per pair.
    """
    import numpy as np
    from rapidfuzz import process
    from rapidfuzz.distance import Indel

    try:
        from stages.rouge import get_tokenizer

        tokenize = get_tokenizer(tokenizer)
    except ImportError:
        from rouge_score.tokenizers import DefaultTokenizer

        tokenize = DefaultTokenizer(use_stemmer=False).tokenize
    if len(texts) > cap:
        texts = random.Random(seed).sample(texts, cap)
    vocab: dict[str, int] = {}
    seqs = []
    for t in texts:
        toks = tokenize(t)
        if toks:
            seqs.append([vocab.setdefault(tok, len(vocab)) for tok in toks])
    if len(seqs) < 2:
        return []
    scores = process.cdist(seqs, seqs, scorer=Indel.normalized_similarity, dtype=np.float32)
    np.fill_diagonal(scores, -1.0)
    return [float(x) for x in scores.max(axis=1)]


# --------------------------------------------------------------------------------------------
# One run's figures (computed once, rendered by the sections)


def word_count(text: object) -> int:
    return len(str(text or "").split())


@dataclass
class Analysis:
    """One run's figures; ``idx`` is its column on the page (anchors stay unique)."""

    run: RunData
    idx: int
    pairs: list[tuple[str | None, str | None]]
    nn: list[float]
    nn_sampled: int
    lengths: dict[str, list[int]]
    with_input: int
    threshold: float | None
    code: dict | None  # :func:`code_figures`, for a code-mode run


def analyse(run: RunData, idx: int = 0) -> Analysis:
    """Every figure the sections show about ``run``, the page's column ``idx``."""
    instructions = [str(r.get("instruction") or "") for r in run.kept]
    pairs = [verb_object(t) for t in instructions]
    dedup_cfg = run.config.get("dedup") or {}
    tok = (
        dedup_cfg.get("tokenizer")
        if dedup_cfg.get("tokenizer") in ("default", "unicode")
        else "default"
    )
    nn = nearest_rouge_l(instructions, tokenizer=tok)
    # The dedup threshold marks the ROUGE-L chart only when dedup compared instructions too.
    threshold = dedup_cfg.get("threshold")
    if dedup_cfg.get("field", "instruction") != "instruction":
        threshold = None
    lengths = {
        "instruction": [word_count(r.get("instruction")) for r in run.kept],
        "input": [word_count(r.get("input")) for r in run.kept if r.get("input")],
        "output": [word_count(r.get("output")) for r in run.kept],
    }
    return Analysis(
        run=run,
        idx=idx,
        pairs=pairs,
        nn=nn,
        nn_sampled=min(len(instructions), ROUGE_CAP),
        lengths=lengths,
        with_input=len(lengths["input"]),
        threshold=float(threshold) if isinstance(threshold, int | float) else None,
        code=code_figures(run) if run.mode == "code" else None,
    )


def code_figures(run: RunData) -> dict:
    """Verify-stage figures: candidate statuses, candidates per problem, which candidate passed
    first, problems solved, candidates run and passed, rejects for vacuous tests."""
    statuses: Counter = Counter()
    cands_per_problem: list[int] = []
    first_pass: Counter = Counter()
    solved = 0
    for rec in run.verified:
        v = rec.get("verification") if isinstance(rec.get("verification"), dict) else {}
        rej = rec.get("reject") if isinstance(rec.get("reject"), dict) else {}
        # A kept record carries its statuses in ``verification``; a rejected one may carry
        # them in ``reject`` instead.
        raw = v.get("statuses") or rej.get("statuses") or []
        sts = [str(s.get("status", "?")) for s in raw if isinstance(s, dict)]
        statuses.update(sts)
        cands = rec.get("candidates")
        cands_per_problem.append(len(cands) if isinstance(cands, list) else len(sts))
        pi = v.get("passed_index")
        if isinstance(pi, int) and pi >= 0:
            solved += 1
            first_pass[pi] += 1
    extra = (run.stages.get("verify") or {}).get("extra") or {}
    # The stage's own counters (status_<name>) win over what the files still show.
    counted = {k[len("status_") :]: int(v) for k, v in extra.items() if k.startswith("status_")}
    if counted:
        statuses = Counter(counted)
    run_n = int(extra.get("candidates_run", sum(statuses.values())))
    passed_n = int(extra.get("candidates_passed", statuses.get("passed", 0)))
    vacuous = sum(n for s in run.stages.values() for r, n in s["dropped"].items() if "vacuous" in r)
    return {
        "statuses": statuses,
        "cands": cands_per_problem,
        "first_pass": first_pass,
        "solved": solved,
        "problems": len(run.verified) or int((run.stages.get("verify") or {}).get("total", 0)),
        "run": run_n,
        "passed": passed_n,
        "vacuous": vacuous,
        "extra": extra,
    }


def cost_per_kept(run: RunData) -> float | None:
    """Dollars per kept record: stats.json's figure, else the run's cost over its kept records."""
    per = run.stats.get("per_kept_record") or {}
    if isinstance(per.get("cost"), int | float):
        return float(per["cost"])
    cost = (run.stats.get("llm") or {}).get("cost")
    return float(cost) / len(run.kept) if isinstance(cost, int | float) and run.kept else None
