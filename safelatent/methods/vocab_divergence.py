"""Divergences between two models' next-token distributions, over the whole vocabulary or a subset of it.

Inputs are logits [batch, seq, V] of the two models on the same tokens and a 0/1 mask [batch, seq] of the
positions that count; every divergence is the mean over the masked positions (0 when none are).

Over a subset S of the vocabulary the distributions are NOT renormalised: each model keeps the
probability it gives to every v ∈ S. Restricted to S they are no longer distributions, so the divergence
is the generalised KL of non-negative measures (the I-divergence),

    KL_S(p ‖ q) = Σ_{v∈S} [ p(v)·(log p(v) − log q(v)) − p(v) + q(v) ],

which is the plain KL when S is the whole vocabulary (the two extra terms then cancel). Each term is ≥ 0
and 0 only where p(v) = q(v), so KL_S ≥ 0 with equality exactly when the models agree on S, and its
gradient vanishes there. (The bare partial sum Σ_{v∈S} p·log(p/q) can be negative and is smallest away
from agreement, which is why the two correction terms are there.)

- `reverse_kl(student, teacher)` = KL(π_s ‖ π_t): mode-seeking; on the student's own samples it is the
  on-policy distillation loss of SafeSteer (DESIGN 6.5), with S the safety tokens.
- `forward_kl(student, teacher)` = KL(π_t ‖ π_s): the preservation term of ES2 (DESIGN 6.4) with the base
  model as π_t on harmless inputs.
- `generalized_jsd(student, teacher, beta)` = β·KL(π_t ‖ m) + (1 − β)·KL(π_s ‖ m), m = β·π_t + (1 − β)·π_s,
  which moves from forward-like (β small) to reverse-like (β large) behaviour and is bounded.
"""

from collections.abc import Sequence

import torch

from safelatent.methods.masked import masked_mean

Vocabulary = torch.Tensor | Sequence[int] | None


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor,
                  vocab: Vocabulary = None) -> torch.Tensor:
    """KL(p ‖ q) per masked position, averaged; over `vocab` (token ids) the generalised KL of the module doc."""
    p_log, q_log = _log_probs(p_logits, q_logits, vocab)
    return masked_mean(_kl_terms(p_log, q_log, restricted=vocab is not None), mask)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               vocab: Vocabulary = None) -> torch.Tensor:
    """KL(π_student ‖ π_teacher): gradients reach the student wherever it puts mass the teacher does not."""
    return kl_divergence(student_logits, teacher_logits, mask, vocab)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               vocab: Vocabulary = None) -> torch.Tensor:
    """KL(π_teacher ‖ π_student): the student covers everything the teacher can say."""
    return kl_divergence(teacher_logits, student_logits, mask, vocab)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                    beta: float = 0.5, vocab: Vocabulary = None) -> torch.Tensor:
    """β·KL(π_t ‖ m) + (1 − β)·KL(π_s ‖ m) with m = β·π_t + (1 − β)·π_s; β in [0, 1] (0 and 1 give 0)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"the JSD weight beta must lie in [0, 1], got {beta}")
    teacher_log, student_log = _log_probs(teacher_logits, student_logits, vocab)
    restricted = vocab is not None
    if beta in (0.0, 1.0):  # m equals one of the two: both terms vanish
        return masked_mean(torch.zeros_like(teacher_log[..., 0]), mask)
    mixture_log = torch.logaddexp(teacher_log + torch.log(torch.tensor(beta)),
                                  student_log + torch.log(torch.tensor(1.0 - beta)))
    terms = beta * _kl_terms(teacher_log, mixture_log, restricted) + (1.0 - beta) * _kl_terms(
        student_log, mixture_log, restricted)
    return masked_mean(terms, mask)


def _log_probs(first: torch.Tensor, second: torch.Tensor, vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    if first.shape != second.shape:
        raise ValueError(f"the two models' logits differ in shape: {tuple(first.shape)} and {tuple(second.shape)}")
    first_log = torch.log_softmax(first.float(), dim=-1)
    second_log = torch.log_softmax(second.float(), dim=-1)
    if vocab is None:
        return first_log, second_log
    ids = torch.as_tensor(vocab, dtype=torch.long, device=first.device)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"vocab must be a non-empty 1-D list of token ids, got shape {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= first.shape[-1]:
        raise ValueError(f"vocab holds token ids outside 0..{first.shape[-1] - 1}")
    if ids.unique().numel() != ids.numel():
        raise ValueError("vocab lists a token id more than once")
    return first_log.index_select(-1, ids), second_log.index_select(-1, ids)


def _kl_terms(p_log: torch.Tensor, q_log: torch.Tensor, restricted: bool) -> torch.Tensor:
    """Σ_v p·(log p − log q) [− p + q on a subset], per position [batch, seq]."""
    p = p_log.exp()
    terms = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))  # 0·log 0 = 0 (tokens masked to −inf)
    if restricted:
        terms = terms - p + q_log.exp()
    return terms.sum(-1)
