"""The latent-space picture of an SLS head: harmful and safe states before and after the head, in 2-D.

Both panels share one plane of the states before the head: its first axis is the first facet's unit normal
and its second the top principal direction of the states once that normal is removed (a PCA of what the
facet does not see). So a state's horizontal coordinate tells exactly where it lies against the first
facet, drawn as the dashed vertical line; other facets are drawn where they cross the plane.
"""

from pathlib import Path

import torch
from torch import nn

MAX_POINTS = 1500  # per class and panel, drawn at random so the plot stays readable


def facet_plane(states: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], axes [2, d]): the unit normal, and the top principal direction orthogonal to it."""
    mean = states.mean(0)
    unit = normal / normal.norm()
    centred = states - mean
    residual = centred - (centred @ unit).unsqueeze(1) * unit
    _, _, directions = torch.linalg.svd(residual, full_matrices=False)
    return mean, torch.stack([unit, directions[0]])


def write_latent_plot(states: torch.Tensor, labels: torch.Tensor, head: nn.Module, path: str | Path,
                      title: str = "", seed: int = 0) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        after = head(states)
    mean, plane = facet_plane(states, head.weight.detach()[0].float())
    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    for ax, panel, name in ((axes[0], states, "before the head"), (axes[1], after, "after the head")):
        coordinates = (panel - mean) @ plane.T
        for label, colour, text in ((0, "tab:blue", "safe behaviour"), (1, "tab:red", "harmful compliance")):
            chosen = torch.nonzero(labels == label).squeeze(1)
            chosen = chosen[torch.randperm(len(chosen), generator=generator)[:MAX_POINTS]]
            ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=4, alpha=0.35, c=colour, label=text)
        ax.set_title(name)
        ax.set_xlabel("along the facet normal")
    x_low, x_high = axes[0].get_xlim()
    y_low, y_high = axes[0].get_ylim()
    for ax in axes:
        for weight, bias in zip(head.weight.detach(), head.bias.detach(), strict=True):
            _draw_facet(ax, weight, float(bias), mean, plane, (x_low, x_high), (y_low, y_high))
        ax.set_xlim(x_low, x_high)
        ax.set_ylim(y_low, y_high)
    axes[0].set_ylabel("top principal direction orthogonal to it")
    axes[0].legend(loc="best", markerscale=3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _draw_facet(ax, weight: torch.Tensor, bias: float, mean: torch.Tensor, plane: torch.Tensor,
                x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
    # On the plane z = mean + a·p1 + c·p2 the facet is (wᵀp1)·a + (wᵀp2)·c = b − wᵀmean.
    alpha, gamma = float(weight @ plane[0]), float(weight @ plane[1])
    level = bias - float(weight @ mean)
    if abs(gamma) > abs(alpha) * 1e-6:
        xs = torch.linspace(*x_range, 2)
        ys = (level - alpha * xs) / gamma
    elif abs(alpha) > 0:
        ys = torch.linspace(*y_range, 2)
        xs = torch.full_like(ys, level / alpha)
    else:
        return  # the facet is parallel to the plane
    ax.plot(xs.tolist(), ys.tolist(), color="black", linewidth=1.2, linestyle="--")
