"""The paper's findings re-checked by one command: the runs behind each claim, a verdict per
claim by a stated rule, one report (Markdown and HTML)."""

from implicit_sparsity.findings.claims import FINDINGS
from implicit_sparsity.findings.plan import SCALES
from implicit_sparsity.findings.run import run_findings

__all__ = ["FINDINGS", "SCALES", "run_findings"]
