"""What a run says on the terminal: a start summary, one line per stage, and log messages and warnings
printed above the progress bars instead of through them."""

from __future__ import annotations

import logging
import sys
import warnings


class _AboveProgressBars(logging.StreamHandler):
    """Log records written with ``tqdm.write``: a bar being drawn is cleared, the message printed above
    it, and the bar redrawn below."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_console() -> None:
    """The CLI's console: warnings and ``logging`` at WARNING and above, above the bars; the per-file
    loading bars of transformers, huggingface_hub and datasets off (mmpost's own bars stay)."""
    handler = _AboveProgressBars()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings.warn(...) from any library goes through the same handler
    for category in (FutureWarning, DeprecationWarning):  # libraries' notes to their own developers, not users
        warnings.filterwarnings("ignore", category=category, module=r"(?!mmpost)")
    # bitsandbytes announces, on import, a missing optional CPU kernel for 4-bit layers: noise unless one
    # quantizes (peft imports it for every LoRA run); its errors still show
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for quiet in ("transformers.utils.logging", "huggingface_hub.utils", "datasets"):
        try:
            module = __import__(quiet, fromlist=["_"])
        except ImportError:
            continue
        for name in ("disable_progress_bar", "disable_progress_bars"):
            if hasattr(module, name):
                getattr(module, name)()


def start_summary(run) -> str:
    """The lines printed when a run starts (or resumes): task, model and its size, data, stages, device,
    threads and the run directory."""
    import torch

    from mmpost.engine import stage_steps
    from mmpost.types import task_member

    cfg = run.cfg
    parameters = list(run.policy.model.parameters())
    total = sum(p.numel() for p in parameters)
    trained = sum(p.numel() for p in parameters if p.requires_grad)
    model = cfg.model or task_member(run.task, "default_model").split(";")[0]
    data = cfg.data.path or "seeded synthetic rows"
    stages = " -> ".join(f"{s.name} ({s.kind}, {stage_steps(s, cfg.max_steps)} steps x {s.batch_size})"
                         for s in cfg.stages)
    return "\n".join([
        f"mmpost: task {cfg.task}, seed {cfg.seed}",
        f"  model: {model} ({total / 1e6:.2f}M parameters, {trained / 1e6:.2f}M trained)",
        f"  data: {data}; {cfg.eval.split.replace('heldout', 'held-out')} rows: {len(run.rows['heldout'])}",
        f"  stages: {stages}",
        f"  device: {run.accelerator.device}, {torch.get_num_threads()} torch threads, mixed precision "
        f"{cfg.mixed_precision}",
        f"  run directory: {run.run_dir} (Ctrl-C saves a checkpoint; continue with `mmpost train --resume "
        f"{run.run_dir}`)"])
