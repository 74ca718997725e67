import h5py
import numpy as np
import pytest

from fixtures import make_raw_arrays, write_raw_sim
from voxel_ode import schema


def test_channel_counts_match_the_seed():
    assert schema.N_STATIC == 12  # 10 raw + fault boundary + injection gap
    # + state (2), pressure change, the priors (thermal, pressure) at t and at t + 1
    assert schema.N_INPUT_CHANNELS == 19
    assert schema.N_PARAMS == 26
    assert schema.N_SCALARS == 5
    assert len(set(schema.INPUT_CHANNELS)) == schema.N_INPUT_CHANNELS
    assert schema.INPUT_CHANNELS[schema.STATE_CHANNELS] == ("Pressure", "Temperature")
    assert schema.INPUT_CHANNELS[schema.CHANGE_CHANNELS] == ("PressureChange",)
    assert schema.INPUT_CHANNELS[schema.PRIOR_CHANNELS] == schema.PRIOR_NAMES + schema.PRIOR_NEXT_NAMES
    assert schema.PRIOR_NAMES == schema.THERMAL_PRIOR_NAMES + schema.PRESSURE_PRIOR_NAMES
    assert schema.INPUT_CHANNELS[schema.PREDICTED_CHANNELS] == ("Pressure", "Temperature", "PressureChange")
    assert [schema.STATIC_NAMES[i] for i in schema.INITIAL_STATE_STATIC] == ["Pressure0", "Temperature0"]


def test_raw_paths_round_trip(tmp_path):
    arrays = make_raw_arrays(grid=(4, 3, 2), n_t=3)
    path = write_raw_sim(tmp_path / "v2.4_0001.h5", arrays)
    with h5py.File(path, "r") as f:
        for name, value in arrays.items():
            np.testing.assert_array_equal(f[schema.raw_path(name)][()], value)
    with pytest.raises(KeyError):
        schema.raw_path("NotADataset")
