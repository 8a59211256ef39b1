"""Serving vit-fast models with Ray: online through Ray Serve, offline batch inference through Ray Data.

Ray is an optional dependency (`pip install vit-fast[serve]`) and is imported only when one of these is used, so
`import vit_fast` stays light:

- `vit_fast.serving.deployment`: the Ray Serve deployment (`build_app`, HTTP API documented there);
- `vit_fast.serving.batch`: the Ray Data job (`run_batch_inference`);
- `vit_fast.serving.cli`: the `vit-fast serve` and `vit-fast infer` sub-commands.
"""

__all__ = ["build_app", "run_batch_inference"]


def __getattr__(name):
    if name == "build_app":
        from .deployment import build_app

        return build_app
    if name == "run_batch_inference":
        from .batch import run_batch_inference

        return run_batch_inference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
