"""voxel-ode: learned surrogates of geothermal reservoir simulation."""

__version__ = "0.1.0"
