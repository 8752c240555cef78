import pytest

from cluster.placement import ResourceDemandError, RoleResources, check_fits, total_demand

ROLES = {"rollout": (2, RoleResources(num_cpus=1, num_gpus=0.5)), "learner": (2, RoleResources(num_cpus=1,
                                                                                               num_gpus=1))}


def test_total_demand_adds_every_replica():
    assert total_demand(ROLES) == {"CPU": 4, "GPU": 3}


def test_a_demand_that_fits_passes():
    check_fits(ROLES, {"CPU": 8, "GPU": 4})


def test_a_demand_that_cannot_fit_names_what_is_short_and_who_asked():
    with pytest.raises(ResourceDemandError) as error:
        check_fits(ROLES, {"CPU": 8, "GPU": 2})
    message = str(error.value)
    assert "GPU 3 (cluster has 2)" in message and "CPU" not in message.split("Demand")[0]
    assert "rollout 2 x {CPU 1, GPU 0.5}" in message and "learner 2 x {CPU 1, GPU 1}" in message


def test_bundles_are_one_per_replica_in_role_order_and_never_empty():
    from cluster.placement import role_bundles

    bundles, index = role_bundles({**ROLES, "reference": (1, RoleResources(num_cpus=0))})
    assert bundles == [{"CPU": 1, "GPU": 0.5}] * 2 + [{"CPU": 1, "GPU": 1}] * 2 + [{"CPU": 0.01}]
    assert index[("learner", 1)] == 3 and index[("reference", 0)] == 4


def test_code_inside_a_group_reserved_for_its_roles_uses_that_group(ray_cluster):
    """A Tune trial reserves its roles' bundles; the pipeline inside must not ask the cluster a second time."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from cluster.placement import place, role_bundles

    roles = {"rollout": (1, RoleResources(num_cpus=0.5)), "learner": (1, RoleResources(num_cpus=0.25))}
    reserved = placement_group(role_bundles(roles)[0])
    ray.get(reserved.ready(), timeout=60)

    @ray.remote(num_cpus=0)
    def placed(wanted):
        placement = place(wanted, timeout_s=5)
        group_id, owned = placement.group.id.hex(), placement.owned
        placement.remove()
        return group_id, owned

    try:
        inside = PlacementGroupSchedulingStrategy(reserved, placement_group_capture_child_tasks=True)
        assert ray.get(placed.options(scheduling_strategy=inside).remote(roles), timeout=60) == (reserved.id.hex(),
                                                                                                   False)
        other = {"rollout": (2, RoleResources(num_cpus=0.5))}  # other bundles: a group of its own
        group_id, owned = ray.get(placed.options(scheduling_strategy=inside).remote(other), timeout=60)
        assert owned and group_id != reserved.id.hex()
    finally:
        remove_placement_group(reserved)
