"""The robustness report: natural accuracy, a registry of L-inf attacks, the worst case, an eps sweep, and
gradient-masking sanity checks, streamed batch by batch.

`evaluate_robustness` iterates the evaluation data one batch at a time (never the whole split in memory), runs every
attack of `attack_registry` on the images the model classifies correctly (an image misclassified when clean counts as
broken under every attack, AutoAttack's convention), keeps one bit per image and attack, and reports the per-image
worst case over all of them as the robust accuracy. `write_report` writes `robustness.json`, `robustness.md` and
`robust_accuracy_vs_eps.png`.

The parts, one module each:

- `settings`: `RobustnessSettings`, what the report runs;
- `registry`: `Attack` and the attack registry (`attack_registry`, `sweep_attacks`);
- `batch`: one batch's per-image correctness under every attack (`evaluate_batch`);
- `tally`: the per-image worst case, and `Tally`, the counts the batches add up to (merged over processes);
- `processes`: which batches each process evaluates, and the gathering of the tallies (Accelerate's helpers);
- `resume`: resume files, and the digests that identify a model and its data;
- `runner`: `evaluate_robustness`, this process's pass over its batches;
- `report`: `RobustnessReport`, built from the merged tally; `sanity`: the Carlini et al. (2019) checks;
- `rendering`: the report's Markdown, plot and files.
"""

from .batch import correct_under_attack, evaluate_batch
from .registry import Attack, AttackFunction, attack_registry, sweep_attacks
from .rendering import plot_eps_sweep, report_markdown, report_notes, write_report
from .report import RobustnessReport
from .resume import model_identity, tensors_digest
from .runner import evaluate_robustness
from .sanity import SanityCheck, SweepPoint, sanity_checks
from .settings import DEFAULT_SWEEP_255, RobustnessSettings, autoattack_status
from .tally import Tally, worst_case

__all__ = [
    "DEFAULT_SWEEP_255",
    "Attack",
    "AttackFunction",
    "RobustnessReport",
    "RobustnessSettings",
    "SanityCheck",
    "SweepPoint",
    "Tally",
    "attack_registry",
    "autoattack_status",
    "correct_under_attack",
    "evaluate_batch",
    "evaluate_robustness",
    "model_identity",
    "plot_eps_sweep",
    "report_markdown",
    "report_notes",
    "sanity_checks",
    "sweep_attacks",
    "tensors_digest",
    "worst_case",
    "write_report",
]
