"""The safe-projection head of Safe Latent Space (DESIGN 6.3): π(z) = z + P(z), onto S = {z : W z ≤ b}.

S is an intersection of K half-spaces ("facets") in the residual stream at one layer. Points inside S do
not move (exactly: the correction is a product with zero). Points outside move to the nearest point of S:
- K = 1, closed form: π(z) = z − relu(wᵀz − b)·w/‖w‖², a correction along the facet's normal;
- K > 1, Dykstra's alternating projections, unrolled for `steps` rounds so gradients flow through them;
  the correction lies in the span of the active facets' normals.
Optionally a learned low-rank part moves violating points along U before the projection:
π(z) = Π_S(z − g(z)·U Uᵀ φ(z)), with g(z) = d/(1+d) and d the distance from z to S (less a float-rounding
tolerance), so points inside S still do not move and the output is still in S.

All math runs in float32 whatever the model's dtype; the output has the input's dtype.
"""

import torch
from torch import nn

BOUNDARY_TOLERANCE = 1e-5  # relative to ‖z‖: how far past a facet float rounding can leave a projected point


def project_halfspace(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Nearest point of {x : wᵀx ≤ b} to each row of z ([..., d]); w [d], b scalar."""
    excess = torch.relu(z @ w - b)
    return z - excess.unsqueeze(-1) * (w / (w @ w))


def project_polytope(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, steps: int) -> torch.Tensor:
    """Nearest point of {x : W x ≤ b} (W [K, d], b [K]) by `steps` rounds of Dykstra's algorithm."""
    if weight.shape[0] == 1:
        return project_halfspace(z, weight[0], bias[0])
    point = z
    increments = [torch.zeros_like(z) for _ in range(weight.shape[0])]
    for _ in range(steps):
        for facet in range(weight.shape[0]):
            shifted = point + increments[facet]
            point = project_halfspace(shifted, weight[facet], bias[facet])
            increments[facet] = shifted - point
    return point


def violation(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """max_k (w_kᵀz − b_k)/‖w_k‖: the signed distance past the furthest facet (≤ 0 inside S)."""
    return ((z @ weight.T - bias) / weight.norm(dim=-1)).amax(dim=-1)


class SafeProjection(nn.Module):
    """π(z) = Π_S(z) for S = {z : W z ≤ b}, with an optional learned low-rank part (see the module doc)."""

    def __init__(self, hidden_size: int, facets: int = 1, rank: int = 0, steps: int = 20):
        super().__init__()
        if hidden_size < 1 or facets < 1 or rank < 0 or steps < 1:
            raise ValueError(f"need hidden_size >= 1, facets >= 1, rank >= 0 and steps >= 1; got {hidden_size}, "
                             f"{facets}, {rank}, {steps}")
        self.hidden_size, self.facets, self.rank, self.steps = hidden_size, facets, rank, steps
        self.weight = nn.Parameter(torch.zeros(facets, hidden_size))
        self.bias = nn.Parameter(torch.zeros(facets))
        if rank:
            self.basis = nn.Parameter(torch.linalg.qr(torch.randn(hidden_size, rank))[0])
            self.direction = nn.Linear(hidden_size, rank)
            nn.init.zeros_(self.direction.weight)  # starts as the pure projection
            nn.init.zeros_(self.direction.bias)

    @torch.no_grad()
    def set_facets(self, weight: torch.Tensor, bias: torch.Tensor) -> "SafeProjection":
        if weight.shape != self.weight.shape or bias.shape != self.bias.shape:
            raise ValueError(f"facets must be W {tuple(self.weight.shape)} and b {tuple(self.bias.shape)}, got "
                             f"{tuple(weight.shape)} and {tuple(bias.shape)}")
        if not torch.all(weight.norm(dim=-1) > 0):
            raise ValueError("every facet needs a nonzero normal w_k")
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        return self

    def inside(self, z: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
        """Which rows of z lie in S (up to `tolerance` in distance)."""
        return violation(z.float(), self.weight, self.bias) <= tolerance

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        points = z.float()
        if self.rank:
            # Points on the boundary up to float rounding count as inside, so π stays idempotent.
            rounding = BOUNDARY_TOLERANCE * points.norm(dim=-1)
            distance = torch.relu(violation(points, self.weight, self.bias) - rounding).unsqueeze(-1)
            shift = self.direction(points) @ self.basis.T
            points = points - distance / (1 + distance) * shift
        return project_polytope(points, self.weight, self.bias, self.steps).to(z.dtype)

    def settings(self) -> dict[str, int]:
        return {"hidden_size": self.hidden_size, "facets": self.facets, "rank": self.rank, "steps": self.steps}
