"""Offline stand-ins for the black-box models and the loopback server that speaks their wire
formats; `serving(cfg)` runs a stage's "sim" endpoints against one embedded server."""

from exectune_jax.sim.embedded import serving

__all__ = ["serving"]
