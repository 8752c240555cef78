"""One placement group for all the roles of a job, with a readiness timeout that reports unmet demand.

Each actor gets one bundle ({"CPU": c, "GPU": g}, fractions allowed), so roles can share a GPU (two 0.5
bundles) or each have their own. Before creating the group, the total demand is checked against what the
cluster has at all, so an impossible request fails in a second instead of waiting for the timeout.
"""

from collections import Counter
from dataclasses import dataclass

import ray
from pydantic import Field
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.connect import runtime_env
from safelatent.config import Config
from safelatent.errors import SafelatentError


class ResourceDemandError(SafelatentError):
    """The cluster cannot (or did not in time) provide the resources a job asked for."""


class RoleResources(Config):
    """What one actor of a role reserves."""

    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs reserved (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved; below 1 to share a GPU with other roles.")
    threads: int | None = Field(None, ge=0, description="torch CPU threads of each actor of this role; null: the "
                                                        "pipeline's default, 0: torch's own default.")

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.num_cpus}
        if self.num_gpus:
            bundle["GPU"] = self.num_gpus
        return {name: amount for name, amount in bundle.items() if amount}


@dataclass(frozen=True)
class Placement:
    """A ready placement group and the bundle index of each (role, replica).

    `owned` is False when the group was reserved by someone else (a Ray Tune trial reserves its roles'
    bundles up front); then `remove()` leaves it to its owner.
    """

    group: PlacementGroup
    index: dict[tuple[str, int], int]
    owned: bool = True

    def options(self, role: str, replica: int, resources: RoleResources) -> dict:
        """Actor options that put replica `replica` of `role` into its bundle."""
        return {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "runtime_env": runtime_env(),
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self.group, placement_group_bundle_index=self.index[(role, replica)])}

    def remove(self) -> None:
        if self.owned:
            remove_placement_group(self.group)


def describe(demand: dict[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(demand.items())) or "nothing"


def total_demand(roles: dict[str, tuple[int, RoleResources]]) -> dict[str, float]:
    total: Counter = Counter()
    for count, resources in roles.values():
        for name, amount in resources.bundle().items():
            total[name] += count * amount
    return dict(total)


def check_fits(roles: dict[str, tuple[int, RoleResources]], cluster: dict[str, float]) -> None:
    """Raise ResourceDemandError naming every resource the job needs more of than the cluster has in total."""
    demand = total_demand(roles)
    short = {name: amount for name, amount in demand.items() if amount > cluster.get(name, 0.0) + 1e-9}
    if short:
        per_role = "; ".join(f"{role} {count} x {{{describe(resources.bundle())}}}"
                             for role, (count, resources) in roles.items() if count)
        missing = ", ".join(f"{name} {amount:g} (cluster has {cluster.get(name, 0.0):g})"
                            for name, amount in sorted(short.items()))
        raise ResourceDemandError(f"the job needs more than the cluster has: {missing}. Demand by role: {per_role}. "
                                  "Lower the role counts or their num_cpus/num_gpus, or add nodes")


def role_bundles(roles: dict[str, tuple[int, RoleResources]]) -> tuple[list[dict[str, float]],
                                                                       dict[tuple[str, int], int]]:
    """One bundle per (role, replica), in the order of `roles`, and the index of each."""
    bundles: list[dict[str, float]] = []
    index: dict[tuple[str, int], int] = {}
    for role, (count, resources) in roles.items():
        for replica in range(count):
            index[(role, replica)] = len(bundles)
            # An empty bundle is not allowed; a role that reserves nothing still takes a sliver of CPU.
            bundles.append(resources.bundle() or {"CPU": 0.01})
    return bundles, index


def place(roles: dict[str, tuple[int, RoleResources]], timeout_s: float, strategy: str = "PACK") -> Placement:
    """Create and wait for the placement group of `roles` ({role: (replicas, resources)}).

    Code that already runs inside a placement group holding exactly these bundles (a Tune trial that
    reserved them, see `role_bundles`) uses that group instead of asking the cluster a second time.
    """
    bundles, index = role_bundles(roles)
    current = get_current_placement_group()
    if current is not None and _same_bundles(current.bundle_specs, bundles):
        return Placement(group=current, index=index, owned=False)
    check_fits(roles, ray.cluster_resources())
    group = placement_group(bundles, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise ResourceDemandError(
            f"the placement group ({len(bundles)} bundles, {describe(total_demand(roles))}) was not ready after "
            f"{timeout_s:g} s; free now: {describe(_free(ray.available_resources()))}. Other jobs may hold the "
            "resources, or no single node fits a bundle; raise resources.ready_timeout_s or lower the demand"
        ) from None
    return Placement(group=group, index=index)


def _same_bundles(reserved: list[dict[str, float]], wanted: list[dict[str, float]]) -> bool:
    def plain(bundle: dict[str, float]) -> dict[str, float]:
        return {name: float(amount) for name, amount in bundle.items() if name in ("CPU", "GPU") and amount}

    return len(reserved) == len(wanted) and all(plain(a) == plain(b) for a, b in zip(reserved, wanted, strict=True))


def _free(available: dict[str, float]) -> dict[str, float]:
    return {name: amount for name, amount in available.items() if name in ("CPU", "GPU")}
