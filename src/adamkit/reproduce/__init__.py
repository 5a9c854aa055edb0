"""Papers' experiments, reproduced with adamkit's optimizers: ``adamkit reproduce NAME``."""

from adamkit.reproduce.kingma_ba import kingma_ba
from adamkit.reproduce.reddi import reddi

__all__ = ["kingma_ba", "reddi"]
