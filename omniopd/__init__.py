"""omniopd: logit-free on-policy distillation from teachers you can only call.

Importing this package is cheap on purpose (no torch, no models): `providers`, `cache` and
`scheduler` import `omniopd.errors` and must not drag the training stack in with it.
"""

__version__ = "0.1.0"
