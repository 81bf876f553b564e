"""rlhf: the trainer package of rlhf-operator.

Kept light on purpose: importing ``rlhf`` (and ``rlhf.config``) never imports torch, so the
RLHFRun spec and the stage configs can be validated by the operator and the CLI without it.
"""

__version__ = "0.1.0"
