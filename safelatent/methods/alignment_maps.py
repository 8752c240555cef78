"""Alignment maps from one model's representation space to another's, fit on paired anchor states (DESIGN 6.6).

X ∈ R^{n×d_s} holds the source model's states of n anchor texts and Y ∈ R^{n×d_t} the target model's states of
the same texts; X̃, Ỹ are the centred states. Every map has one interface: `fit(X, Y)`, `predict(X)`,
`transfer(v)` (carry a source direction v ∈ R^{d_s} into the target space) and `report` (how well it predicts
held-out anchors). Three maps:

- ridge:      W = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀỸ, with λ = λ_rel·tr(X̃ᵀX̃)/d_s so the grid of λ_rel is scale-free; λ_rel is
              the grid value with the least squared error on held-out anchors. transfer(v) = Wᵀv.
- procrustes: both spaces are reduced to their top-k principal directions and whitened there:
              Z_s = X̃P_sS_s⁻¹, Z_t = ỸP_tS_t⁻¹ (P ∈ R^{d×k} the directions, S the singular values). The rotation
              R = UVᵀ, UΣVᵀ = svd(Z_sᵀZ_t), aligns the whitened coordinates; W = P_sS_s⁻¹ R S_tP_tᵀ and
              transfer(v) = Wᵀv. k is chosen from a grid by held-out error. (Without whitening, the rotation
              lines up the largest directions of both spaces whatever they encode; on the micro-world models that
              carried the safety direction almost orthogonally to the native one.)
- mlp:        f(x) = μ_y + s_y·g((x − μ_x)/s_x), g a one-hidden-layer GELU network trained by mean squared
              error with weight decay, its number of steps early-stopped on held-out anchors. f is not linear,
              so a direction is carried by its average local effect: transfer(v) = mean_i f(x_i + v) − f(x_i).

`fit` holds out a seeded share of the anchors, chooses the map's hyperparameters (ridge: λ; mlp: steps) and
measures R² on them, then refits on every anchor. Linear algebra runs in float64.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as F

from safelatent.config import Config
from safelatent.torch_threads import torch_threads

MapName = Literal["ridge", "procrustes", "mlp"]


class MapSettings(Config):
    """How the alignment maps are fit."""

    holdout: float = Field(0.2, gt=0, lt=0.5, description="Share of the anchors held out to choose each map's "
                                                          "hyperparameters and measure its R².")
    seed: int = Field(0, ge=0, description="Seeds the held-out draw and the MLP's initialisation.")
    ridge_lambdas: list[float] = Field([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0], min_length=1,
                                       description="Grid of λ_rel (λ relative to the mean eigenvalue of X̃ᵀX̃).")
    procrustes_ranks: list[int] = Field([16, 32, 64, 96, 128], min_length=1,
                                        description="Grid of k, the rank of the common PCA space of the Procrustes "
                                                    "map; the k with the least held-out error is kept.")
    mlp_hidden: int = Field(64, ge=1, description="Width of the MLP map's hidden layer.")
    mlp_steps: int = Field(300, ge=1, description="Most full-batch Adam steps of the MLP map (early-stopped on "
                                                  "held-out anchors).")
    mlp_lr: float = Field(3e-3, gt=0)
    mlp_weight_decay: float = Field(1e-4, ge=0)

    @field_validator("ridge_lambdas", "procrustes_ranks")
    @classmethod
    def _positive(cls, values: list) -> list:
        if any(value <= 0 for value in values):
            raise ValueError(f"every value must be positive, got {values}")
        return values


@dataclass
class MapReport:
    """How a map predicts the held-out anchors (R² over every target coordinate) and what it chose."""

    name: str
    heldout_r2: float
    n_fit: int
    n_heldout: int
    chosen: dict

    def to_json(self) -> dict:
        return asdict(self)


class AlignmentMap(ABC):
    """A map from source states [n, d_s] to target states [n, d_t]; see the module docstring."""

    name: ClassVar[str]

    def __init__(self, settings: MapSettings | None = None):
        self.settings = settings or MapSettings()
        self.report: MapReport | None = None

    def fit(self, source: torch.Tensor, target: torch.Tensor) -> "AlignmentMap":
        """Choose hyperparameters on held-out anchors, record their R², then refit on every anchor."""
        source, target = _checked_pair(source, target)
        fit_rows, heldout_rows = holdout_split(source.shape[0], self.settings.holdout, self.settings.seed)
        chosen = self._select(source[fit_rows], target[fit_rows], source[heldout_rows], target[heldout_rows])
        predicted = self.predict(source[heldout_rows])
        r2 = r_squared(predicted, target[heldout_rows], target[fit_rows].mean(0))
        self._fit(source, target)
        self.report = MapReport(self.name, r2, len(fit_rows), len(heldout_rows), chosen)
        return self

    @abstractmethod
    def _select(self, source: torch.Tensor, target: torch.Tensor, heldout_source: torch.Tensor,
                heldout_target: torch.Tensor) -> dict:
        """Fit on (source, target) with the hyperparameters that predict the held-out pair best; return them."""

    @abstractmethod
    def _fit(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Fit on every anchor with the chosen hyperparameters."""

    @abstractmethod
    def predict(self, source: torch.Tensor) -> torch.Tensor:
        """Target states [n, d_t] predicted from source states [n, d_s]."""

    @abstractmethod
    def transfer(self, direction: torch.Tensor) -> torch.Tensor:
        """A source-space direction [d_s] carried into the target space [d_t] (not normalised)."""

    def _check_fitted(self) -> None:
        if not self._ready():
            raise RuntimeError(f"the {self.name} map is not fit yet; call fit(source_states, target_states) first")

    def _ready(self) -> bool:
        return False


