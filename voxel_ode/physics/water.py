"""Liquid water properties: the one set of formulas that synth's simulator and the physics priors
priors share, so that the priors describe the same water the synthetic runs contain.

All take temperatures in K and pressures in Pa and work on scalars or numpy arrays. They do not
clip: a caller that can see temperatures outside the correlations' range (the priors read
foreign files) clips before calling.
"""

from __future__ import annotations

import numpy as np

from voxel_ode import schema

ATMOSPHERIC_PRESSURE = 101325.0  # Pa


def density_at_1atm(temperature):
    """kg/m^3, Tanaka et al. (2001); within 0.2 % of IAPWS saturated-liquid density over 20-250 C."""
    tc = np.asarray(temperature) - 273.15
    return 999.974950 * (1.0 - (tc + -3.983035) ** 2 * (tc + 301.797) / (522528.9 * (tc + 69.34881)))


def density(pressure, temperature, compressibility):
    """kg/m^3: ``density_at_1atm`` compressed with exp(c_f (p - p_atm))."""
    return density_at_1atm(temperature) * np.exp(compressibility * (np.asarray(pressure) - ATMOSPHERIC_PRESSURE))


def viscosity(temperature):
    """Pa s. Vogel-type fit, 8.9e-4 at 25 C, 2.8e-4 at 100 C, 1.3e-4 at 200 C."""
    return 2.414e-5 * 10.0 ** (247.8 / (np.asarray(temperature) - 140.0))


def enthalpy(temperature):
    """J/kg, zero at schema.ENTHALPY_ZERO_T (273.15 K): c_w (T - 273.15), p/rho neglected."""
    return schema.WATER_HEAT_CAPACITY * (np.asarray(temperature) - schema.ENTHALPY_ZERO_T)


def temperature_from_enthalpy(enthalpy_j_per_kg):
    """K: the inverse of ``enthalpy``."""
    return np.asarray(enthalpy_j_per_kg) / schema.WATER_HEAT_CAPACITY + schema.ENTHALPY_ZERO_T


def saturation_pressure(temperature):
    """Pa, Antoine equation for water (good to a few % over 100-374 C)."""
    tc = np.asarray(temperature) - 273.15
    return 133.322 * 10.0 ** (8.14019 - 1810.94 / (244.485 + tc))
