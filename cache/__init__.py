"""The teacher-sample cache and recorded episodes (DESIGN §4).

- `cache.store.SampleStore`: one SQLite file (WAL), content-addressed sample pools.
- `cache.teacher.CachedTeacher`: a `Teacher` that reads through the store and writes behind.
- `cache.episodes`: record training steps with the run; load them back for offline replay.

This package knows a provider only through `providers.base` records, and never imports torch.
"""
