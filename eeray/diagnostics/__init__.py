"""Diagnostics on model snapshots: alignment (Def. 2), rank, ΔM, Q_T, the Theorem-3 certificate, and the
safe-exploration certificates (Assumption 4, Lemma 5), all decided in float64 under a memory budget.

No Ray import here: the actor pool (:class:`eeray.raytune.diagnostics_pool.DiagnosticsPool`) lives in
``eeray.raytune.diagnostics_pool`` and imports Ray itself.
"""
from eeray.diagnostics.alignment import AlignmentOptions, AlignmentReport, alignment_report
from eeray.diagnostics.certificate import Certificate
from eeray.diagnostics.errors import DiagnosticsError, MemoryBudgetError, NonFiniteOutputError, SafeExplorationError
from eeray.diagnostics.gram import build_gram
from eeray.diagnostics.hadamard import GramRankReport, gram_certificate
from eeray.diagnostics.jacobian import FunctionalModel
from eeray.diagnostics.safety import (Assumption4Report, Lemma5Report, assumption4_report, check_width, lemma5_report,
                                      lipschitz_hat, minimum_m_H, random_gate_certificate)
from eeray.diagnostics.q_tracker import AlignmentTracker, QTracker, Schedule, evaluation_schedule
from eeray.losses import LossError, TargetEncodingError, modified_targets

__all__ = [
    "AlignmentOptions", "AlignmentReport", "alignment_report", "AlignmentTracker", "QTracker", "Schedule", "evaluation_schedule",
    "Certificate", "FunctionalModel", "build_gram", "modified_targets",
    "Assumption4Report", "Lemma5Report", "GramRankReport", "assumption4_report", "lemma5_report", "lipschitz_hat",
    "gram_certificate", "random_gate_certificate", "check_width", "minimum_m_H",
    "DiagnosticsError", "MemoryBudgetError", "NonFiniteOutputError", "SafeExplorationError", "LossError",
    "TargetEncodingError",
]
