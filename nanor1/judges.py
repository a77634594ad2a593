"""Model-based filters for rejection sampling, and how well each filter agrees with the true verifier.

Two judges of "is this response correct?", both built from the policy's own GPT:
  - the outcome reward model (ORM): a small value head on the GPT's mean hidden state over the response,
    trained with binary cross-entropy on verifier labels (Cobbe et al. 2021's verifiers);
  - the generative judge: the GPT itself fine-tuned (nanor1.sft) on "problem + response -> correct / wrong" in
    the chat template, R1-style: <think></think><answer>correct</answer>. Its score is
    P(correct) = p("correct" response) / (p("correct") + p("wrong")), from two teacher-forced passes.
Both are trained on labelled responses of verifiable tasks (train problems) and then used where the verifier
is switched off: DeepSeek-R1's model-based filter (sec. 2.3.3) for prompts without a rule to check them.
filter_report scores every filter (rules, ORM, judge, majority vote, the verifier) on held-out labelled
responses: precision, recall and AUC against the verifier's labels.
"""
import torch
import torch.nn as nn

JUDGE_TEMPLATE = "Is this right? {prompt} -> {response}"
VERDICTS = {True: "<think></think><answer>correct</answer>", False: "<think></think><answer>wrong</answer>"}


# ------------------------------------------------------------------------ outcome reward model (value head)

class OutcomeRewardModel(nn.Module):
    """A small value head on the GPT's mean final hidden state, trained to predict the verifier's label."""

    def __init__(self, dim):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, features):  # (N, D) -> (N,) logits of P(correct)
        return self.head(features).squeeze(-1)


def _padded(tok, prompt_texts, responses):
    """-> (B, T) right-padded ids of prompt + response rows, and the prompt length of each row."""
    rows = [tok.render_prompt(p) + list(r) for p, r in zip(prompt_texts, responses)]
    idx = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        idx[b, :len(row)] = torch.tensor(row)
    return idx, [len(tok.render_prompt(p)) for p in prompt_texts], [len(r) for r in rows]


@torch.no_grad()
def sequence_features(model, tok, prompt_texts, responses, batch_size=64, over="response"):
    """Mean final hidden state over each response's tokens (over='response', the reward model's input) or
    over the prompt's (over='prompt', the embedding for embedding dedup): (N, D). responses: id lists."""
    device = next(model.parameters()).device
    feats = []
    model.eval()
    for i in range(0, len(responses), batch_size):
        idx, starts, ends = _padded(tok, prompt_texts[i:i + batch_size], responses[i:i + batch_size])
        mask = torch.zeros(idx.shape)
        for b, (s, e) in enumerate(zip(starts, ends)):
            mask[b, slice(s, e) if over == "response" else slice(0, s)] = 1
        hidden = model(idx.to(device)).hidden.float().cpu()  # (B, T, D)
        feats.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
    return torch.cat(feats)


def train_orm(features, labels, steps=300, lr=1e-2, seed=0):
    """Fit the value head on (features, 0/1 verifier labels) with binary cross-entropy."""
    torch.manual_seed(seed)
    orm = OutcomeRewardModel(features.size(1))
    opt = torch.optim.Adam(orm.parameters(), lr=lr)
    labels = labels.float()
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(orm(features), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return orm


@torch.no_grad()
def orm_scores(orm, features):
    return torch.sigmoid(orm(features)).tolist()


# ------------------------------------------------------------------------------------- generative judge

def judge_pairs(prompt_texts, response_texts, labels):
    """SFT data for the judge: {prompt, response} rows, classes balanced by dropping the surplus of the larger
    one (keeping the first), so "always correct" is not a free 80% for a model that mostly answers right."""
    rows = [{"prompt": JUDGE_TEMPLATE.format(prompt=p, response=r), "response": VERDICTS[bool(y)], "label": bool(y)}
            for p, r, y in zip(prompt_texts, response_texts, labels)]
    n = min(sum(r["label"] for r in rows), sum(not r["label"] for r in rows))
    kept, taken = [], {True: 0, False: 0}
    for r in rows:
        if taken[r["label"]] < n:
            kept.append(r)
            taken[r["label"]] += 1
    return kept


@torch.no_grad()
def judge_scores(judge, tok, prompt_texts, response_texts, batch_size=64):
    """P(correct) for each (prompt, response): the two verdicts' log-probabilities, normalised over the two."""
    device = next(judge.parameters()).device
    judge.eval()
    questions = [JUDGE_TEMPLATE.format(prompt=p, response=r) for p, r in zip(prompt_texts, response_texts)]
    logp = {}
    for verdict in (True, False):
        answer = tok.encode_response(VERDICTS[verdict]) + [tok.eos_id]
        out = []
        for i in range(0, len(questions), batch_size):
            idx, starts, ends = _padded(tok, questions[i:i + batch_size], [answer] * len(questions[i:i + batch_size]))
            targets = torch.full_like(idx, -100)
            for b, (s, e) in enumerate(zip(starts, ends)):
                targets[b, s - 1:e - 1] = idx[b, s:e]
            loss = judge(idx[:, :-1].to(device), targets=targets[:, :-1].to(device), with_mtp=False).token_loss
            out.append(-loss.float().sum(1).cpu())
        logp[verdict] = torch.cat(out)
    return torch.sigmoid(logp[True] - logp[False]).tolist()


# ------------------------------------------------------------------------------------------ filter report

def auc(scores, labels):
    """Area under the ROC curve: P(score of a correct response > score of a wrong one), ties count half
    (the Mann-Whitney statistic). None when one class is missing."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    s = torch.tensor(scores, dtype=torch.float64)
    ranks = torch.empty_like(s)
    order = s.argsort()
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for value in s.unique():  # average ranks over ties
        tied = s == value
        ranks[tied] = ranks[tied].mean()
    rank_sum = ranks[torch.tensor(labels, dtype=torch.bool)].sum().item()
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def filter_report(scores, labels, threshold=0.5):
    """scores: {filter name: list of scores (1/0 for a rule)} on the same responses; labels: the verifier's.
    -> rows {filter, kept, precision, recall, auc}: precision = share of kept responses that are correct,
    recall = share of correct responses kept (a response is kept when its score >= threshold)."""
    rows = []
    n_correct = sum(labels)
    for name, values in scores.items():
        kept = [v >= threshold for v in values]
        true_kept = sum(k and y for k, y in zip(kept, labels))
        rows.append({"filter": name, "kept": sum(kept) / max(len(kept), 1),
                     "precision": true_kept / sum(kept) if any(kept) else None,
                     "recall": true_kept / n_correct if n_correct else None, "auc": auc(values, labels)})
    return rows
