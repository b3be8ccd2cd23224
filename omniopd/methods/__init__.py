"""The distillation methods omniopd offers besides OmniOPD, as pure per-token math.

One module per method: `opd` (standard on-policy distillation), `sg_opd` (Sign-Gated OPD),
`tropd` (Trust-Region OPD), `drift_gate` (blockwise policy-drift gate, any method),
`verifier_gate` (verifier-scaled OmniOPD chunk weights). Every function is a pure tensor
function with its shapes in its name; the learner wires them in (README, section Methods).
"""

from __future__ import annotations

METHODS = ("omniopd", "opd", "sg-opd", "tropd")
# Methods that read the teacher's per-token log-probabilities on the student's own tokens:
# they need a white-box teacher sharing the student's tokenizer.
WHITE_BOX_METHODS = ("opd", "sg-opd", "tropd")
DRIFT_GATES = ("off", "block", "newline")
