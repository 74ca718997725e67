"""Well rates of a synthetic simulation: what each perforated cell injects or produces (kg/s).

Injectors get the rate that a Peaceman-type estimate says moves their cells' pressure by the
drawn ``well_pressure_change``, capped so that 29 years of injection cool at most
``max_swept_fraction`` of the active volume; producers together take ``production_ratio`` x
the "pressure-neutral" rate, limited in a closed box by ``max_yearly_drift`` (``synth.geology``
describes the draw).
"""

from __future__ import annotations

import math

import numpy as np

from voxel_ode import schema
from voxel_ode.physics import water
from voxel_ode.synth.geology import Reservoir, SimParams

SECONDS_PER_YEAR = schema.STEP_SECONDS
WATER_HEAT_CAPACITY = schema.WATER_HEAT_CAPACITY  # J/(kg K), liquid water


def well_rates(res: Reservoir, p: SimParams, grid) -> np.ndarray:
    """InjRate (kg/s per cell, + injection, - production) from the target well pressure change."""
    dx, dy, dz = p.cell_size
    rate = np.zeros(int(np.prod(grid)))
    if not res.well_cells:
        return rate.reshape(grid)
    # Peaceman-type estimate of the well-cell pressure change for rate Q:
    #   dp = Q mu ln(R / r0) / (rho 2 pi dz sum k_h)
    r0 = 0.14 * math.hypot(dx, dy)
    big_r = 0.25 * math.hypot(grid[2] * dx, grid[1] * dy)
    log_term = math.log(max(big_r / r0, 2.0))
    p_mid = float(res.pressure0[res.active].mean())
    inj_rates, prod_kh = [], []
    for (flat, weight), is_inj in zip(res.well_cells, res.well_is_injector):
        sum_kh = float(np.sqrt(res.perm[0].ravel()[flat] * res.perm[1].ravel()[flat]).sum())
        if is_inj:
            rho = water.density(p_mid, p.injection_temperature, p.fluid_compressibility)
            mu = water.viscosity(p.injection_temperature)
            q = p.well_pressure_change * rho * 2 * math.pi * dz * sum_kh / (mu * log_term)
            inj_rates.append(float(np.clip(q, 1.0, 200.0)))
        else:
            prod_kh.append(sum_kh)
    total_inj = sum(inj_rates)
    if total_inj > 0:
        # Do not let 29 years of injection cool more than max_swept_fraction of the
        # reservoir: the cooled volume is injected mass x c_w / bulk heat capacity.
        act = res.active
        phi = float(res.porosity[act].mean())
        bulk_heat = phi * 1000.0 * WATER_HEAT_CAPACITY + (1 - phi) * p.rock_density * p.rock_heat_capacity
        active_volume = float(act.sum()) * dx * dy * dz
        years = schema.N_TIMESTEPS - 1
        max_total = p.max_swept_fraction * active_volume * bulk_heat / (WATER_HEAT_CAPACITY * years * SECONDS_PER_YEAR)
        if total_inj > max_total:
            inj_rates = [r * max_total / total_inj for r in inj_rates]
            total_inj = max_total
    # Pressure-neutral production: cooling the swept rock makes its pore water
    # denser, so the reservoir stores extra mass there; producing exactly the
    # injected mass would drain a closed reservoir. The swept (cooled) volume
    # grows at Q_inj c_w / (rho c)_bulk.
    act = res.active
    phi = float(res.porosity[act].mean())
    rho_cold = water.density(p_mid, p.injection_temperature, p.fluid_compressibility)
    rho_hot = water.density(p_mid, float(res.temperature0[act].mean()), p.fluid_compressibility)
    bulk_heat = phi * rho_hot * WATER_HEAT_CAPACITY + (1 - phi) * p.rock_density * p.rock_heat_capacity
    neutral = 1.0 - phi * WATER_HEAT_CAPACITY * (rho_cold - rho_hot) / bulk_heat
    ratio = p.production_ratio
    if p.aquifer_strength == 0 and total_inj > 0:
        # closed reservoir: limit the net mass imbalance to the allowed yearly drift
        pore_volume = float(res.porosity[act].sum()) * dx * dy * dz
        c_t = p.rock_compressibility + p.fluid_compressibility
        max_net = p.max_yearly_drift * pore_volume * c_t * rho_hot / SECONDS_PER_YEAR  # kg/s
        ratio = float(np.clip(ratio, 1 - max_net / total_inj, 1 + max_net / total_inj))
    total_prod = ratio * neutral * total_inj
    i_inj = i_prod = 0
    for (flat, weight), is_inj in zip(res.well_cells, res.well_is_injector):
        if is_inj:
            rate[flat] += inj_rates[i_inj] * weight
            i_inj += 1
        else:
            rate[flat] -= total_prod * prod_kh[i_prod] / sum(prod_kh) * weight
            i_prod += 1
    return rate.reshape(grid)