class LinearMap(AlignmentMap):
    """A map y = μ_t + (x − μ_s)W; a direction v goes to Wᵀv."""

    weight: torch.Tensor | None = None  # W [d_s, d_t]
    source_mean: torch.Tensor | None = None
    target_mean: torch.Tensor | None = None

    def predict(self, source: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return ((source.double() - self.source_mean) @ self.weight + self.target_mean).float()

    def transfer(self, direction: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        _check_direction(direction, self.weight.shape[0], self.name)
        return (self.weight.T @ direction.double()).float()

    def _ready(self) -> bool:
        return self.weight is not None


class RidgeMap(LinearMap):
    name = "ridge"

    def _select(self, source, target, heldout_source, heldout_target) -> dict:
        errors = {}
        for relative in self.settings.ridge_lambdas:
            self._fit_with(source, target, relative)
            errors[relative] = float((self.predict(heldout_source) - heldout_target).double().pow(2).sum())
        self.relative_lambda = min(errors, key=lambda relative: (errors[relative], relative))
        self._fit_with(source, target, self.relative_lambda)
        return {"lambda_rel": self.relative_lambda, "heldout_sse": {str(key): value for key, value in errors.items()}}

    def _fit(self, source, target) -> None:
        self._fit_with(source, target, self.relative_lambda)

    def _fit_with(self, source: torch.Tensor, target: torch.Tensor, relative_lambda: float) -> None:
        source, target = source.double(), target.double()
        self.source_mean, self.target_mean = source.mean(0), target.mean(0)
        centred_source, centred_target = source - self.source_mean, target - self.target_mean
        gram = centred_source.T @ centred_source
        penalty = relative_lambda * max(float(torch.trace(gram)) / gram.shape[0], 1e-12)
        identity = torch.eye(gram.shape[0], dtype=gram.dtype)
        self.weight = torch.linalg.solve(gram + penalty * identity, centred_source.T @ centred_target)


class ProcrustesMap(LinearMap):
    name = "procrustes"

    def _select(self, source, target, heldout_source, heldout_target) -> dict:
        limit = min(source.shape[1], target.shape[1], source.shape[0] - 1)
        ranks = [rank for rank in self.settings.procrustes_ranks if rank <= limit]
        if not ranks:
            raise ValueError(f"every procrustes rank {self.settings.procrustes_ranks} exceeds what the anchors "
                             f"support: min(d_source={source.shape[1]}, d_target={target.shape[1]}, fit anchors − 1 "
                             f"= {source.shape[0] - 1}) = {limit}; use a smaller rank")
        errors = {}
        for rank in ranks:
            self._fit_with(source, target, rank)
            errors[rank] = float((self.predict(heldout_source) - heldout_target).double().pow(2).sum())
        self.rank = min(errors, key=lambda rank: (errors[rank], rank))
        self._fit_with(source, target, self.rank)
        return {"rank": self.rank, "heldout_sse": {str(key): value for key, value in errors.items()}}

    def _fit(self, source, target) -> None:
        self._fit_with(source, target, self.rank)

    def _fit_with(self, source: torch.Tensor, target: torch.Tensor, rank: int) -> None:
        source, target = source.double(), target.double()
        self.source_mean, self.target_mean = source.mean(0), target.mean(0)
        centred_source, centred_target = source - self.source_mean, target - self.target_mean
        source_basis, source_spread = _principal_directions(centred_source, rank)
        target_basis, target_spread = _principal_directions(centred_target, rank)
        whiten_source = source_basis / source_spread
        left, _, right_t = torch.linalg.svd((centred_source @ whiten_source).T @ (centred_target @ target_basis
                                                                                    / target_spread))
        self.weight = whiten_source @ (left @ right_t) @ (target_basis * target_spread).T


class MLPMap(AlignmentMap):
    name = "mlp"

    network: nn.Module | None = None

    def _select(self, source, target, heldout_source, heldout_target) -> dict:
        # The network keeps the weights of the step with the least held-out loss; refits train that long.
        losses = self._train(source, target, self.settings.mlp_steps, heldout_source, heldout_target)
        best = min(losses, key=lambda step: (losses[step], step))
        self.steps = best
        return {"steps": best, "hidden": self.settings.mlp_hidden, "heldout_mse": losses[best]}

    def _fit(self, source, target) -> None:
        self._train(source, target, self.steps)

    def fit(self, source: torch.Tensor, target: torch.Tensor) -> "MLPMap":
        # A network this small trains fastest on one thread; more only contend (badly so on a busy CPU).
        with torch_threads(1):
            super().fit(source, target)
        self.anchors = source.detach().float().cpu()
        return self

    def _train(self, source: torch.Tensor, target: torch.Tensor, steps: int, heldout_source: torch.Tensor | None = None,
               heldout_target: torch.Tensor | None = None) -> dict[int, float]:
        source, target = source.float(), target.float()
        self.source_mean, self.target_mean = source.mean(0), target.mean(0)
        self.source_scale = _rms(source - self.source_mean)
        self.target_scale = _rms(target - self.target_mean)
        settings = self.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            network = nn.Sequential(nn.Linear(source.shape[1], settings.mlp_hidden), nn.GELU(),
                                    nn.Linear(settings.mlp_hidden, target.shape[1]))
        optimizer = torch.optim.Adam(network.parameters(), lr=settings.mlp_lr, weight_decay=settings.mlp_weight_decay)
        inputs = (source - self.source_mean) / self.source_scale
        outputs = (target - self.target_mean) / self.target_scale
        check_every = max(1, steps // 30)
        heldout_losses: dict[int, float] = {}
        best_state, best_loss = None, math.inf
        with torch.enable_grad():
            for step in range(1, steps + 1):
                loss = F.mse_loss(network(inputs), outputs)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if heldout_source is not None and (step % check_every == 0 or step == steps):
                    self.network = network
                    with torch.no_grad():
                        heldout = float(F.mse_loss(self.predict(heldout_source), heldout_target.float()))
                    heldout_losses[step] = heldout
                    if heldout < best_loss:
                        best_loss, best_state = heldout, {k: v.clone() for k, v in network.state_dict().items()}
        if best_state is not None:
            network.load_state_dict(best_state)
        self.network = network.requires_grad_(False)
        return heldout_losses

    @torch.no_grad()
    def predict(self, source: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        inputs = (source.float() - self.source_mean) / self.source_scale
        return self.target_mean + self.target_scale * self.network(inputs)

    @torch.no_grad()
    def transfer(self, direction: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        _check_direction(direction, self.source_mean.shape[0], self.name)
        anchors = self.anchors
        return (self.predict(anchors + direction.float()) - self.predict(anchors)).mean(0)

    def _ready(self) -> bool:
        return self.network is not None


MAPS: dict[str, type[AlignmentMap]] = {cls.name: cls for cls in (RidgeMap, ProcrustesMap, MLPMap)}


def make_map(name: str, settings: MapSettings | None = None) -> AlignmentMap:
    """A fresh map by name: ridge, procrustes or mlp."""
    if name not in MAPS:
        raise ValueError(f"unknown alignment map {name!r}; choose one of {', '.join(MAPS)}")
    return MAPS[name](settings)


def holdout_split(count: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (fit, held out): a seeded permutation, at least one row (and at most count − 2) held out."""
    if count < 3:
        raise ValueError(f"fitting a map needs at least 3 anchors (2 to fit, 1 held out), got {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    heldout = min(max(1, round(count * share)), count - 2)
    return order[heldout:].sort().values, order[:heldout].sort().values


def r_squared(predicted: torch.Tensor, actual: torch.Tensor, reference_mean: torch.Tensor) -> float:
    """1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖², ȳ the mean of the states the map was fit on."""
    residual = (actual.double() - predicted.double()).pow(2).sum()
    total = (actual.double() - reference_mean.double()).pow(2).sum().clamp_min(1e-12)
    return float(1 - residual / total)


def _principal_directions(centred: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-`rank` principal directions of the centred states as columns [d, rank], and their singular values."""
    _, singular, right_t = torch.linalg.svd(centred, full_matrices=False)
    return right_t[:rank].T, singular[:rank].clamp_min(1e-12)


def _rms(centred: torch.Tensor) -> torch.Tensor:
    return centred.pow(2).mean().sqrt().clamp_min(1e-8)


def _checked_pair(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if source.dim() != 2 or target.dim() != 2:
        raise ValueError(f"anchor states must be 2-D [anchors, d]; got source {tuple(source.shape)} and target "
                         f"{tuple(target.shape)}")
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"source and target states must come from the same anchors: {source.shape[0]} source rows "
                         f"vs {target.shape[0]} target rows")
    if not (torch.isfinite(source).all() and torch.isfinite(target).all()):
        raise ValueError("anchor states contain NaN or infinite values; check the models' dtype (float32 is safest)")
    return source.detach().cpu(), target.detach().cpu()


def _check_direction(direction: torch.Tensor, width: int, name: str) -> None:
    if direction.dim() != 1 or direction.shape[0] != width:
        raise ValueError(f"the {name} map carries {width}-dim source directions; got shape {tuple(direction.shape)}")
