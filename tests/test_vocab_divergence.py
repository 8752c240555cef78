"""Divergences over the vocabulary or a subset of it (SafeSteer's and ES2's losses)."""

import pytest
import torch

from safelatent.methods.vocab_divergence import forward_kl, generalized_jsd, kl_divergence, reverse_kl

torch.manual_seed(0)
STUDENT = torch.randn(3, 5, 11) * 2
TEACHER = torch.randn(3, 5, 11) * 2
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
SUBSET = [0, 3, 7]


def reference_kl(p_logits, q_logits, mask, vocab=None):
    """Position by position with plain Python floats."""
    total, count = 0.0, 0
    for b in range(p_logits.shape[0]):
        for t in range(p_logits.shape[1]):
            if not mask[b, t]:
                continue
            p, q = p_logits[b, t].double().softmax(-1), q_logits[b, t].double().softmax(-1)
            ids = range(p.shape[0]) if vocab is None else vocab
            value = sum(float(p[v] * (p[v].log() - q[v].log())) for v in ids)
            if vocab is not None:
                value += sum(float(q[v] - p[v]) for v in ids)
            total, count = total + value, count + 1
    return total / count


def test_full_vocabulary_kl_matches_the_definition():
    assert float(reverse_kl(STUDENT, TEACHER, MASK)) == pytest.approx(reference_kl(STUDENT, TEACHER, MASK), rel=1e-5)
    assert float(forward_kl(STUDENT, TEACHER, MASK)) == pytest.approx(reference_kl(TEACHER, STUDENT, MASK), rel=1e-5)


def test_subset_kl_is_the_generalised_kl_without_renormalising():
    value = float(reverse_kl(STUDENT, TEACHER, MASK, vocab=SUBSET))
    assert value == pytest.approx(reference_kl(STUDENT, TEACHER, MASK, SUBSET), rel=1e-5)
    renormalised = kl_divergence(STUDENT[..., SUBSET], TEACHER[..., SUBSET], MASK)
    assert value != pytest.approx(float(renormalised), rel=1e-3)


@pytest.mark.parametrize("vocab", [None, SUBSET, [4]])
def test_masked_reverse_kl_is_non_negative_and_zero_only_at_agreement(vocab):
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        student, teacher = torch.randn(2, 4, 11, generator=generator), torch.randn(2, 4, 11, generator=generator) * 3
        assert float(reverse_kl(student, teacher, MASK[:2, :4], vocab=vocab)) >= 0.0
    assert float(reverse_kl(STUDENT, STUDENT.clone(), MASK, vocab=vocab)) == 0.0


def test_the_bare_partial_sum_would_go_negative_where_ours_does_not():
    # The student puts less mass than the teacher on token 0: Σ_S p·log(p/q) < 0 there.
    student = torch.tensor([[[0.0, 3.0, 3.0]]])
    teacher = torch.tensor([[[3.0, 0.0, 0.0]]])
    mask = torch.ones(1, 1)
    p, q = student.softmax(-1)[0, 0, 0], teacher.softmax(-1)[0, 0, 0]
    assert float(p * (p.log() - q.log())) < 0
    assert float(reverse_kl(student, teacher, mask, vocab=[0])) > 0


def test_the_subset_loss_is_minimised_where_the_student_matches_the_teacher_on_the_subset():
    teacher = torch.tensor([[[2.0, 0.5, -1.0, 0.0]]])
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=2.0)
    for _ in range(1500):
        optimizer.zero_grad()
        reverse_kl(logits, teacher, torch.ones(1, 1), vocab=[0, 2]).backward()
        optimizer.step()
    student_p, teacher_p = logits.softmax(-1)[0, 0], teacher.softmax(-1)[0, 0]
    assert torch.allclose(student_p[[0, 2]], teacher_p[[0, 2]], atol=1e-3)


def test_masked_out_positions_do_not_count_and_empty_masks_give_zero():
    changed = STUDENT.clone()
    changed[0, 4] += 50  # masked out
    assert float(reverse_kl(changed, TEACHER, MASK)) == pytest.approx(float(reverse_kl(STUDENT, TEACHER, MASK)))
    assert float(reverse_kl(STUDENT, TEACHER, torch.zeros_like(MASK))) == 0.0


def test_generalized_jsd_is_bounded_symmetric_at_half_and_zero_at_agreement():
    half = float(generalized_jsd(STUDENT, TEACHER, MASK, beta=0.5))
    assert 0 < half <= torch.log(torch.tensor(2.0)).item()
    assert half == pytest.approx(float(generalized_jsd(TEACHER, STUDENT, MASK, beta=0.5)), rel=1e-5)
    assert float(generalized_jsd(STUDENT, STUDENT, MASK, beta=0.3, vocab=SUBSET)) == pytest.approx(0.0, abs=1e-7)
    assert float(generalized_jsd(STUDENT, TEACHER, MASK, beta=0.3, vocab=SUBSET)) > 0
    assert float(generalized_jsd(STUDENT, TEACHER, MASK, beta=0.0)) == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in shape"):
        reverse_kl(STUDENT, TEACHER[..., :5], MASK)
    with pytest.raises(ValueError, match=r"outside 0\.\.10"):
        reverse_kl(STUDENT, TEACHER, MASK, vocab=[3, 11])
    with pytest.raises(ValueError, match="more than once"):
        reverse_kl(STUDENT, TEACHER, MASK, vocab=[3, 3])
    with pytest.raises(ValueError, match="beta must lie in"):
        generalized_jsd(STUDENT, TEACHER, MASK, beta=1.5)
