"""Parsing and checking model output safely: the only place model text is interpreted.

- parse_response: the R1-Zero format `<think> ... </think> <answer> ... </answer>` (DeepSeek-R1 sec. 2.2.1).
- parse_number:   a final answer like "1,234", "$5", "7.0", "-3/4" -> Fraction, ASCII digits only; commas only
                  as well-formed thousands separators ("1,5" and "1 2" are not numbers).
- evaluate:       an arithmetic expression -> Fraction, by walking Python's `ast` with a whitelist
                  (integer literals, + - * /, unary minus, parentheses) and hard bounds on input length,
                  nesting depth, literal size and result size. Never eval()/exec().
- Rewards / score: R1-Zero rule rewards (format + accuracy) with TinyZero's values 0 / 0.1 / 1.0.
Every function here returns a result or raises VerifyError; nothing else escapes, whatever the input.
"""
import ast
import dataclasses
import re
from fractions import Fraction

MAX_RESPONSE_CHARS = 20_000  # longer responses are not parsed at all
MAX_EXPR_CHARS = 200
MAX_DEPTH = 20  # parentheses / ast nesting
MAX_LITERAL_DIGITS = 12
MAX_RESULT_BITS = 256  # numerator and denominator of every intermediate value

_RESPONSE_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_NUMBER_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:/[0-9]+)?")
_THOUSANDS_RE = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")  # 1,234 and 12,345.5; not 1,5 or 12,34
_EXPR_CHARS_RE = re.compile(r"[0-9+\-*/() ]*")


class VerifyError(ValueError):
    pass


def parse_response(text):
    """-> (think, answer) if `text` is exactly one think block then one answer block, else None."""
    if not isinstance(text, str) or len(text) > MAX_RESPONSE_CHARS:
        return None
    m = _RESPONSE_RE.fullmatch(text)
    if m is None:
        return None
    think, answer = m.group(1), m.group(2)
    if any(tag in think + answer for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return None  # nested or repeated tags
    return think, answer.strip()


def parse_number(text):
    """A final numeric answer -> Fraction. Accepts thousands separators, a leading `$`, trailing '.', '.0', a/b;
    else VerifyError. Spaces only around the number: "1 2" is not 12, "2 1/2" is not 21/2."""
    if not isinstance(text, str) or len(text) > 64:
        raise VerifyError("not a short string")
    s = text.strip().rstrip(".")
    s = re.sub(r"^(-?)\$\s*", r"\1", s)  # "$5", "-$5"
    if "," in s:
        if not _THOUSANDS_RE.fullmatch(s):
            raise VerifyError(f"misplaced comma: {text[:20]!r}")
        s = s.replace(",", "")
    if not _NUMBER_RE.fullmatch(s):  # ASCII digits only: no unicode digits, no exponents, no 'inf'
        raise VerifyError(f"not a number: {text[:20]!r}")
    if "/" in s:
        num, den = s.split("/")
        if Fraction(den) == 0:
            raise VerifyError("zero denominator")
        return Fraction(num) / Fraction(den)
    return Fraction(s)


def evaluate(expr):
    """Exact value of an arithmetic expression, or VerifyError. Returns (value, list of integer literals)."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise VerifyError("expression missing or too long")
    expr = expr.replace("×", "*").replace("÷", "/").strip()  # a leading space is an IndentationError
    if not _EXPR_CHARS_RE.fullmatch(expr):
        raise VerifyError("expression has characters other than digits, + - * / ( ) and spaces")
    depth = 0
    for ch in expr:  # bound nesting before the parser sees it
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_DEPTH:
            raise VerifyError("expression nested too deep")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise VerifyError("expression does not parse") from None
    literals = []
    value = _walk(tree.body, literals, 0)
    return value, literals


def _walk(node, literals, depth):
    if depth > 2 * MAX_DEPTH + 10:
        raise VerifyError("expression nested too deep")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if len(str(node.value)) > MAX_LITERAL_DIGITS:
            raise VerifyError("literal too large")
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _walk(node.operand, literals, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a = _walk(node.left, literals, depth + 1)
        b = _walk(node.right, literals, depth + 1)
        if isinstance(node.op, ast.Add):
            out = a + b
        elif isinstance(node.op, ast.Sub):
            out = a - b
        elif isinstance(node.op, ast.Mult):
            out = a * b
        else:
            if b == 0:
                raise VerifyError("division by zero")
            out = a / b
        if out.numerator.bit_length() > MAX_RESULT_BITS or out.denominator.bit_length() > MAX_RESULT_BITS:
            raise VerifyError("intermediate result too large")
        return out
    raise VerifyError(f"{type(node).__name__} is not allowed")


@dataclasses.dataclass
class Rewards:
    """R1-Zero rule rewards; TinyZero's defaults: no parsable answer 0, well-formed but wrong 0.1, right 1.0."""
    none: float = 0.0  # reward with no well-formed answer
    format: float = 0.1  # reward for a well-formed wrong answer
    correct: float = 1.0  # reward for a correct answer


@dataclasses.dataclass
class Score:
    format: float  # the format part: rewards.format if well-formed, else rewards.none
    correctness: float  # the accuracy part: rewards.correct if correct, else 0
    correct: bool
    answer: str | None  # the text inside <answer>, if well-formed

    @property
    def reward(self):
        """TinyZero's rule: a correct answer earns `correct`, otherwise the format part."""
        return self.correctness if self.correct else self.format


def score(completion, is_correct, rewards=None):
    """Score a completion with a task's check `is_correct(answer_text) -> bool` (which may raise VerifyError)."""
    rewards = rewards or Rewards()
    parsed = parse_response(completion)
    if parsed is None:
        return Score(rewards.none, 0.0, False, None)
    answer = parsed[1]
    try:
        correct = bool(is_correct(answer))
    except VerifyError:
        correct = False
    return Score(rewards.format, rewards.correct if correct else 0.0, correct, answer)


def number_vote(answer):
    """What a numeric answer votes for in a majority vote: its value ("11", "11.0" and "$11" agree)."""
    try:
        return parse_number(answer)
    except VerifyError:
        return answer.strip() if isinstance(answer, str) else None


def expression_vote(answer):
    """What an expression answer votes for: its exact value ("(3+4)*2" and "2*(4+3)" agree)."""
    try:
        return evaluate(answer)[0]
    except VerifyError:
        return answer.strip() if isinstance(answer, str) else None
