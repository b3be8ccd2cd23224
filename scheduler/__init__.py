"""Fork-point selection: where in a student completion the teacher is asked to audit.

Pure tensor functions (`peak_starts_T`, `uniform_starts`, `chunk_starts_B`) plus the small
policy object `ForkScheduler`. No models, no network.
"""

from scheduler.forks import ForkScheduler, chunk_starts_B, early_starts, peak_starts_T, uniform_starts

__all__ = ["ForkScheduler", "chunk_starts_B", "early_starts", "peak_starts_T", "uniform_starts"]
