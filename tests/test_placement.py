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
