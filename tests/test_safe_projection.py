"""The safe-projection head's math: S = {z : W z ≤ b}, π(z) = z + P(z)."""

import pytest
import torch

from safelatent.methods.safe_projection import SafeProjection, project_halfspace, violation


def _head(facets: int, rank: int = 0, d: int = 6, seed: int = 0) -> SafeProjection:
    generator = torch.Generator().manual_seed(seed)
    head = SafeProjection(d, facets=facets, rank=rank, steps=200)
    head.set_facets(torch.randn(facets, d, generator=generator), torch.rand(facets, generator=generator))
    if rank:
        with torch.no_grad():
            head.direction.weight.normal_(generator=generator)
    return head


def _points(n: int = 64, d: int = 6, seed: int = 1) -> torch.Tensor:
    return 3 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("facets,rank", [(1, 0), (3, 0), (1, 2), (3, 2)])
def test_the_projection_is_idempotent_and_lands_in_the_safe_set(facets, rank):
    head = _head(facets, rank)
    z = _points()
    once = head(z)
    assert head.inside(once, tolerance=1e-4).all()
    assert not head.inside(z).all(), "the test needs points outside S"
    # Points land on the boundary, up to float rounding (and Dykstra's convergence for several facets).
    torch.testing.assert_close(head(once), once, atol=1e-5 if facets == 1 else 1e-4, rtol=0)


@pytest.mark.parametrize("facets,rank", [(1, 0), (3, 0), (3, 2)])
def test_points_inside_the_safe_set_do_not_move_at_all(facets, rank):
    head = _head(facets, rank)
    z = _points(256)
    inside = head.inside(z)
    assert inside.any() and not inside.all()
    assert torch.equal(head(z)[inside], z[inside])
    bf16 = z[inside].to(torch.bfloat16)
    assert torch.equal(head(bf16), bf16) and head(bf16).dtype == torch.bfloat16


def test_the_single_facet_correction_is_orthogonal_to_the_facet():
    head = _head(1)
    z = _points()
    correction = head(z) - z
    w = head.weight[0].detach()
    # Orthogonal to the facet = along its normal: no component in the facet's own directions.
    in_facet = torch.linalg.svd(torch.eye(6) - torch.outer(w, w) / (w @ w))[0][:, :5]
    assert torch.allclose(correction @ in_facet, torch.zeros(len(z), 5), atol=1e-5)
    moved = correction.norm(dim=-1) > 0
    assert moved.any()
    # and it is exactly the closed form, landing on the facet
    torch.testing.assert_close(head(z), project_halfspace(z, w, head.bias[0].detach()))
    assert torch.allclose(head(z)[moved] @ w, head.bias[0].detach().expand(int(moved.sum())), atol=1e-5)


def test_several_facets_correct_only_along_the_active_facets_normals():
    head = _head(3)
    z = _points()
    projected = head(z)
    weight, bias = head.weight.detach(), head.bias.detach()
    for point, target in zip(z, projected, strict=True):
        active = ((weight @ target - bias) / weight.norm(dim=-1)).abs() < 1e-4
        correction = target - point
        if not active.any():
            assert torch.allclose(correction, torch.zeros(6), atol=1e-6)
            continue
        normals = weight[active].T  # [d, active]
        coefficients = torch.linalg.lstsq(normals, correction.unsqueeze(1)).solution
        assert torch.allclose(normals @ coefficients, correction.unsqueeze(1), atol=1e-4)
        # KKT: the correction pushes inwards (non-positive multipliers on w_k)
        assert (coefficients <= 1e-4).all()


def test_several_facets_give_the_nearest_point_of_the_safe_set():
    head = _head(3)
    z = _points(16)
    projected = head(z)
    # Any other point of S is at least as far: try many random points of S.
    candidates = head(_points(4000, seed=7))
    for point, nearest in zip(z, projected, strict=True):
        assert (point - nearest).norm() <= (candidates - point).norm(dim=-1).min() + 1e-4


@pytest.mark.parametrize("facets,rank", [(1, 0), (3, 0), (1, 2)])
def test_gradients_flow_through_the_head_to_states_and_facets(facets, rank):
    head = _head(facets, rank)
    z = _points().requires_grad_(True)
    head(z).pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
    if rank:
        assert head.direction.weight.grad.abs().sum() > 0


def test_violation_is_the_signed_distance_past_the_furthest_facet():
    weight = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    bias = torch.tensor([2.0, 3.0])
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    assert torch.allclose(violation(points, weight, bias), torch.tensor([-1.0, 2.0, 2.0]))


def test_bad_facets_and_shapes_are_refused():
    head = SafeProjection(4, facets=2)
    with pytest.raises(ValueError, match="nonzero normal"):
        head.set_facets(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="facets must be"):
        head.set_facets(torch.ones(1, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="facets >= 1"):
        SafeProjection(4, facets=0)
