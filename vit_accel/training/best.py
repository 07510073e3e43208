"""The best evaluation of a run by a named metric, and early stopping, as transformers' Trainer users know them.

`--metric_for_best_model` names an evaluation result (`eval_top1`, `eval_top5`, `eval_loss`, or `ema_eval_*` with an
EMA; `top1` and `loss` are read with the `eval_` prefix, as Trainer does), greater being better unless the name
ends in `loss` (Trainer's rule). The best checkpoint kept by rotation is the one of the best evaluation by that metric.
`--early_stopping_patience N` ends the run after N evaluations in a row without improvement. Both live in the
`TrainerState` (best metric and step, evaluations without improvement, the step the run stopped at), so a resumed
run compares, counts and stops exactly as the uninterrupted one.
"""

from __future__ import annotations

from ..errors import UserError

EVAL_METRICS = ("eval_top1", "eval_top5", "eval_loss")
EMA_METRICS = tuple(f"ema_{name}" for name in EVAL_METRICS)


def metric_name(name: str) -> str:
    """`top1` -> `eval_top1` (Trainer prefixes `eval_` to a metric given without it)."""
    return name if name.startswith(("eval_", "ema_eval_")) else f"eval_{name}"


def greater_is_better(name: str) -> bool:
    return not metric_name(name).endswith("loss")


def check_metric(name: str, ema: bool) -> None:
    """Refuse, naming the flag, a metric the run will not compute."""
    known = EVAL_METRICS + (EMA_METRICS if ema else ())
    if metric_name(name) not in known:
        extra = "" if ema else f" ({', '.join(EMA_METRICS)} with --ema_decay)"
        raise UserError(f"--metric_for_best_model must be one of {', '.join(known)}{extra}, got {name!r}.")


def record_evaluation(state, results: dict[str, float], metric: str, patience: int | None) -> bool:
    """Update the state's best metric and step with this evaluation (at `state.completed_steps`); whether the run
    must stop now (`patience` evaluations in a row without improvement)."""
    name = metric_name(metric)
    value = results[name]
    better = state.best_metric is None or (
        value > state.best_metric if greater_is_better(name) else value < state.best_metric
    )
    if better:
        state.best_metric, state.best_step = value, state.completed_steps
        state.evaluations_without_improvement = 0
    else:
        state.evaluations_without_improvement += 1
    if patience is not None and state.evaluations_without_improvement >= patience:
        state.early_stopped_at = state.completed_steps
        return True
    return False


def results(state, args) -> dict:
    """What `all_results.json` (and so the model card) records of the best evaluation and early stopping."""
    return {
        "metric_for_best_model": metric_name(args.metric_for_best_model),
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "early_stopped_at": state.early_stopped_at,
    }
